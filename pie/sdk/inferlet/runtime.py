"""Runtime calls: arguments, messaging, host-granted tools, the persistent store, tokenizer."""

from componentize_py_types import Err
from wit_world.imports import inference, runtime

_model_info = None


def get_arguments() -> list:
    return list(runtime.get_arguments())


def send(message: str) -> None:
    runtime.send(str(message))


def receive() -> str:
    """Block until the client sends this inferlet a message."""
    return runtime.receive()


def model_info():
    """Vocabulary size, KV page size, EOS/BOS ids, max position (cached: it never changes)."""
    global _model_info
    if _model_info is None:
        _model_info = runtime.get_model_info()
    return _model_info


def call_tool(name: str, argument: str) -> str:
    """Call a tool the host granted; raises ``RuntimeError`` with the host's reason if it fails."""
    try:
        return runtime.call_tool(name, argument)
    except Err as e:
        raise RuntimeError(e.value) from None


def store_get(key: str):
    return runtime.store_get(key)


def store_set(key: str, value: str) -> None:
    runtime.store_set(key, value)


def tokenize(text: str) -> list:
    return list(inference.tokenize(text))


def detokenize(tokens) -> str:
    return inference.detokenize(list(tokens))
