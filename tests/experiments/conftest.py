"""Shared settings for the harness tests: a sweep small enough for the tiny random model."""

from __future__ import annotations

import pytest

# The engine benchmark on the tiny random Gemma 3: seconds, not minutes (its context is 512 tokens).
TINY_ENGINE = (
    "model=tiny-random",
    "sweep.prefill_lens=[8,24]",
    "sweep.decode_batch_sizes=[1,2]",
    "sweep.decode_prompt_len=6",
    "sweep.decode_new_tokens=3",
    "profile.warmup=0",
)


@pytest.fixture(scope="session")
def tiny_engine_overrides() -> list[str]:
    return list(TINY_ENGINE)
