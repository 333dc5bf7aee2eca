"""Helpers shared by the Symphony tests (imported by name: tests/ directories are not packages)."""

import torch

from core.sequence import KVSequence
from symphony import Symphony, SymphonyConfig


def make_kernel(loaded, **overrides) -> Symphony:
    config = SymphonyConfig(**{"num_pages": 128, "page_size": 4, **overrides})
    return Symphony(loaded.model, loaded.tokenizer, config, model_id="tiny")


def reference_logits(model, token_ids, positions=None) -> torch.Tensor:
    """Full recompute in a fresh pool: the logits after the last of ``token_ids``."""
    pool = model.new_kv_pool(64, 4)
    seq = KVSequence(pool)
    out = model.forward(pool, [seq.entry(positions=positions, token_ids=token_ids)])[0].logits[-1]
    seq.release()
    return out
