"""A LIP process: the kernel's record of one running program (its PCB).

A process holds the program's coroutine, its user (for KVFS permissions), its descriptor table,
its mailboxes to and from the client, its budget, and what it is waiting for. States:

    READY --(blocking syscall)--> BLOCKED --(predict done / tool done / message)--> READY
    READY --(returns)--> EXITED        any --(raises, exceeds budget, killed)--> FAILED

Blocked processes are not scheduled at all; they cost only the files they hold.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import torch

from symphony.kvfs import KVFS, KVFile
from symphony.syscalls import OpenFile


class ProcessState(enum.Enum):
    READY = "ready"
    BLOCKED = "blocked"
    EXITED = "exited"
    FAILED = "failed"


@dataclass(frozen=True)
class LIPBudget:
    """Limits the kernel enforces on one LIP.

    ``max_slice_s`` bounds the CPU time a LIP runs between two blocking syscalls (a LIP that loops
    is interrupted when it passes it; syscall time is the kernel's, not charged); ``max_cpu_s``
    bounds the total of its slices;
    ``max_syscalls`` and ``max_tokens`` bound its calls and the tokens it asks the model to process.
    """

    max_slice_s: float = 2.0
    max_cpu_s: float = 60.0
    max_syscalls: int = 1_000_000
    max_tokens: int = 1_000_000
    tool_timeout_s: float = 30.0


_pids = itertools.count(1)


class Process:
    def __init__(self, coro: Coroutine, kvfs: KVFS, user: str, args: dict[str, Any], budget: LIPBudget, name: str):
        self.pid = next(_pids)
        self.kvfs = kvfs
        self.coro = coro
        self.user = user
        self.args = args
        self.budget = budget
        self.name = name
        self.state = ProcessState.READY
        self.fds: dict[int, OpenFile] = {}
        self._next_fd = itertools.count(3)  # 0-2 are stdio by tradition; LIPs use send/receive
        self.inbox: deque[Any] = deque()
        self.outbox: deque[Any] = deque()
        self.waiting_for: str | None = None  # "predict", "tool", "receive": what BLOCKED waits on
        self.resume_value: Any = None
        self.resume_error: BaseException | None = None
        self.pending = 0  # outstanding results of the current blocking call
        self.results: list[Any] = []
        self.result: Any = None
        self.error: BaseException | None = None
        self.error_text: str | None = None
        self.stats: Counter = Counter()
        self.cpu_s = 0.0
        self.started_at = time.perf_counter()
        self.finished_at: float | None = None
        seed = args.get("seed")
        self.generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None

    @property
    def alive(self) -> bool:
        return self.state in (ProcessState.READY, ProcessState.BLOCKED)

    def install(self, f: KVFile, path: str | None, writable: bool) -> int:
        fd = next(self._next_fd)
        self.fds[fd] = OpenFile(f, path, writable)
        self.kvfs.opened(f)
        return fd

    def uninstall(self, fd: int) -> None:
        of = self.fds.pop(fd)
        self.kvfs.closed(of.file)

    def wait(self, what: str, count: int) -> None:
        self.state, self.waiting_for = ProcessState.BLOCKED, what
        self.pending, self.results = count, [None] * count

    def deliver(self, index: int, value: Any = None, error: BaseException | None = None) -> bool:
        """Record one result of the blocking call; True when the process may run again."""
        if error is not None and self.resume_error is None:
            self.resume_error = error
        self.results[index] = value
        self.pending -= 1
        return self.pending == 0

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, name={self.name!r}, user={self.user!r}, state={self.state.value})"
