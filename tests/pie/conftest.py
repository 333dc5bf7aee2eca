"""Shared fixtures: one tiny random model and one Pie runtime per test module.

Inferlets are built from source on first use and cached in ``.cache/pie`` (``python -m pie.build``
builds them all ahead of time); compiled components are cached there too.
"""

import pytest

from pie.runtime import PieRuntime, RuntimeConfig


@pytest.fixture(scope="session")
def tiny(tiny_llama):
    return tiny_llama


def make_runtime(loaded, **overrides) -> PieRuntime:
    cfg = dict(num_pages=128, page_size=4, memory_limit_mb=128, time_slice_s=1.0)
    cfg.update(overrides)
    return PieRuntime(loaded.model, loaded.tokenizer, RuntimeConfig(**cfg))


@pytest.fixture(scope="module")
def runtime(tiny):
    rt = make_runtime(tiny)
    yield rt
    rt.shutdown()


def greedy_reference(loaded, prompt: str, max_tokens: int) -> list[int]:
    """Greedy tokens from the engine's own generate (the plain-decoding reference)."""
    from core.engine import Engine
    from core.sampling import SamplingParams

    engine = Engine(loaded.model, loaded.tokenizer)
    return list(engine.generate([prompt], SamplingParams(max_new_tokens=max_tokens))[0].token_ids)


def parse_ids(result: str) -> list[int]:
    first = result.split("\n", 1)[0]
    return [int(t) for t in first.split(",") if t]


@pytest.fixture(scope="session")
def greedy(tiny):
    """greedy(prompt, n): the engine's greedy tokens on the tiny model."""
    return lambda prompt, n: greedy_reference(tiny, prompt, n)


@pytest.fixture(scope="session")
def ids():
    return parse_ids


@pytest.fixture(scope="session")
def runtime_factory(tiny):
    """runtime_factory(**RuntimeConfig overrides): a fresh runtime on the tiny model (shut it down)."""
    return lambda **overrides: make_runtime(tiny, **overrides)
