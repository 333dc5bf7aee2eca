"""The Pie runtime: one model, one KV pool, one wasmtime engine, many inferlets.

``PieRuntime(model, tokenizer, RuntimeConfig(...))`` owns

* the shared :class:`wasmtime.Engine` (epoch interruption on, one ticker thread) and one
  component :class:`~wasmtime.component.Linker` with the host API (``pie/host_api.py``);
* *programs*: compiled components by name. Compiling a componentize-py inferlet (~18 MB) takes
  seconds, so a compiled component is serialized to ``<cache>/compiled/`` once and deserialized
  afterwards (milliseconds); a loaded program stays in memory, so a warm launch is just a store
  plus an instantiation;
* the KV pool, the page export registry, the persistent key-value store, and the
  :class:`~pie.batching.CommandBatcher` that turns forward calls into model batches.

``launch(name, args, tools=...)`` starts an :class:`~pie.instance.Inferlet`; ``run(...)``
launches and waits.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import wasmtime
from wasmtime import component as wc

from pie import host_api
from pie.batching import BatchPolicy, CommandBatcher
from pie.errors import InferletNotFoundError, PagesExhausted
from pie.instance import Inferlet
from pie.resources import ExportRegistry


@dataclass
class RuntimeConfig:
    num_pages: int = 256
    page_size: int = 16
    memory_limit_mb: int = 256  # linear memory per inferlet (CPython in wasm needs ~20 MiB to start)
    time_slice_s: float = 2.0  # longest stretch of wasm compute between host calls
    epoch_tick_s: float = 0.01
    max_pages_per_inferlet: int | None = None
    # When the pool runs out: "evict_newest" terminates the newest inferlets (the paper's policy) if
    # that frees enough pages for an older one; "error" returns the error to the caller alone.
    on_contention: str = "evict_newest"
    batch_policy: BatchPolicy = field(default_factory=BatchPolicy)
    model_name: str = "model"

    def __post_init__(self) -> None:
        if self.on_contention not in ("evict_newest", "error"):
            raise ValueError(f"on_contention={self.on_contention!r}; expected 'evict_newest' or 'error'")


@dataclass
class Program:
    name: str
    component: wc.Component
    wasm_bytes: int
    load_s: float  # compile or deserialize time
    compiled: bool  # True if this load compiled it (cold), False if deserialized from the cache


class PieRuntime:
    def __init__(self, model, tokenizer, config: RuntimeConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or RuntimeConfig()
        cfg = wasmtime.Config()
        cfg.epoch_interruption = True
        self.engine = wasmtime.Engine(cfg)
        self.linker = wc.Linker(self.engine)
        self.linker.add_wasip2()
        host_api.define(self.linker)
        self.pool = model.new_kv_pool(self.config.num_pages, self.config.page_size)
        self.lock = threading.Lock()
        self.exports = ExportRegistry(self.pool, self.lock)
        self.kv_store: dict[str, str] = {}
        self.model_info = self._model_info()
        self.inferlets: dict[int, Inferlet] = {}
        self.programs: dict[str, Program] = {}
        self.batcher = CommandBatcher(model, self.pool, self.config.batch_policy, self._ready_count)
        self._running = True
        self._ticker = threading.Thread(target=self._tick, name="pie-epoch", daemon=True)
        self._ticker.start()

    def _model_info(self) -> dict:
        c, tok = self.model.config, self.tokenizer
        eos = list(getattr(tok, "eos_token_ids", ()) or c.eos_token_ids)
        return {
            "name": self.config.model_name,
            "vocab-size": c.vocab_size,
            "kv-page-size": self.config.page_size,
            "eos-token-ids": [int(t) for t in eos],
            "bos-token-id": tok.bos_token_id,
            "max-position": c.max_position_embeddings,
        }

    # -- programs --------------------------------------------------------------------------
    def load_program(self, name: str, wasm: bytes | Path | None = None, use_cache: bool = True) -> Program:
        """Compile (or deserialize from the cache) an inferlet: a built-in by name, or given bytes.

        ``use_cache=False`` compiles from the ``.wasm`` even if it was loaded or cached before (a
        cold launch, for measuring it)."""
        from pie import build  # lazy: `python -m pie.build` must not find itself half-imported

        if wasm is None and name in self.programs and use_cache:
            return self.programs[name]
        if wasm is None:
            wasm = build.build(name)
        data = wasm.read_bytes() if isinstance(wasm, Path) else bytes(wasm)
        key = hashlib.sha256(data + metadata.version("wasmtime").encode()).hexdigest()[:24]
        cached = build.cache_dir() / "compiled" / f"{key}.cwasm"
        t0 = time.perf_counter()
        if cached.exists() and use_cache:
            component, compiled = wc.Component.deserialize_file(self.engine, str(cached)), False
        else:
            component, compiled = wc.Component(self.engine, data), True
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{threading.get_ident()}.tmp")
            tmp.write_bytes(component.serialize())
            tmp.replace(cached)
        program = Program(name, component, len(data), time.perf_counter() - t0, compiled)
        self.programs[name] = program
        return program

    def upload(self, name: str, wasm: bytes) -> Program:
        """Register a client-supplied inferlet component under ``name``."""
        return self.load_program(name, wasm)

    # -- inferlets -------------------------------------------------------------------------
    def launch(self, name: str, args: list[str] | tuple = (), tools: dict[str, Callable[[str], str]] | None = None,
               on_message: Callable[[Inferlet, str], None] | None = None) -> Inferlet:
        if not self._running:
            raise RuntimeError("the Pie runtime is shut down")
        try:
            program = self.load_program(name)
        except InferletNotFoundError:
            raise
        inferlet = Inferlet(self, program, list(args), tools, on_message)
        with self.lock:
            self.inferlets[inferlet.id] = inferlet
        return inferlet.start()

    def run(self, name: str, args: list[str] | tuple = (), tools=None, timeout: float | None = None) -> str:
        return self.launch(name, args, tools).wait(timeout)

    def alloc_pages(self, inferlet: Inferlet, count: int) -> list[int]:
        """Allocate KV pages for ``inferlet``; on contention evict newer inferlets if that suffices."""
        try:
            return inferlet.table.alloc_pages(count)
        except PagesExhausted:
            if self.config.on_contention != "evict_newest":
                raise
        short = count - self.pool.allocator.num_free
        newer = sorted((i for i in list(self.inferlets.values())
                        if i.id > inferlet.id and not i.done and i.table.num_pages),
                       key=lambda i: -i.id)
        victims, freed = [], 0
        for v in newer:
            if freed >= short:
                break
            victims.append(v)
            freed += v.table.num_pages
        if freed < short:  # evicting every newer inferlet would not be enough: spare them
            return inferlet.table.alloc_pages(count)
        for v in victims:
            v.kill(f"evicted: the KV pool ran out and {inferlet.name}, an older inferlet, needed {count} pages")
        for v in victims:
            v._done.wait(self.config.time_slice_s + 5)
        return inferlet.table.alloc_pages(count)

    def _ready_count(self) -> int:
        """Inferlets that could submit a forward now (running, not blocked on the client or a tool)."""
        return sum(1 for i in list(self.inferlets.values()) if not i.done and not i.waiting_io)

    def _finished(self, inferlet: Inferlet) -> None:
        with self.lock:
            self.inferlets.pop(inferlet.id, None)
        self.batcher.wake()

    def _tick(self) -> None:
        while self._running:
            time.sleep(self.config.epoch_tick_s)
            self.engine.increment_epoch()

    def shutdown(self) -> None:
        for inf in list(self.inferlets.values()):
            inf.kill("the runtime is shutting down")
        for inf in list(self.inferlets.values()):
            inf._done.wait(timeout=self.config.time_slice_s + 1)
        self._running = False
        self.batcher.stop()
        self.exports.clear()

    def __enter__(self) -> PieRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
