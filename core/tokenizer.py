"""A thin wrapper over a transformers tokenizer: the few calls the engine and papers use."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

# Gemma's GGUF carries no chat template; this is Gemma's published turn format.
_GEMMA_TURNS = "<start_of_turn>{role}\n{content}<end_of_turn>\n"


class Tokenizer:
    def __init__(self, hf: PreTrainedTokenizerBase, eos_token_ids: Sequence[int] = ()):
        self.hf = hf
        ids = set(eos_token_ids)
        if hf.eos_token_id is not None:
            ids.add(hf.eos_token_id)
        end_of_turn = hf.convert_tokens_to_ids("<end_of_turn>") if "<end_of_turn>" in hf.get_vocab() else None
        if end_of_turn is not None:
            ids.add(end_of_turn)
        self.eos_token_ids: tuple[int, ...] = tuple(sorted(ids))

    @classmethod
    def from_pretrained(cls, path: str | Path, gguf_file: str | None = None, **kw) -> Tokenizer:
        return cls(AutoTokenizer.from_pretrained(str(path), gguf_file=gguf_file), **kw)

    @property
    def bos_token_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        tid = self.hf.convert_tokens_to_ids(token)
        return None if tid is None or tid == self.hf.unk_token_id else int(tid)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render chat messages; falls back to Gemma's turn format when the tokenizer has no template."""
        if self.hf.chat_template:
            return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        text = "".join(_GEMMA_TURNS.format(role=_gemma_role(m["role"]), content=m["content"]) for m in messages)
        return text + ("<start_of_turn>model\n" if add_generation_prompt else "")


def _gemma_role(role: str) -> str:
    return {"assistant": "model", "system": "user"}.get(role, role)
