"""How CML tags map onto a tokenizer: one reserved token per tag.

Choice: every tag is a single token taken from the tokenizer's *unused* special tokens (Gemma 3 has
``<unused0>`` .. ``<unused98>``, ids 6..104), not plain-text tags such as the string ``"[CALL]"``:

* the token monitor works on single ids, so forbidding ``[INTR]`` is one logit set to -inf and a
  tag can never be half-emitted or spelled by accident in ordinary text;
* no user text, tool result or prompt can forge a tag, because ``encode()`` never produces these
  ids from text (interrupts cannot be spoofed by a function's return value);
* each tag costs one token (the paper counts the protocol's overhead in tokens).

The price: the repurposed embeddings are untrained, so an untuned model never emits them; the
fine-tuning recipe (:mod:`asynclm.finetune`) trains those embedding rows along with the LoRA
adapters, and the teacher-forced mode does not need them to be trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from asynclm.protocol import Segment, Tag

# Gemma 3's <unused0>..<unused4> (ids 6..10): [CALL], [INTR], [TRAP], [HEAD], [END].
_GEMMA3_TAG_NAMES = {tag: f"<unused{i}>" for i, tag in enumerate(Tag)}


class VocabError(ValueError):
    """The tokenizer cannot host the CML tags (missing or clashing ids)."""


@dataclass(frozen=True)
class CMLVocab:
    """Token ids of the five tags plus the tokenizer's text encoder/decoder."""

    tag_ids: dict[Tag, int]
    encode_text: Callable[[str], list[int]]
    decode_text: Callable[[Sequence[int]], str]

    def __post_init__(self) -> None:
        if set(self.tag_ids) != set(Tag):
            raise VocabError(f"tag ids must cover {[t.value for t in Tag]}, got {list(self.tag_ids)}")
        if len(set(self.tag_ids.values())) != len(Tag):
            raise VocabError(f"tag ids must be distinct, got {self.tag_ids}")

    @classmethod
    def for_tokenizer(cls, tokenizer, tag_ids: dict[Tag, int] | None = None) -> CMLVocab:
        """Use explicit ``tag_ids``, else ``<unused0>`` .. ``<unused4>`` (Gemma), else control bytes.

        The last fallback serves byte-level tokenizers (the tiny test models): the bytes
        ``\\x01`` .. ``\\x05`` never occur in BFCL text, each is one token, and :meth:`encode`
        splices tags in as ids. Any other tokenizer must be given ``tag_ids`` (reserved or added
        special tokens that ``encode()`` never produces from text).
        """
        tag_ids = tag_ids or _unused_token_ids(tokenizer) or _control_byte_ids(tokenizer)
        if tag_ids is None:
            raise VocabError(
                "tokenizer has neither <unused0>..<unused4> nor single-token control bytes: pass tag_ids="
            )
        return cls(
            tag_ids=dict(tag_ids),
            encode_text=lambda s: list(tokenizer.encode(s, add_special_tokens=False)),
            decode_text=lambda ids: tokenizer.decode(list(ids)),
        )

    # -- mapping ------------------------------------------------------------------------------
    def id(self, tag: Tag) -> int:
        return self.tag_ids[tag]

    def tag_of(self, token_id: int) -> Tag | None:
        return self._by_id.get(int(token_id))

    @cached_property
    def _by_id(self) -> dict[int, Tag]:
        return {v: k for k, v in self.tag_ids.items()}

    def encode(self, segments: Sequence[Segment]) -> list[int]:
        """Token ids of a segment list: tags become their single ids, text is tokenized."""
        ids: list[int] = []
        for seg in segments:
            if isinstance(seg, Tag):
                ids.append(self.tag_ids[seg])
            elif seg:
                ids.extend(self.encode_text(seg))
        return ids

    def render(self, token_ids: Sequence[int]) -> str:
        """Readable text of a token stream with tags shown as ``[CALL]`` etc."""
        out, run = [], []
        for t in token_ids:
            tag = self.tag_of(t)
            if tag is None:
                run.append(int(t))
                continue
            if run:
                out.append(self.decode_text(run))
                run = []
            out.append(tag.value)
        if run:
            out.append(self.decode_text(run))
        return "".join(out)



def _unused_token_ids(tokenizer) -> dict[Tag, int] | None:
    ids = {tag: tokenizer.token_to_id(name) for tag, name in _GEMMA3_TAG_NAMES.items()}
    return None if None in ids.values() else ids


def _control_byte_ids(tokenizer) -> dict[Tag, int] | None:
    ids = {}
    for i, tag in enumerate(Tag):
        enc = tokenizer.encode(chr(i + 1), add_special_tokens=False)
        if len(enc) != 1:
            return None
        ids[tag] = enc[0]
    return ids if len(set(ids.values())) == len(Tag) else None
