"""A ReAct-style agent that calls tools from inside the inferlet (no client round trip).

Arguments: question [turns=3] [thought_tokens=16] [tool_doc_text] [share_name]. The tool
documentation is a fixed system prefix. With ``share_name``, the first agent to run prefills it
and exports its KV pages under that name; later agents import them instead of recomputing
(copy-on-write keeps the shared pages intact). Each turn decodes a thought, calls the ``search``
tool the host granted (its result goes straight into the context's KV), and continues; the KV of
the whole episode is kept, so nothing is ever re-prefilled. Returns the final answer.
"""

import contextlib

from inferlet import Context, call_tool, detokenize, send, store_get
from inferlet.context import PieCallError

_DOC = (
    "You are an agent. Tools: search(query) returns facts about the query. "
    "Format: Thought: ... Action: search[query] Observation: ... Answer: ...\n"
)


def _tool_prefix(doc, share):
    if share and store_get("pie.context." + share) is not None:
        try:
            return Context.import_(share)
        except PieCallError:
            pass  # the exporter withdrew it meanwhile: compute our own
    ctx = Context()
    ctx.fill(doc)
    if share:
        with contextlib.suppress(PieCallError):  # someone exported it first; ours is as good
            ctx.export(share)
    return ctx


def main(args):
    question = args[0] if args else "Who wrote the paper?"
    turns = int(args[1]) if len(args) > 1 else 3
    thought_tokens = int(args[2]) if len(args) > 2 else 16
    doc = args[3] if len(args) > 3 and args[3] else _DOC
    share = args[4] if len(args) > 4 else ""
    ctx = _tool_prefix(doc, share)
    ctx.fill("Question: " + question + "\n")
    for turn in range(turns):
        ctx.fill("Thought:")
        thought = ctx.generate(thought_tokens)
        observation = call_tool("search", f"{question} (turn {turn})")
        send(f"turn {turn}: {len(thought)} thought tokens, observation {len(observation)} chars")
        ctx.fill(" Action: search[" + question + "]\nObservation: " + observation + "\n")
    ctx.fill("Answer:")
    answer = ctx.generate(thought_tokens)
    ctx.release()
    return detokenize(answer)
