"""Helpers the prompt_cache tests import by name (conftest.py is not importable in importlib mode)."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

from core.config import EngineConfig
from core.engine import Engine
from core.loader import load_model
from core.testing import tiny_checkpoint, tiny_model


def make_engine(family: str = "llama", page_size: int = 4, num_pages: int = 512, long: bool = False) -> Engine:
    """A tiny random model's engine; ``long``: 2048 positions instead of 512 (the paper's schemas are long
    in the tiny models' byte tokens)."""
    loaded = load_model(str(_long_checkpoint(family))) if long else tiny_model(family)
    return Engine(loaded.model, loaded.tokenizer, EngineConfig(page_size=page_size, num_pages=num_pages))


@functools.cache
def _long_checkpoint(family: str) -> Path:
    # The same weights; RoPE has no position table, so only the declared limit changes.
    path = Path(tempfile.mkdtemp(prefix=f"tiny-{family}-long-")) / "model"
    shutil.copytree(tiny_checkpoint(family), path)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = 2048
    (path / "config.json").write_text(json.dumps(config))
    return path
