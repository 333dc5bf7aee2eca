"""In-process tiny models for tests that need no user processes."""

import functools

from core.testing import tiny_checkpoint
from petridish.model_spec import ModelSpec


@functools.cache
def load_tiny(family: str):
    return ModelSpec(source=str(tiny_checkpoint(family, seed=0)), attention_backend="torch").load()
