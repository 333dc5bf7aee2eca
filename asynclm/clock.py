"""Time for the runtime and the executor: a virtual clock (default) or the wall clock.

With :class:`VirtualClock` the runtime advances time by the *measured* duration of every forward
pass and swap it runs, and function latencies come from a latency model; when every sequence waits,
time jumps to the next function completion. This keeps results repeatable on a shared, noisy CPU
while every generation cost in it is a real measurement on the real engine. :class:`WallClock`
runs everything in real time (functions really sleep) for demos and for checking the virtual one.
"""

from __future__ import annotations

import time


class VirtualClock:
    virtual = True

    def __init__(self) -> None:
        self._now = 0.0

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Account for work that took ``seconds`` of (measured) compute."""
        self._now += max(0.0, seconds)

    def jump_to(self, t: float) -> None:
        """Idle until ``t`` (nothing to compute until a function returns)."""
        self._now = max(self._now, t)


class WallClock:
    virtual = False

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def advance(self, seconds: float) -> None:
        """Real time already passed while the work ran."""

    def jump_to(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)


Clock = VirtualClock | WallClock
