import pytest
from _symphony_helpers import make_kernel

from core.testing import tiny_model


@pytest.fixture(scope="session", params=["llama", "gemma3"])
def tiny(request):
    """A tiny random model (llama, and gemma3 for sliding windows) with its byte-level tokenizer."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture
def kernel(tiny):
    k = make_kernel(tiny)
    yield k
    k.close()


@pytest.fixture
def llama_kernel(tiny_llama):
    k = make_kernel(tiny_llama)
    yield k
    k.close()
