"""Shared fixtures: a tiny random Llama with CML tags on byte tokens \\x01..\\x05 (text never uses them)."""

from __future__ import annotations

import pytest

from asynclm.protocol import Tag
from asynclm.vocab import CMLVocab


@pytest.fixture(scope="session")
def tiny():
    from core.testing import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def vocab(tiny) -> CMLVocab:
    tok = tiny.tokenizer
    ids = {tag: tok.encode(chr(i + 1), add_special_tokens=False)[0] for i, tag in enumerate(Tag)}
    return CMLVocab.for_tokenizer(tok, ids)
