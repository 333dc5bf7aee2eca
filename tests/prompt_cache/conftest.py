"""Shared fixtures: tiny random models (fast, fp32) served by a small engine, and the paper's examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import EngineConfig
from core.engine import Engine
from core.testing import tiny_model

# One thread: the tiny models gain nothing from two, and the shared 2-core machine is oversubscribed.
torch.set_num_threads(1)

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prompt-cache-examples"


def make_engine(family: str = "llama", page_size: int = 4, num_pages: int = 512) -> Engine:
    loaded = tiny_model(family)
    return Engine(loaded.model, loaded.tokenizer, EngineConfig(page_size=page_size, num_pages=num_pages))


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip(f"the paper's example schemas are not at {EXAMPLES} (shared data folder absent)")
    return EXAMPLES
