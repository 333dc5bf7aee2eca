"""What a measurement function gets: the config, and models loaded once per worker process.

A sweep has many points but one model. Each worker (a Ray actor, or this process when
``ray.enabled=false``) keeps a process-wide cache, so ``ctx.model()`` loads the weights on the
first point and hands the same object to every later point. ``ctx.cache(key, build)`` does the same
for anything else that is expensive to build (a baseline model, an engine with its KV pool).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

_PROCESS_CACHE: dict[str, Any] = {}


class WorkerContext:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def cache(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()`` once per process for this key (any JSON-able value, e.g. a config dict)."""
        text = json.dumps(key, sort_keys=True, default=str)
        if text not in _PROCESS_CACHE:
            _PROCESS_CACHE[text] = build()
        return _PROCESS_CACHE[text]

    def model(self):
        """The configured model as a ``core.loader.LoadedModel`` (``.model``, ``.tokenizer``)."""
        key = {"model": _plain(self.cfg.model), "dtype": self.cfg.engine.dtype, "device": self.cfg.engine.device}
        return self.cache(key, lambda: load_configured_model(self.cfg))

    def engine(self, **overrides):
        """A ``core.engine.Engine`` on the cached model with the config's engine settings.

        Cached per setting, so its KV pool is allocated once; ``overrides`` replace EngineConfig fields.
        """
        settings = {**_engine_settings(self.cfg.engine), **overrides}
        key = {
            "engine": settings,
            "model": _plain(self.cfg.model),
            "dtype": self.cfg.engine.dtype,
            "device": self.cfg.engine.device,
        }
        return self.cache(key, lambda: _build_engine(self.model(), settings, self.cfg.engine))


def clear_process_cache() -> None:
    """Drop every cached model and engine of this process (tests use it to bound memory)."""
    _PROCESS_CACHE.clear()


def load_configured_model(cfg: DictConfig):
    """Load ``cfg.model`` with ``cfg.engine``'s dtype and device (no caching)."""
    import torch

    from core.loader import load_model

    return load_model(source=model_path(cfg.model), dtype=getattr(torch, cfg.engine.dtype), device=cfg.engine.device)


def model_path(model: DictConfig) -> str:
    """What ``core.loader.load_model`` takes: the source, or for tiny-random its checkpoint folder.

    A tiny random model is a real transformers checkpoint written to a temporary folder once per
    process, so baselines (transformers itself) can load exactly the same weights.
    """
    if model.source == "tiny-random":
        from core.testing import tiny_checkpoint

        return str(tiny_checkpoint(model.family, model.seed))
    return str(model.source)


def _engine_settings(engine: DictConfig) -> dict:
    # conf/engine/*.yaml maps onto core.config.EngineConfig field by field; dtype/device go with the model.
    return {k: engine[k] for k in _ENGINE_KEYS if k in engine}


_ENGINE_KEYS = (
    "page_size",
    "num_pages",
    "max_batch_size",
    "prefill_chunk_size",
    "max_batch_tokens",
    "attention_backend",
)


def _build_engine(loaded, settings: dict, engine: DictConfig):
    import torch

    from core.engine import Engine, EngineConfig

    config = EngineConfig(**settings, dtype=getattr(torch, engine.dtype), device=str(engine.device))
    return Engine(loaded.model, loaded.tokenizer, config)


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
