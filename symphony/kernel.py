"""The Symphony kernel: runs LIPs as processes and schedules them at two levels.

Program level: LIPs are coroutines. The kernel runs every READY process for one time slice (until
its next blocking syscall); a process waiting for the model, a tool or the client is BLOCKED and
is not touched again until its event arrives. Batch level: once no process is ready, the predict
calls all processes made are packed into one ``Model.forward`` batch
(:class:`symphony.batch_scheduler.BatchScheduler`); its results wake their processes, and the
cycle repeats. Tool calls run on a thread pool meanwhile, so tool I/O overlaps model compute.

Isolation: a LIP that raises fails alone; a LIP that runs past its time slice is interrupted by
the watchdog; one that passes its syscall, CPU or token budget is stopped. Either way its queued
predicts are dropped and its descriptors closed (anonymous files freed, named files kept), and
the other LIPs go on.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from symphony.batch_scheduler import BatchScheduler, PredictRequest
from symphony.errors import BudgetExceeded, InvalidSyscall, LIPError, LIPTerminated, ToolError
from symphony.kvfs import KVFS
from symphony.process import LIPBudget, Process, ProcessState
from symphony.syscalls import LIP, GatherCall, PredictCall, ReceiveCall, ToolCall, YieldCall
from symphony.watchdog import Watchdog


@dataclass
class SymphonyConfig:
    num_pages: int = 1024
    page_size: int = 16
    max_batch_size: int = 64
    max_batch_tokens: int = 512
    host_capacity_pages: int = 4096  # swapped-out KV kept in host memory before spilling to disk
    swap_dir: str | None = None
    tool_workers: int = 4
    budget: LIPBudget = field(default_factory=LIPBudget)


Program = Callable[[LIP], Coroutine] | str | Path
_module_ids = itertools.count()


def load_program(program: Program) -> tuple[Callable[[LIP], Coroutine], str]:
    """An ``async def main(lip)``, given directly or as the path of a ``.py`` file defining it."""
    if callable(program):
        main, name = program, getattr(program, "__qualname__", "lip")
    else:
        path = Path(program)
        if not path.is_file():
            raise LIPError(f"no LIP file at {path}")
        spec = importlib.util.spec_from_file_location(f"_symphony_lip_{next(_module_ids)}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look their module up by name
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[spec.name]
            raise LIPError(f"LIP file {path} failed to load: {type(e).__name__}: {e}") from e
        main, name = getattr(module, "main", None), path.stem
        if main is None:
            raise LIPError(f"{path} defines no `async def main(lip)`")
    if not inspect.iscoroutinefunction(main):
        raise LIPError(f"LIP {name!r}: main must be `async def main(lip)`, got {main!r}")
    return main, name


class Symphony:
    """The LIP server: a KV file system, a process table and a two-level scheduler over one model."""

    def __init__(self, model, tokenizer, config: SymphonyConfig | None = None, model_id: str = ""):
        self.config = config or SymphonyConfig()
        self.model, self.tokenizer = model, tokenizer
        pool = model.new_kv_pool(self.config.num_pages, self.config.page_size)
        self.kvfs = KVFS(
            pool,
            model_id=model_id,
            host_capacity_pages=self.config.host_capacity_pages,
            swap_dir=self.config.swap_dir,
        )
        self.batcher = BatchScheduler(model, self.kvfs, self.config.max_batch_size, self.config.max_batch_tokens)
        self.processes: dict[int, Process] = {}
        self._ready: deque[Process] = deque()
        self._current: Process | None = None
        self._thread = threading.get_ident()
        self._tools = ThreadPoolExecutor(self.config.tool_workers, thread_name_prefix="symphony-tool")
        self._tool_calls: dict[Future, tuple[Process, int, float]] = {}
        self._tool_done: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._vocab: list[str] | None = None
        self.watchdog = Watchdog()

    # -- client API --------------------------------------------------------------------------------
    def submit(
        self,
        program: Program,
        args: dict[str, Any] | None = None,
        user: str = "guest",
        budget: LIPBudget | None = None,
    ) -> int:
        """Start a LIP as user ``user``; returns its pid. It runs when :meth:`run` is called."""
        main, name = load_program(program)
        proc = Process(None, self.kvfs, user, dict(args or {}), budget or self.config.budget, name)
        proc.coro = main(LIP(self, proc))
        self.kvfs.home(user)
        self.processes[proc.pid] = proc
        self._ready.append(proc)
        return proc.pid

    def send(self, pid: int, message: Any) -> None:
        """Deliver a client message; a LIP blocked in ``receive`` becomes ready."""
        proc = self.processes[pid]
        if not proc.alive:
            raise LIPError(f"LIP {pid} ({proc.name}) has {proc.state.value}; it cannot receive messages")
        if proc.state is ProcessState.BLOCKED and proc.waiting_for == "receive":
            self._wake(proc, message)
        else:
            proc.inbox.append(message)

    def receive(self, pid: int) -> list[Any]:
        """Messages the LIP has sent to the client since the last call."""
        proc = self.processes[pid]
        out = list(proc.outbox)
        proc.outbox.clear()
        return out

    def process(self, pid: int) -> Process:
        return self.processes[pid]

    def kill(self, pid: int, reason: str = "killed by the operator") -> None:
        proc = self.processes[pid]
        if proc.alive:
            self._fail(proc, LIPError(reason))

    def run_program(
        self,
        program: Program,
        args: dict[str, Any] | None = None,
        user: str = "guest",
        budget: LIPBudget | None = None,
    ) -> Process:
        """Submit one LIP and run the server until it is done or waits for the client."""
        pid = self.submit(program, args, user, budget)
        self.run()
        return self.processes[pid]

    def run(self, timeout_s: float | None = None) -> None:
        """Schedule until every LIP has exited or waits for a client message."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            self._poll_tools(block=False)
            while self._ready:  # program level: each ready LIP runs to its next blocking call
                proc = self._ready.popleft()
                if proc.state is ProcessState.READY:
                    self._run_slice(proc)
            if self.batcher.has_work():  # batch level: all pending predicts, one forward
                for req in self.batcher.step():
                    req.on_done(req)
                continue
            if self._tool_calls:
                self._poll_tools(block=True)
                continue
            return

    def close(self) -> None:
        for proc in self.processes.values():
            if proc.alive:
                self._fail(proc, LIPError("server shut down"))
        self._tools.shutdown(wait=False, cancel_futures=True)
        self.watchdog.close()

    def vocab_strings(self) -> list[str]:
        """Every token id decoded alone; built once per server (a few seconds for a 262k vocabulary)."""
        if self._vocab is None:
            n = self.model.config.vocab_size
            hf = getattr(self.tokenizer, "hf", None)
            if hf is not None and hasattr(hf, "batch_decode"):  # one call into the Rust tokenizer
                self._vocab = list(hf.batch_decode([[i] for i in range(n)], skip_special_tokens=True))
            else:
                self._vocab = [self.tokenizer.decode([i], skip_special_tokens=True) for i in range(n)]
        return self._vocab

    # -- syscall entry (used by symphony.syscalls) -------------------------------------------------
    @contextmanager
    def syscall(self, proc: Process) -> Iterator[None]:
        """Enter the kernel: uninterruptible, counted against the budget, only from the LIP's slice."""
        if threading.get_ident() != self._thread or self._current is not proc:
            raise InvalidSyscall(
                f"LIP {proc.pid} made a syscall outside its own time slice (from a tool thread or another LIP?)"
            )
        with self.watchdog.masked():
            proc.stats["syscalls"] += 1
            if proc.stats["syscalls"] > proc.budget.max_syscalls:
                proc.error = BudgetExceeded(f"LIP {proc.pid} made more than {proc.budget.max_syscalls} syscalls")
                raise LIPTerminated(str(proc.error))
            yield

    # -- program level ----------------------------------------------------------------------------
    def _run_slice(self, proc: Process) -> None:
        value, error = proc.resume_value, proc.resume_error
        proc.resume_value, proc.resume_error = None, None
        self._current = proc
        t0 = time.thread_time()  # slices and budgets are CPU time of this (the kernel's) thread
        proc.stats["slices"] += 1
        self.watchdog.begin(max(0.0, min(proc.budget.max_slice_s, proc.budget.max_cpu_s - proc.cpu_s)))
        call, yielded = None, False
        try:
            try:
                call = proc.coro.throw(error) if error is not None else proc.coro.send(value)
                yielded = True
            finally:
                self._end_slice()
        except StopIteration as stop:
            self._exit(proc, stop.value)
        except LIPTerminated:
            elapsed = time.thread_time() - t0
            reason = proc.error or BudgetExceeded(
                f"LIP {proc.pid} ({proc.name}) ran {elapsed:.2f} s of CPU without a blocking syscall "
                f"(time slice {proc.budget.max_slice_s} s, CPU budget {proc.budget.max_cpu_s} s)"
            )
            self._fail(proc, reason)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # whatever a LIP raises (even SystemExit) ends only that LIP
            self._fail(proc, e)
        finally:
            proc.cpu_s += time.thread_time() - t0
            self._current = None
        if yielded and proc.alive:
            self._dispatch(proc, call)

    def _end_slice(self) -> None:
        # The watchdog may deliver one last interrupt while we stop it; keep ending until it sticks.
        while True:
            try:
                self.watchdog.end()
                return
            except LIPTerminated:
                continue
            finally:
                sys.settrace(None)  # the watchdog may have armed a tracer on this thread

    def _dispatch(self, proc: Process, call: Any) -> None:
        if isinstance(call, PredictCall):
            proc.wait("predict", 1)
            self._submit_predict(proc, call, 0)
        elif isinstance(call, ToolCall):
            proc.wait("tool", 1)
            self._start_tool(proc, call, 0)
        elif isinstance(call, GatherCall):
            proc.wait("gather", len(call.calls))
            for i, c in enumerate(call.calls):
                (self._submit_predict if isinstance(c, PredictCall) else self._start_tool)(proc, c, i)
            if not call.calls:
                self._wake(proc, [])
        elif isinstance(call, ReceiveCall):
            if proc.inbox:
                self._wake(proc, proc.inbox.popleft())
            else:
                proc.wait("receive", 1)
        elif isinstance(call, YieldCall):
            self._wake(proc, None)
        else:
            self._fail(
                proc,
                InvalidSyscall(
                    f"LIP {proc.pid} ({proc.name}) awaited {call!r}, which is not a Symphony syscall "
                    "(LIPs await only lip.* calls, not asyncio)"
                ),
            )
            return
        if proc.stats["predicted_tokens"] > proc.budget.max_tokens:
            self._fail(
                proc,
                BudgetExceeded(
                    f"LIP {proc.pid} asked for {proc.stats['predicted_tokens']} tokens, budget {proc.budget.max_tokens}"
                ),
            )

    def _wake(self, proc: Process, value: Any = None, error: BaseException | None = None) -> None:
        proc.state, proc.waiting_for = ProcessState.READY, None
        proc.resume_value, proc.resume_error = value, error
        self._ready.append(proc)

    def _deliver(self, proc: Process, index: int, value: Any = None, error: BaseException | None = None) -> None:
        if not proc.alive:
            return
        if proc.deliver(index, value, error):
            single = proc.waiting_for != "gather"
            err = proc.resume_error
            self._wake(proc, proc.results[0] if single else list(proc.results), err)

    def _submit_predict(self, proc: Process, call: PredictCall, index: int) -> None:
        def done(req: PredictRequest) -> None:
            self._deliver(proc, index, None if req.error else req.result(), req.error)

        self.batcher.submit(PredictRequest(call, proc.pid, done))

    def _start_tool(self, proc: Process, call: ToolCall, index: int) -> None:
        timeout = call.timeout_s if call.timeout_s is not None else proc.budget.tool_timeout_s
        future = self._tools.submit(call.fn, *call.args, **call.kwargs)
        self._tool_calls[future] = (proc, index, time.monotonic() + timeout)
        future.add_done_callback(self._tool_done.put)
        proc.stats["tool_calls"] += 1

    def _poll_tools(self, block: bool) -> None:
        if block and self._tool_calls:
            wait = max(0.0, min(d for _, _, d in self._tool_calls.values()) - time.monotonic())
            with suppress(queue.Empty):
                self._finish_tool(self._tool_done.get(timeout=min(wait, 0.5) or 1e-3))
        while True:
            try:
                self._finish_tool(self._tool_done.get_nowait())
            except queue.Empty:
                break
        now = time.monotonic()
        for future, (proc, index, deadline) in list(self._tool_calls.items()):
            if now > deadline:  # the worker thread cannot be killed; its late result is dropped
                del self._tool_calls[future]
                self._deliver(proc, index, error=ToolError(f"tool {future!r} of LIP {proc.pid} timed out"))

    def _finish_tool(self, future: Future) -> None:
        entry = self._tool_calls.pop(future, None)
        if entry is None:
            return  # timed out earlier, or its LIP is gone
        proc, index, _ = entry
        err = future.exception()
        if err is not None:
            err = ToolError(f"tool raised {type(err).__name__}: {err}")
            err.__cause__ = future.exception()
            self._deliver(proc, index, error=err)
        else:
            self._deliver(proc, index, future.result())

    # -- exit and cleanup -------------------------------------------------------------------------
    def _exit(self, proc: Process, result: Any) -> None:
        proc.result, proc.state = result, ProcessState.EXITED
        self._cleanup(proc)

    def _fail(self, proc: Process, error: BaseException) -> None:
        proc.error, proc.state = error, ProcessState.FAILED
        proc.error_text = "".join(traceback.format_exception(error))
        self._close_coroutine(proc)
        self._cleanup(proc)

    def _close_coroutine(self, proc: Process) -> None:
        # Closing runs the LIP's `finally` blocks: give them one short slice, like any other code.
        self._current = proc
        self.watchdog.begin(min(proc.budget.max_slice_s, 0.5))
        try:
            try:
                proc.coro.close()
            finally:
                self._end_slice()
        except BaseException as e:  # a misbehaving `finally` must not take the kernel down
            if isinstance(e, KeyboardInterrupt):
                raise
        finally:
            self._current = None

    def _cleanup(self, proc: Process) -> None:
        proc.finished_at = time.perf_counter()
        self.batcher.cancel(proc.pid)
        for future, (owner, _, _) in list(self._tool_calls.items()):
            if owner is proc:
                del self._tool_calls[future]
                future.cancel()
        for fd in list(proc.fds):
            proc.uninstall(fd)
        proc.inbox.clear()
