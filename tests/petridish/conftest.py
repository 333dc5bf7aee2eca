import pytest

from core.testing import tiny_checkpoint
from petridish.model_spec import ModelSpec


@pytest.fixture(scope="session", params=["llama", "gemma3"])
def tiny_spec(request) -> ModelSpec:
    """A tiny random checkpoint on disk: every process loads the same weights from it."""
    return ModelSpec(source=str(tiny_checkpoint(request.param, seed=0)), attention_backend="torch")


@pytest.fixture(scope="session")
def llama_spec() -> ModelSpec:
    return ModelSpec(source=str(tiny_checkpoint("llama", seed=0)), attention_backend="torch")
