"""AsyncLM on the core engine: many sequences decoding in one batch, each receiving its own interrupts.

The loop (:meth:`AsyncLMRuntime.run`) alternates two things until every task has finished:

1. *deliver*: collect finished calls from the :class:`~asynclm.executor.Executor` and scheduled user
   messages, route each to its sequence's interrupt queue, and wake sequences waiting for them;
2. *step*: build one :class:`~core.batch.ForwardEntry` per runnable sequence and run one batched
   ``Model.forward``. A sequence's entry holds the token sampled last step, any tokens the monitor
   forced after it, and - when the monitor allows it - its queued interrupts, rendered as
   ``[INTR] id [HEAD] value [END]``. That is the interrupt: the result's tokens are appended to the
   running sequence's KV at its current position, in the same pass as a decode step, and sampling
   continues after them. Nothing already cached is recomputed.

The four systems of the paper's evaluation differ only in *when calls are dispatched* and *how results
come back* (:class:`Mode`): Sync blocks after each call until its result is appended; Sync-Parallel
dispatches a step's calls together at ``[TRAP]`` and resumes when all have returned; Async-Naive is
Async but restarts the completion (drops the KV and re-prefills everything) at every interrupt; Async
injects interrupts in place and lets the trap handler keep, swap or recompute a waiting sequence's KV.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from asynclm.clock import Clock, StepCostModel, VirtualClock
from asynclm.executor import Executor
from asynclm.monitor import TokenMonitor
from asynclm.parser import MalformedCall, ProtocolViolation, TrapEvent
from asynclm.protocol import FunctionCall, Interrupt
from asynclm.trap import SwappedKV, TrapAction, TrapCostModel, drop, swap_in, swap_out
from asynclm.vocab import CMLVocab
from core.kv_cache import KVPool
from core.sequence import KVSequence


class Mode(enum.Enum):
    SYNC = "sync"
    SYNC_PARALLEL = "sync_parallel"
    ASYNC_NAIVE = "async_naive"
    ASYNC = "async"


class RuntimeDeadlockError(RuntimeError):
    """Every live sequence waits, yet no call is pending and no user message is scheduled."""


class TokenSource(Protocol):
    """Chooses each next token: sampling from the model, or a teacher-forced script."""

    def next_token(self, task: TaskState, logits: torch.Tensor) -> int: ...


@dataclass
class AsyncTask:
    """One request: a prompt, how its tokens are chosen, and optional user messages at set times."""

    key: str
    prompt_ids: list[int]
    source: TokenSource
    max_new_tokens: int = 512
    user_interrupts: list[tuple[float, Interrupt]] = field(default_factory=list)  # (seconds after start, msg)
    record_logits: bool = False


@dataclass
class TaskResult:
    key: str
    mode: Mode
    e2e_s: float
    token_ids: list[int]
    prompt_len: int
    generated_tokens: int
    injected_tokens: int
    forced_tokens: int
    fed_tokens: int  # every token run through the model, re-prefills after restarts included
    calls: list[FunctionCall]
    interrupts: list[Interrupt]
    malformed: list[MalformedCall]
    violations: list[ProtocolViolation]
    exec_s: list[float]  # per call: issued -> ready
    trap_actions: list[TrapAction]
    finish_reason: str
    logits: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (context index, logits)
    user_latency_s: list[float] = field(default_factory=list)  # user message arrival -> delivery
    ttft_s: float = 0.0  # admission -> first generated token (the prompt's prefill)
    request_s: float = 0.0  # charged for new completion requests (``request_ttft_s``), included in e2e_s

    @property
    def span_s(self) -> float:
        """The paper's end-to-end latency: from the first generated token to the last (Sec 6.1)."""
        return self.e2e_s - self.ttft_s

    @property
    def recomputed_tokens(self) -> int:
        """Tokens run through the model more than once (Async-Naive restarts, RECOMPUTE traps)."""
        eos = 1 if self.finish_reason == "eos" else 0
        once = self.prompt_len + self.generated_tokens - eos + self.forced_tokens + self.injected_tokens
        return self.fed_tokens - once


@dataclass
class TaskState:
    """Everything the runtime tracks about one live sequence (a token source may read it)."""

    task: AsyncTask
    monitor: TokenMonitor
    seq: KVSequence
    start: float
    context: list[int] = field(default_factory=list)  # every token in the KV, in order
    pending_input: list[int] = field(default_factory=list)  # tokens the next forward appends
    queued: deque[Interrupt] = field(default_factory=deque)
    outstanding: dict[int, FunctionCall] = field(default_factory=dict)  # dispatched, no result yet
    undispatched: list[FunctionCall] = field(default_factory=list)  # Sync-Parallel: wait for [TRAP]
    delivered: dict[int | str, Interrupt] = field(default_factory=dict)  # results now in the context
    waiting: bool = False
    wait_for: int | None = None  # Sync: the call id this sequence blocks on
    parked: SwappedKV | None = None
    dropped: bool = False
    restart: bool = False  # re-prefill the whole context before the next step
    at_boundary: bool = False  # just woke from a wait: where a synchronous system sees new messages
    finish_reason: str | None = None
    end: float = 0.0
    first_token_at: float | None = None
    generated: int = 0
    result: TaskResult | None = None
    user_due: list[tuple[float, Interrupt]] = field(default_factory=list)
    user_arrived: dict[int | str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=lambda: {
        "injected": 0, "forced": 0, "fed": 0, "calls": [], "interrupts": [], "malformed": [],
        "violations": [], "exec_s": [], "traps": [], "logits": [], "user_latency": [], "request_s": 0.0,
    })

    @property
    def calls_in_flight(self) -> int:
        return len(self.outstanding) + len(self.undispatched) + len(self.queued)


class AsyncLMRuntime:
    def __init__(
        self,
        model,
        vocab: CMLVocab,
        executor: Executor,
        mode: Mode = Mode.ASYNC,
        pool: KVPool | None = None,
        eos_token_ids: Sequence[int] = (),
        trap_costs: TrapCostModel | None = None,
        trap_action: TrapAction | None = None,  # force one action (Fig 7 checks); None = cost model
        num_pages: int = 512,
        page_size: int = 16,
        step_cost: StepCostModel | None = None,  # charge fitted forward costs instead of raw timings
        request_ttft_s: float | None = None,
    ):
        """``request_ttft_s``: model a stateless server (an HTTP API, TGI), where every result the
        model must see starts a new completion request that costs one time-to-first-token: Sync after
        each result, Sync-Parallel after each round, Async-Naive at each interrupt (charged instead of
        its real re-prefill). None: a stateful engine (ours) that keeps the KV between calls."""
        self.model, self.vocab, self.executor, self.mode = model, vocab, executor, mode
        self.clock: Clock = executor.clock
        self.pool = pool or model.new_kv_pool(num_pages, page_size)
        self.eos_token_ids = tuple(eos_token_ids)
        self.trap_costs = trap_costs or TrapCostModel()
        self.trap_action = trap_action
        self.step_cost = step_cost
        self.request_ttft_s = request_ttft_s
        self.forward_s = 0.0
        self.num_forwards = 0

    # -- the loop --------------------------------------------------------------------------
    def run(self, tasks: Sequence[AsyncTask]) -> list[TaskResult]:
        now = self.clock.now()
        states = [self._admit(t, now) for t in tasks]
        live = list(states)
        while live:
            self._deliver(live)
            runnable = [s for s in live if not s.waiting]
            if not runnable:
                self._idle(live)
                continue
            self._step(runnable)
            for s in [s for s in live if s.finish_reason is not None]:
                self._finish(s)
                live.remove(s)
        return [s.result for s in states]

    def _admit(self, task: AsyncTask, now: float) -> TaskState:
        s = TaskState(task, TokenMonitor(self.vocab, self.eos_token_ids), KVSequence(self.pool), now)
        s.pending_input = list(task.prompt_ids)
        s.user_due = sorted(((now + dt, msg) for dt, msg in task.user_interrupts), key=lambda x: x[0])
        return s

    def _idle(self, live: list[TaskState]) -> None:
        """Nothing can run: wait for the next call result or user message."""
        next_user = min((s.user_due[0][0] for s in live if s.user_due), default=None)
        pending = self.executor.num_pending()
        if not pending and next_user is None:
            keys = [s.task.key for s in live]
            raise RuntimeDeadlockError(f"tasks {keys} wait but no call is pending and no message is due")
        next_call = self.executor.next_ready_at() if pending else None
        if next_user is not None and (next_call is None or next_user <= next_call):
            self.clock.jump_to(next_user)
        else:
            self.executor.wait_for_any()

    # -- delivering results ----------------------------------------------------------------
    def _deliver(self, live: list[TaskState]) -> None:
        by_owner = {id(s): s for s in live}
        for r in self.executor.poll():
            s = by_owner.get(id(r.owner))
            if s is None:
                continue  # the task already ended (e.g. it ran out of tokens)
            s.outstanding.pop(r.call.call_id, None)
            s.stats["exec_s"].append(r.exec_s)
            s.queued.append(r.interrupt)
        now = self.clock.now()
        for s in live:
            while s.user_due and s.user_due[0][0] <= now:
                t, msg = s.user_due.pop(0)
                s.user_arrived[msg.call_id] = t
                s.queued.append(msg)
            if s.waiting and self._should_wake(s):
                self._wake(s)

    def _should_wake(self, s: TaskState) -> bool:
        if not s.queued:
            return False
        if self.mode is Mode.SYNC:
            return s.wait_for is None or s.wait_for not in s.outstanding
        if self.mode is Mode.SYNC_PARALLEL:
            return not s.outstanding
        return True  # Async, Async-Naive: any interrupt ends a trap

    def _wake(self, s: TaskState) -> None:
        s.waiting, s.wait_for, s.at_boundary = False, None, True
        if self.request_ttft_s is not None and self.mode in (Mode.SYNC, Mode.SYNC_PARALLEL):
            self._new_request(s)  # the results go back to the server in a new request
        t0 = time.perf_counter()
        if s.parked is not None:
            swap_in(s.seq, s.parked)
            self.clock.advance(self._charged(time.perf_counter() - t0, s.parked.length))
            s.parked = None
        elif s.dropped:
            s.dropped, s.restart = False, True

    # -- one batched forward pass ----------------------------------------------------------
    def _step(self, runnable: list[TaskState]) -> None:
        entries = []
        for s in runnable:
            self._inject(s)
            if s.restart:  # Async-Naive, or RECOMPUTE after a trap: the whole context again
                s.pending_input = s.context + s.pending_input
                s.context = []
                if s.seq.length:
                    drop(s.seq)
                s.restart = False
            s.stats["fed"] += len(s.pending_input)
            entries.append(s.seq.entry(token_ids=s.pending_input, logits_at=(-1,)))
        t0 = time.perf_counter()
        outputs = self.model.forward(self.pool, entries)
        dt = time.perf_counter() - t0
        if self.step_cost is not None:
            dt = self.step_cost(entries)
        self.forward_s += dt
        self.num_forwards += 1
        self.clock.advance(dt)
        for s, out in zip(runnable, outputs):
            s.context.extend(s.pending_input)
            s.pending_input = []
            self._after_forward(s, out.logits[-1])

    def _inject(self, s: TaskState) -> None:
        """Append queued interrupts to this step's input, if the monitor allows it here."""
        if not s.queued or not s.monitor.may_inject():
            return
        # A synchronous system runs one completion per call: a user's message waits for the next one.
        hold_user = self.mode in (Mode.SYNC, Mode.SYNC_PARALLEL) and not s.at_boundary
        s.at_boundary = False
        now, held = self.clock.now(), deque()
        while s.queued:
            msg = s.queued.popleft()
            if hold_user and isinstance(msg.call_id, str):
                held.append(msg)
                continue
            tokens = self.vocab.encode(msg.segments())
            s.pending_input.extend(tokens)
            s.stats["injected"] += len(tokens)
            s.stats["interrupts"].append(msg)
            s.delivered[msg.call_id] = msg
            if msg.call_id in s.user_arrived:
                s.stats["user_latency"].append(now - s.user_arrived[msg.call_id])
        s.queued = held
        if self.mode is Mode.ASYNC_NAIVE and s.context:
            if self.request_ttft_s is None:
                s.restart = True  # restart the completion: the new prompt is everything so far + results
            else:
                self._new_request(s)  # the server's TTFT stands for the restart (no re-prefill charged)

    def _new_request(self, s: TaskState) -> None:
        self.clock.advance(self.request_ttft_s)
        s.stats["request_s"] += self.request_ttft_s

    def _after_forward(self, s: TaskState, logits: torch.Tensor) -> None:
        if s.task.record_logits:
            s.stats["logits"].append((len(s.context) - 1, logits.clone()))
        if s.generated >= s.task.max_new_tokens:
            s.finish_reason = "length"
            return
        masked = s.monitor.mask(logits, s.calls_in_flight)
        token = s.task.source.next_token(s, masked)
        if s.first_token_at is None:
            s.first_token_at = self.clock.now()
        s.generated += 1
        if token in self.eos_token_ids:
            s.finish_reason = "eos"
            s.context.append(token)
            return
        forced, events = s.monitor.accept(token)
        s.stats["forced"] += len(forced)
        s.pending_input = [token, *forced]
        for ev in events:
            self._on_event(s, ev)

    def _on_event(self, s: TaskState, ev) -> None:
        if isinstance(ev, FunctionCall):
            s.stats["calls"].append(ev)
            if self.mode is Mode.SYNC_PARALLEL:
                s.undispatched.append(ev)
            else:
                self._dispatch(s, ev)
            if self.mode is Mode.SYNC:
                self._wait(s, wait_for=ev.call_id)
        elif isinstance(ev, MalformedCall):
            s.stats["malformed"].append(ev)
            call_id = ev.call_id if ev.call_id is not None else s.monitor.next_call_id - 1
            s.queued.append(Interrupt(call_id, error=f"malformed call: {ev.reason}"))
        elif isinstance(ev, TrapEvent):
            if self.mode is Mode.SYNC_PARALLEL:
                for call in s.undispatched:
                    self._dispatch(s, call)
                s.undispatched = []
            if s.outstanding or s.user_due or s.queued:
                self._wait(s)
        elif isinstance(ev, ProtocolViolation):
            s.stats["violations"].append(ev)

    def _dispatch(self, s: TaskState, call: FunctionCall) -> None:
        s.outstanding[call.call_id] = call
        self.executor.submit(s, call)

    def _wait(self, s: TaskState, wait_for: int | None = None) -> None:
        s.waiting, s.wait_for = True, wait_for
        if self.mode is not Mode.ASYNC or s.queued:
            return
        action = self.trap_action or self.trap_costs.choose(s.seq.length, self._expected_wait(s))
        s.stats["traps"].append(action)
        if action is TrapAction.RECOMPUTE:  # the re-prefill on wake is charged as a forward pass
            drop(s.seq)
            s.pending_input = s.context + s.pending_input
            s.context = []
            s.dropped = True
        elif action is TrapAction.SWAP:
            t0 = time.perf_counter()
            s.parked = swap_out(s.seq)
            self.clock.advance(self._charged(time.perf_counter() - t0, s.parked.length))

    def _charged(self, measured_s: float, context_len: int) -> float:
        """One swap direction's time: measured, or with a step cost model half the fitted swap cost."""
        if self.step_cost is None:
            return measured_s
        a, b = self.trap_costs.swap_s
        return (a + b * context_len) / 2

    def _expected_wait(self, s: TaskState) -> float:
        """Until the earliest outstanding call is expected back (a user message counts too)."""
        now = self.clock.now()
        waits = [self.executor.expected_latency(c) for c in s.outstanding.values()]
        waits += [t - now for t, _ in s.user_due]
        return max(0.0, min(waits, default=0.0))

    def _finish(self, s: TaskState) -> None:
        s.end = self.clock.now()
        st = s.stats
        s.result = TaskResult(
            key=s.task.key, mode=self.mode, e2e_s=s.end - s.start, token_ids=list(s.context),
            prompt_len=len(s.task.prompt_ids), generated_tokens=s.generated, injected_tokens=st["injected"],
            forced_tokens=st["forced"], fed_tokens=st["fed"], calls=st["calls"],
            interrupts=st["interrupts"], malformed=st["malformed"], violations=st["violations"],
            exec_s=st["exec_s"], trap_actions=st["traps"], finish_reason=s.finish_reason or "",
            logits=st["logits"], user_latency_s=st["user_latency"],
            ttft_s=(s.first_token_at if s.first_token_at is not None else s.end) - s.start,
            request_s=st["request_s"],
        )
        s.seq.release()


def new_virtual_runtime(model, vocab: CMLVocab, mode: Mode, executor: Executor | None = None, **kw) -> AsyncLMRuntime:
    """A runtime on a fresh virtual clock (the experiments' default)."""
    return AsyncLMRuntime(model, vocab, executor or Executor(VirtualClock()), mode, **kw)
