"""Shared fixtures: a tiny random Llama with CML tags on byte tokens \\x01..\\x05 (text never uses them)."""

from __future__ import annotations

import pytest
import torch

from asynclm.protocol import Tag
from asynclm.vocab import CMLVocab


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # The CI box has 2 cores shared by many jobs: torch's default thread pool oversubscribes them and
    # makes tiny forwards ~30x slower (measured: 17.7 s vs 0.6 s for one runtime test).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny():
    from core.testing import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def vocab(tiny) -> CMLVocab:
    vocab = CMLVocab.for_tokenizer(tiny.tokenizer)  # byte-level: tags on control bytes \x01..\x05
    assert vocab.tag_ids[Tag.CALL] == tiny.tokenizer.encode("\x01", add_special_tokens=False)[0]
    return vocab
