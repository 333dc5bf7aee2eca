"""The executor: runs each call concurrently as soon as it is emitted (asyncio, one task per call).

A call becomes a :class:`CallResult` that carries the :class:`~asynclm.protocol.Interrupt` to deliver
and the time it is ready. Failures never escape: an exception, a timeout, or a result that is not
JSON or is too long ("garbage") becomes an *error interrupt* the model reads, so a task always ends
cleanly.

The asyncio loop lives on a background thread so calls run while the runtime's thread computes
forward passes. Under the wall clock each task really sleeps its latency; under the virtual clock the
body still runs for real (for its value, bounded by the timeout in real time) while its ready time is
``issued_at + latency`` on the virtual timeline.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import json
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from asynclm.clock import Clock
from asynclm.functions import REAL_IMPLEMENTATIONS, LatencyModel, simulated_result
from asynclm.protocol import FunctionCall, Interrupt

_TIMEOUT_SUFFIX = " timed out after {:g} s"


@dataclass(frozen=True)
class CallResult:
    owner: Any  # who issued the call (a sequence handle); results are routed back to it
    call: FunctionCall
    interrupt: Interrupt
    issued_at: float
    ready_at: float

    @property
    def exec_s(self) -> float:
        return self.ready_at - self.issued_at


class Executor:
    def __init__(
        self,
        clock: Clock,
        latency: LatencyModel | None = None,
        implementations: dict[str, Callable[..., Any]] | None = None,
        timeout_s: float = 5.0,
        max_result_chars: int = 2000,
        simulate_missing: bool = True,
    ):
        self.clock = clock
        self.latency = latency or LatencyModel()
        self.implementations = dict(REAL_IMPLEMENTATIONS if implementations is None else implementations)
        self.timeout_s = timeout_s
        self.max_result_chars = max_result_chars
        self.simulate_missing = simulate_missing
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="asynclm-executor", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        # (ready_at, tie, owner, call, issued_at, future); virtual ready_at known at submit time.
        self._pending: list[tuple[float, int, Any, FunctionCall, float, Future]] = []
        self._finished: list[CallResult] = []  # wall clock: completed, not yet polled
        self._tie = itertools.count()
        self._occurrences: dict[tuple[int, str], int] = {}  # (owner id, call body) -> times issued
        self.issued = 0

    # -- submitting --------------------------------------------------------------------------
    def submit(self, owner: Any, call: FunctionCall) -> None:
        now = self.clock.now()
        # Keyed by the call itself (and how often this owner issued it before), not by its id: the ids
        # follow emission order, which differs between systems, and the same call must take the same time.
        body = call.body()
        n = self._occurrences.get((id(owner), body), 0)
        self._occurrences[id(owner), body] = n + 1
        latency = self.latency.sample(call.name, f"{body}#{n}")
        fut = asyncio.run_coroutine_threadsafe(self._run(owner, call, now, latency), self._loop)
        ready = now + min(latency, self.timeout_s) if self.clock.virtual else float("inf")
        with self._lock:
            heapq.heappush(self._pending, (ready, next(self._tie), owner, call, now, fut))
            self.issued += 1

    def expected_latency(self, call: FunctionCall) -> float:
        return self.latency.expected(call.name)

    async def _run(self, owner: Any, call: FunctionCall, issued_at: float, latency: float) -> Interrupt:
        timed_out = latency > self.timeout_s
        try:
            if self.clock.virtual:
                interrupt = await asyncio.wait_for(self._invoke(call), self.timeout_s)
            else:
                interrupt = await asyncio.wait_for(self._invoke(call, latency), self.timeout_s)
        except TimeoutError:
            timed_out = True
        if timed_out:
            interrupt = Interrupt(call.call_id, error=call.name + _TIMEOUT_SUFFIX.format(self.timeout_s))
        if not self.clock.virtual:
            with self._done:
                self._finished.append(CallResult(owner, call, interrupt, issued_at, self.clock.now()))
                self._done.notify_all()
        return interrupt

    async def _invoke(self, call: FunctionCall, sleep_s: float = 0.0) -> Interrupt:
        impl = self.implementations.get(call.name)
        try:
            if sleep_s:  # the modelled latency comes first, so failures take time as well
                await asyncio.sleep(sleep_s)
            if impl is None:
                if not self.simulate_missing:
                    raise LookupError(f"no function named {call.name!r}")
                value = simulated_result(call.name, call.arguments)
            elif inspect.iscoroutinefunction(impl):
                value = await impl(**call.arguments)
            else:  # a thread, so a blocking or hanging body cannot stall the other calls
                value = await asyncio.to_thread(impl, **call.arguments)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # any failure of user code becomes an error interrupt
            return Interrupt(call.call_id, error=f"{call.name} raised {type(e).__name__}: {e}")
        return self._checked(call, value)

    def _checked(self, call: FunctionCall, value: Any) -> Interrupt:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError) as e:
            return Interrupt(call.call_id, error=f"{call.name} returned a non-JSON value ({e})")
        if len(text) > self.max_result_chars:
            return Interrupt(
                call.call_id, error=f"{call.name} returned {len(text)} chars, over the {self.max_result_chars} limit"
            )
        return Interrupt(call.call_id, value)

    # -- collecting --------------------------------------------------------------------------
    def poll(self) -> list[CallResult]:
        """Results ready at the clock's current time, in completion order."""
        if not self.clock.virtual:
            with self._lock:
                out, self._finished = self._finished, []
                done = {id(r.call) for r in out}
                self._pending = [p for p in self._pending if id(p[3]) not in done]
                heapq.heapify(self._pending)
            return out
        now, out = self.clock.now(), []
        while True:
            with self._lock:
                if not self._pending or self._pending[0][0] > now:
                    return out
                ready, _, owner, call, issued, fut = heapq.heappop(self._pending)
            interrupt = fut.result(timeout=self.timeout_s + 1.0)  # the body ran in real time
            hung = interrupt.error is not None and interrupt.error.endswith(_TIMEOUT_SUFFIX.format(self.timeout_s))
            if hung and ready < issued + self.timeout_s:  # the body itself hung: ready at the timeout
                with self._lock:
                    item = (issued + self.timeout_s, next(self._tie), owner, call, issued, fut)
                    heapq.heappush(self._pending, item)
                continue
            out.append(CallResult(owner, call, interrupt, issued, ready))

    def num_pending(self, owner: Any = None) -> int:
        with self._lock:
            return sum(1 for p in self._pending if owner is None or p[2] is owner)

    def next_ready_at(self) -> float | None:
        """Virtual clock: when the next result is ready (None if nothing is pending)."""
        with self._lock:
            if not self._pending:
                return None
            return self._pending[0][0] if self.clock.virtual else self.clock.now()

    def wait_for_any(self) -> None:
        """Idle until at least one pending call has a result."""
        if self.clock.virtual:
            t = self.next_ready_at()
            if t is not None:
                self.clock.jump_to(t)
            return
        with self._done:
            if self._pending and not self._finished:
                self._done.wait_for(lambda: bool(self._finished), timeout=self.timeout_s + 1.0)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
