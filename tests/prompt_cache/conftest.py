"""Shared fixtures: tiny random models (fast, fp32) served by a small engine, and the paper's examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One thread: the tiny models gain nothing from two, and the shared 2-core machine is oversubscribed.
torch.set_num_threads(1)

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "prompt-cache-examples"


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip(f"the paper's example schemas are not at {EXAMPLES} (shared data folder absent)")
    return EXAMPLES
