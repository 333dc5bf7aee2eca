"""Command batching: forward calls from many inferlets become one ``Model.forward`` batch.

Every inferlet runs on its own thread and blocks in its ``forward`` host call. The call becomes a
*command* on one queue; a single worker thread (the only thread that runs the model) takes queued
commands, waits according to the :class:`BatchPolicy`, and runs them as one ragged batch. This is
the paper's command-queue scheduling, with its batching policies:

* ``eager``: run whatever is queued as soon as the model is free;
* ``k``: wait for ``k`` commands (or ``timeout_s`` after the first);
* ``t``: wait ``timeout_s`` after the first command, then run what is queued;
* ``adaptive``: run as soon as every inferlet that could submit has submitted (each running
  inferlet not blocked on the client or a tool), or when waiting longer would not pay: after
  twice the inferlets' recent *think time* (from getting a forward's result back to submitting
  the next one), at least ``timeout_s`` and at most ``max_wait_s``. With one inferlet this is
  eager; with many it forms full batches instead of splitting them into groups that alternate.

Threads, not asyncio: a wasm call into an inferlet is a blocking native call (wasmtime releases
the GIL while wasm runs), and a host call must return its result to the same native stack, so a
thread per inferlet is the plain model. Torch releases the GIL inside kernels, so the worker and
the inferlets overlap.

**Inline batches.** Handing a command to the worker and its result back costs two thread wake-ups
per forward (~0.2 ms on a quiet 2-core CPU, and a scheduler time slice or more when the machine is
overloaded), paid on every decode step. So a lone inferlet whose command can start at once (eager
or adaptive, model idle) runs its batch on its own thread (``inline``, on by default); batches of
several inferlets, and those that have to wait (k, t), run on the worker. Only one batch runs at a
time either way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.batch import ForwardEntry, ForwardOutput
from core.kv_cache import KVPool

POLICIES = ("eager", "k", "t", "adaptive")


@dataclass(frozen=True)
class BatchPolicy:
    kind: str = "adaptive"
    k: int = 8
    timeout_s: float = 0.005
    max_wait_s: float = 0.05  # adaptive: the longest it waits for stragglers
    max_batch_tokens: int = 4096
    inline: bool = True  # the submitter runs a batch that is ready at once itself (see the module docstring)

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ValueError(f"unknown batch policy {self.kind!r}; choose one of {', '.join(POLICIES)}")


@dataclass
class _Command:
    entry: ForwardEntry
    submission: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    output: ForwardOutput | None = None
    error: BaseException | None = None
    enqueued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    commands: int = 0
    tokens: int = 0
    forward_s: float = 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.commands / self.batches if self.batches else 0.0


class CommandBatcher:
    """The single model thread: collects forward commands and runs them in batches."""

    def __init__(self, model, pool: KVPool, policy: BatchPolicy, ready_inferlets: Callable[[], int]):
        self.model, self.pool, self.policy = model, pool, policy
        self._ready_inferlets = ready_inferlets  # how many inferlets could submit a command now
        self._queue: list[_Command] = []
        self._cond = threading.Condition()
        self._running = True
        self._submissions = 0  # id of the last submit_many call
        self._returned_at: dict[int, float] = {}  # submitting thread -> when its last result came back
        self._think_s = 0.0  # moving average of the time inferlets take to submit again
        self._busy = False  # a batch is running (on the worker or inline on a submitting thread)
        self._free_at = time.perf_counter()  # when the model last became free
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._loop, name="pie-batcher", daemon=True)
        self._thread.start()

    def submit(self, entry: ForwardEntry) -> ForwardOutput:
        """Queue one forward entry and block until its batch has run."""
        return self.submit_many([entry])[0]

    def submit_many(self, entries: list[ForwardEntry]) -> list[ForwardOutput]:
        """Queue entries together (one inferlet's parallel passes) and block until all have run."""
        cmds = [_Command(e) for e in entries]
        me = threading.get_ident()
        with self._cond:
            if not self._running:
                raise RuntimeError("the command batcher is stopped")
            if me in self._returned_at:
                # capped: a thread that waited on a tool or the client, or a reused thread id, is not thinking
                think = min(time.perf_counter() - self._returned_at[me], self.policy.max_wait_s)
                self._think_s = 0.8 * self._think_s + 0.2 * think
            self._submissions += 1
            for c in cmds:
                c.submission = self._submissions
            self._queue.extend(cmds)
            inline = self._may_run_inline(len(cmds))
            if inline:
                batch = self._pop_batch()
            else:
                self._cond.notify_all()
        if inline:
            self._run_and_release(batch)
        for c in cmds:
            c.done.wait()
        self._returned_at[me] = time.perf_counter()
        for c in cmds:
            if c.error is not None:
                raise c.error
        return [c.output for c in cmds]

    def wake(self) -> None:
        """Re-check the policy (an inferlet started waiting on I/O or ended)."""
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _may_run_inline(self, mine: int) -> bool:
        """The submitter runs its own batch when it is alone: the model is idle, only its commands are
        queued, no other inferlet could submit, and the policy would start the batch now. (Batches of
        several inferlets stay on the worker thread: run on whichever inferlet thread arrived last, each
        such thread would start its own OpenMP team for the model's kernels, which measured slower.)"""
        return (self.policy.inline and not self._busy and len(self._queue) == mine
                and self.policy.kind in ("eager", "adaptive") and self._ready_inferlets() <= 1)

    # -- worker ----------------------------------------------------------------------------
    def _ready(self) -> bool:
        p, n = self.policy, len(self._queue)
        if p.kind == "eager":
            return True
        if p.kind == "k":
            return n >= p.k
        if p.kind == "t":
            return False
        # adaptive: every inferlet able to submit has a submission in (one call may queue many passes)
        return len({c.submission for c in self._queue}) >= max(1, self._ready_inferlets())

    def _pop_batch(self) -> list[_Command]:
        """Take the oldest queued commands within the token budget (caller holds the lock)."""
        batch, tokens = [], 0
        while self._queue and (not batch or tokens + self._queue[0].entry.num_new <= self.policy.max_batch_tokens):
            cmd = self._queue.pop(0)
            batch.append(cmd)
            tokens += cmd.entry.num_new
        self._busy = True
        return batch

    def _take_batch(self) -> list[_Command] | None:
        with self._cond:
            while True:
                while self._running and (not self._queue or self._busy):
                    self._cond.wait()
                if not self._running:
                    return None
                start, wait = self._queue[0].enqueued_at, self.policy.timeout_s
                if self.policy.kind == "adaptive":
                    # Count from when the model became free, not from the oldest command: commands that
                    # queued during the last batch must not stop the wait for the inferlets of that batch,
                    # or the inferlets split into two groups whose half-size batches alternate.
                    start = max(start, self._free_at)
                    wait = min(self.policy.max_wait_s, max(wait, 2 * self._think_s))
                deadline = start + wait
                while self._running and self._queue and not self._busy and not self._ready():
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._running and self._queue and not self._busy:
                    return self._pop_batch()
                # else: a submitter ran the queue inline meanwhile (or we are stopping): look again

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                break
            self._run_and_release(batch)
        with self._cond:  # fail whatever is left so no inferlet thread waits forever
            for cmd in self._queue:
                cmd.error = RuntimeError("the command batcher stopped")
                cmd.done.set()
            self._queue.clear()

    def _run_and_release(self, batch: list[_Command]) -> None:
        try:
            self._run(batch)
        finally:
            with self._cond:
                self._busy = False
                self._free_at = time.perf_counter()
                self._cond.notify_all()  # the worker may start what queued meanwhile

    def _run(self, batch: list[_Command]) -> None:
        t0 = time.perf_counter()
        try:
            outputs = self.model.forward(self.pool, [c.entry for c in batch])
            for c, out in zip(batch, outputs):
                c.output = out
        except Exception as e:
            if len(batch) == 1:
                batch[0].error = e
            else:  # isolate the bad entry: one inferlet's malformed command must not fail the others
                for c in batch:
                    self._run([c])
                return
        finally:
            self.stats.forward_s += time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.commands += len(batch)
        self.stats.tokens += sum(c.entry.num_new for c in batch)
        for c in batch:
            c.done.set()
