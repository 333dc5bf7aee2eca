"""Preempting a LIP that runs too long without a blocking syscall (a timer interrupt, in OS terms).

LIPs run as coroutines on the kernel's thread, so a LIP stuck in ``while True: pass`` would stall
every other LIP. A watchdog thread watches each time slice, measured in the kernel thread's CPU
time (so a loaded machine does not make a busy LIP look like a looping one); when one passes its
deadline it raises
:class:`LIPTerminated` in the kernel thread (CPython's ``PyThreadState_SetAsyncExc``, delivered
between bytecodes), and keeps raising it every few milliseconds until the slice ends, so a LIP
that catches it cannot keep running.

A LIP may catch even a ``BaseException``. So the interrupt arms a line tracer on the LIP's own
frames when it is created (exceptions are built in the thread they are delivered to); the tracer
raises again at the next line the LIP runs, which is inside its ``except`` handler, so the
exception escapes the handler. Each level of nested handler costs the LIP one more interrupt.

Kernel code must never be interrupted half-way through a KVFS update, so syscalls run *masked*
(:meth:`Watchdog.masked`): the watchdog does not fire while a syscall runs, and an overdue slice
is ended by raising at the syscall's exit instead. Blocking C calls (``time.sleep``, sockets) are
not interruptible this way; LIPs do such work through ``call_tool``, which runs on worker threads
with a timeout.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from symphony.errors import LIPTerminated

_FIRE_INTERVAL_S = 0.005


def _cpu_clock(thread_id: int) -> int:
    """The CPU-time clock of a thread (slices are CPU time: a loaded machine must not kill LIPs)."""
    try:
        return time.pthread_getcpuclockid(thread_id)
    except (AttributeError, OSError):  # not on this platform: fall back to wall time
        return time.CLOCK_MONOTONIC


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedule ``exc`` in another thread (None clears a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else ctypes.c_void_p(0)
    )


class _Preempt(LIPTerminated):
    """The interrupt itself. Its constructor runs in the interrupted thread and arms the tracer."""

    watchdog: Watchdog

    def __init__(self, *args: object):
        super().__init__(*args or ("time slice exceeded",))
        self.watchdog._arm_tracer(sys._getframe(1))


class Watchdog:
    def __init__(self) -> None:
        self._exc = type("Preempt", (_Preempt,), {"watchdog": self})
        self._cv = threading.Condition()
        self._thread_id: int | None = None
        self._deadline = 0.0
        self._masked = 0
        self._clock = time.CLOCK_MONOTONIC
        self.fired = 0
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="symphony-watchdog", daemon=True)
        self._thread.start()

    def begin(self, seconds: float) -> None:
        """Start a slice on the calling thread that may use ``seconds`` of CPU time."""
        with self._cv:
            self._thread_id, self._masked = threading.get_ident(), 0
            self._clock = _cpu_clock(self._thread_id)
            self._deadline = time.clock_gettime(self._clock) + seconds
            self._cv.notify()

    def end(self) -> None:
        """End the slice and cancel any interrupt scheduled but not yet delivered."""
        with self._cv:
            if self._thread_id is not None:
                _raise_in_thread(self._thread_id, None)
            self._thread_id = None

    def overdue(self) -> bool:
        return self._thread_id is not None and time.clock_gettime(self._clock) > self._deadline

    @contextmanager
    def masked(self) -> Iterator[None]:
        """Run kernel code without interruption; raise at its end if the LIP's own time ran out.

        Time spent inside is kernel time and extends the slice's deadline (a slow syscall such
        as building the vocabulary table once must not count as the LIP looping).
        """
        with self._cv:
            self._masked += 1
            if self._thread_id is not None:
                _raise_in_thread(self._thread_id, None)
        t0 = time.thread_time()
        try:
            yield
        finally:
            with self._cv:
                self._masked -= 1
                self._deadline += time.thread_time() - t0  # kernel time is not charged to the slice
                overdue = self._masked == 0 and self.overdue()
        if overdue:
            raise LIPTerminated("time slice exceeded")

    def _arm_tracer(self, frame) -> None:
        if threading.get_ident() != self._thread_id or self._masked:
            return
        sys.settrace(self._trace)
        while frame is not None and frame.f_globals.get("__name__") != "symphony.kernel":
            frame.f_trace = self._trace  # the LIP's frames, up to the kernel's slice
            frame = frame.f_back

    def _trace(self, frame, event: str, arg: object):
        if self._masked or not self.overdue():
            return self._trace
        raise self._exc()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()

    def _loop(self) -> None:
        with self._cv:
            while not self._stop:
                if self._thread_id is None:
                    self._cv.wait()
                    continue
                remaining = self._deadline - time.clock_gettime(self._clock)
                if remaining > 0:
                    # A thread's CPU time grows no faster than wall time: waiting `remaining` never
                    # overshoots the deadline; on a busy machine we simply check again.
                    self._cv.wait(remaining)
                    continue
                if not self._masked:
                    _raise_in_thread(self._thread_id, self._exc)
                    self.fired += 1
                self._cv.wait(_FIRE_INTERVAL_S)
