"""The prompt that teaches a model CML in context: instructions, function docs, optional few-shot.

Tags appear in the prompt as the reserved tokens themselves (spliced in as ids, never tokenized from
text), so the model sees exactly the tokens it is asked to produce.
"""

from __future__ import annotations

import json

from asynclm.bfcl import BFCLTask
from asynclm.protocol import FunctionCall, Interrupt, Segment, Tag
from asynclm.vocab import CMLVocab

_INSTRUCTIONS = (
    "You can call functions asynchronously. To call one, write ",
    Tag.CALL, " then the call as name(key=value, ...) then ", Tag.END,
    "; the system fills in a call id. Keep writing while calls run. A result arrives as ",
    Tag.INTR, " id ", Tag.HEAD, " value ", Tag.END,
    ". If you cannot continue without a result, write ", Tag.TRAP, Tag.END,
    ". Available functions:\n",
)


def few_shot_example() -> list[Segment]:
    """One worked trace: two independent calls, an interrupt, a trap, the answer."""
    a = FunctionCall(0, "math.gcd", {"num1": 12, "num2": 18})
    b = FunctionCall(1, "math.lcm", {"num1": 4, "num2": 6})
    return [
        "Example. User: gcd of 12 and 18, and lcm of 4 and 6.\nAssistant: ",
        *a.segments(), *b.segments(), *Interrupt(1, 12).segments(), *[Tag.TRAP, Tag.END],
        *Interrupt(0, 6).segments(), "The gcd is 6 and the lcm is 12.\n\n",
    ]


def build_prompt(
    vocab: CMLVocab, tokenizer, task: BFCLTask, few_shot: bool = False, with_docs: bool = True
) -> list[int]:
    """Token ids of the chat prompt for ``task`` (BOS included), ending where the model writes.

    ``with_docs=False`` is a minimal prompt for tiny test models with short contexts: function
    names and the first 120 characters of the question, no instructions.
    """
    if with_docs:
        body: list[Segment] = [*_INSTRUCTIONS, json.dumps(task.functions, separators=(",", ":")), "\n\n"]
        if few_shot:
            body += few_shot_example()
        body += [task.question]
    else:
        body = [",".join(f["name"] for f in task.functions), "\n", task.question[:120]]
    # Render the chat turn around a placeholder, then splice the segments in as ids.
    marker = "\x00BODY\x00"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": marker}])
    head, tail = chat.split(marker)
    ids = list(tokenizer.encode(head, add_special_tokens=True))
    return ids + vocab.encode(body) + list(tokenizer.encode(tail, add_special_tokens=False))
