"""One running inferlet: its wasmtime store, its thread, its resources, its messages.

Lifecycle: ``Inferlet.start()`` runs ``_main`` on a new thread: a fresh :class:`wasmtime.Store`
with the sandbox limits (linear-memory cap, an epoch deadline re-armed by every host call, WASI
with no preopened directories, no network, no environment), instantiation of the shared compiled
component, then the exported ``run``. However it ends (returned, raised, trapped, killed), its
KV pages and embeds go back to the pool and the batcher stops waiting for it; other inferlets
never notice.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

from pie import host_api
from pie.errors import (
    InferletFailed,
    InferletKilled,
    InferletMemoryExceeded,
    InferletTerminated,
    InferletTimeout,
    InferletTrap,
)
from pie.resources import ResourceTable

_ids = itertools.count(1)


@dataclass
class InferletStats:
    calls: Counter = field(default_factory=Counter)  # host function -> number of calls
    call_s: Counter = field(default_factory=Counter)  # host function -> seconds inside it
    errors: int = 0
    forward_tokens: int = 0
    launch_s: float = 0.0  # launch() to the start of ``run`` (store + instantiate)
    run_s: float = 0.0

    def count(self, name: str, seconds: float) -> None:
        self.calls[name] += 1
        self.call_s[name] += seconds

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


class Inferlet:
    """A launched inferlet. ``wait()`` returns its result or raises an :class:`InferletTerminated`."""

    def __init__(self, runtime, program, args: list[str], tools: dict[str, Callable[[str], str]] | None = None,
                 on_message: Callable[[Inferlet, str], None] | None = None):
        self.id = next(_ids)
        self.runtime, self.program, self.name = runtime, program, f"{program.name}#{self.id}"
        self.args, self.tools = list(args), dict(tools or {})
        self.on_message = on_message
        self.table = ResourceTable(runtime.pool, runtime.lock, self.name, runtime.config.max_pages_per_inferlet)
        self.inbox: queue.Queue[str] = queue.Queue()
        self.outbox: queue.Queue[str] = queue.Queue()
        self.stats = InferletStats()
        self.slice_ticks = max(1, round(runtime.config.time_slice_s / runtime.config.epoch_tick_s))
        self.kill_reason: str | None = None
        self.host_error: BaseException | None = None
        self.result: str | None = None
        self.error: InferletTerminated | None = None
        self.waiting_io = False
        self._done = threading.Event()
        fd, log = tempfile.mkstemp(prefix=f"pie-{program.name}-{self.id}-", suffix=".log")
        os.close(fd)
        self._log = Path(log)  # kept after a failure for post-mortems, removed after a success
        self._thread = threading.Thread(target=self._main, name=f"inferlet-{self.name}", daemon=True)
        self._launched_at = 0.0

    # -- control ---------------------------------------------------------------------------
    def start(self) -> Inferlet:
        self._launched_at = time.perf_counter()
        self._thread.start()
        return self

    def send(self, message: str) -> None:
        """Deliver a client message (what the inferlet's ``receive`` returns)."""
        self.inbox.put(message)

    def kill(self, reason: str = "terminated by the client") -> None:
        """Stop at the next host call (or when its time slice runs out, if it is computing)."""
        self.kill_reason = reason

    def wait(self, timeout: float | None = None) -> str:
        if not self._done.wait(timeout):
            raise TimeoutError(f"inferlet {self.name} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result or ""

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def log(self) -> str:
        """What the inferlet wrote to stdout/stderr (WASI output goes to a private file)."""
        try:
            return self._log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- host side -------------------------------------------------------------------------
    def emit(self, message: str) -> None:
        self.outbox.put(message)
        if self.on_message is not None:
            self.on_message(self, message)

    @contextlib.contextmanager
    def waiting_on_io(self):
        """Mark this inferlet as blocked on the client or a tool, so batching does not wait for it."""
        self.waiting_io = True
        self.runtime.batcher.wake()
        try:
            yield
        finally:
            self.waiting_io = False

    # -- thread ----------------------------------------------------------------------------
    def _main(self) -> None:
        host_api.bind_thread(self)
        cfg = self.runtime.config
        try:
            store = wasmtime.Store(self.runtime.engine)
            wasi = wasmtime.WasiConfig()  # no preopens, no env, no inherited network: nothing granted
            wasi.stdout_file = str(self._log)
            wasi.stderr_file = str(self._log)
            store.set_wasi(wasi)
            store.set_limits(memory_size=cfg.memory_limit_mb << 20)
            store.set_epoch_deadline(self.slice_ticks)
            instance = self.runtime.linker.instantiate(store, self.program.component)
            run = instance.get_func(store, "run")
            self.stats.launch_s = time.perf_counter() - self._launched_at
            t0 = time.perf_counter()
            try:
                out = run(store)
            finally:
                self.stats.run_s = time.perf_counter() - t0
            if out.tag == "ok":
                self.result = out.payload
            else:
                self.error = self._classify_err(str(out.payload))
        except wasmtime.WasmtimeError as e:
            self.error = self._classify_trap(str(e))
        except Exception as e:  # instantiation refused (memory limit below the module's minimum, ...)
            self.error = InferletTrap(self.program.name, self.id, f"{type(e).__name__}: {e}")
        finally:
            self.table.release_all()
            if self.error is None:
                self._log.unlink(missing_ok=True)
            self._done.set()
            self.runtime._finished(self)

    def _classify_err(self, message: str) -> InferletTerminated:
        if message.startswith("MemoryError"):
            return InferletMemoryExceeded(self.program.name, self.id, f"limit {self.runtime.config.memory_limit_mb} MiB")
        return InferletFailed(self.program.name, self.id, message.strip().splitlines()[-1] if message.strip() else message)

    def _classify_trap(self, message: str) -> InferletTerminated:
        cfg = self.runtime.config
        if self.kill_reason is not None:
            return InferletKilled(self.program.name, self.id, self.kill_reason)
        if "wasm trap: interrupt" in message:
            return InferletTimeout(
                self.program.name, self.id, f"no host call for {cfg.time_slice_s:g} s (time slice)"
            )
        if "MemoryError" in self.log()[-20000:] or "memory" in message.split("Caused by:")[-1].lower():
            return InferletMemoryExceeded(self.program.name, self.id, f"limit {cfg.memory_limit_mb} MiB")
        if self.host_error is not None:
            return InferletTrap(self.program.name, self.id, f"host error: {self.host_error}")
        reason = message.split("Caused by:")[-1].strip().splitlines()
        return InferletTrap(self.program.name, self.id, reason[-1] if reason else message)
