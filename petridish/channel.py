"""A low-latency request/response channel between the service and one user process.

Per decode step the service sends each user process one :class:`QueryMessage` per layer and waits
for its :class:`PartialAttention`, so the channel is on the critical path of every layer. It is
built from the cheapest pieces the OS offers:

* one ``multiprocessing.shared_memory`` segment per user, laid out as fixed tensor views
  (header, positions, q, out, lse) that both sides read and write in place: no pickling, no copy
  beyond writing the query in and reading the answer out;
* two one-way pipes carrying a single byte each way as the "message ready" signal. A pipe (rather
  than a semaphore) lets the service wait with a timeout and notice a crashed peer: when the user
  process dies, its write end closes and the service's read end reports EOF at once.

The protocol is strictly alternating (one outstanding query per channel), so the two sides never
write the same region at the same time. Errors are :class:`UserCrashedError` (the peer is gone)
and :class:`UserStalledError` (no answer within the timeout).
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory

import torch

from petridish.messages import PartialAttention, QueryMessage

_HEADER = 4  # int64 fields: step, layer, num_queries, status
_STATUS_OK = 0
_SIGNAL = b"\x01"


class ChannelError(RuntimeError):
    """Base class for failures of the service <-> user-process channel."""


class UserCrashedError(ChannelError):
    """The user process exited (or closed its end) while the service waited for it."""


class UserStalledError(ChannelError):
    """The user process did not answer within the timeout."""


class ProtocolError(ChannelError):
    """A message did not fit the channel or answered a different query than the one sent."""


@dataclass(frozen=True)
class ChannelSpec:
    """What a user process needs to attach to its channel (picklable; sent once at spawn)."""

    shm_name: str
    max_queries: int
    num_heads: int
    head_dim: int

    @property
    def nbytes(self) -> int:
        return sum(n * 8 if dt == torch.int64 else n * 4 for _, n, dt in self._regions())

    def _regions(self) -> list[tuple[str, int, torch.dtype]]:
        qh = self.max_queries * self.num_heads
        return [
            ("header", _HEADER, torch.int64),
            ("positions", self.max_queries, torch.int64),
            ("q", qh * self.head_dim, torch.float32),
            ("out", qh * self.head_dim, torch.float32),
            ("lse", qh, torch.float32),
        ]


class _Views:
    """Typed tensor views over the shared segment (both sides build the same ones)."""

    def __init__(self, shm: SharedMemory, spec: ChannelSpec):
        offset, views = 0, {}
        for name, n, dtype in spec._regions():
            views[name] = torch.frombuffer(shm.buf, dtype=dtype, count=n, offset=offset)
            offset += n * (8 if dtype == torch.int64 else 4)
        m, h, d = spec.max_queries, spec.num_heads, spec.head_dim
        self.header = views["header"]
        self.positions = views["positions"]
        self.q = views["q"].view(m, h, d)
        self.out = views["out"].view(m, h, d)
        self.lse = views["lse"].view(m, h)


class _Endpoint:
    def __init__(self, shm: SharedMemory, spec: ChannelSpec, rx: Connection, tx: Connection):
        self._shm, self.spec, self._rx, self._tx = shm, spec, rx, tx
        self._v = _Views(shm, spec)

    def _wait(self, timeout: float | None, who: str) -> None:
        try:
            ready = self._rx.poll(timeout)
            if not ready:
                raise UserStalledError(f"{who} did not answer within {timeout:.3g} s")
            self._rx.recv_bytes()
        except (EOFError, OSError) as exc:
            raise UserCrashedError(f"{who} closed the channel (process exited?)") from exc

    def _signal(self, who: str) -> None:
        try:
            self._tx.send_bytes(_SIGNAL)
        except (BrokenPipeError, OSError) as exc:
            raise UserCrashedError(f"{who} closed the channel (process exited?)") from exc

    def close(self) -> None:
        self._v = None  # drop the tensor views first: the segment refuses to close while exported
        for conn in (self._rx, self._tx):
            conn.close()
        with contextlib.suppress(BufferError):
            self._shm.close()


class ServiceEnd(_Endpoint):
    """The service's side: send a layer's queries, later collect the partial attention."""

    def __init__(self, shm: SharedMemory, spec: ChannelSpec, rx: Connection, tx: Connection):
        super().__init__(shm, spec, rx, tx)
        self._pending: tuple[int, int, int] | None = None

    def send_query(self, msg: QueryMessage) -> None:
        n = int(msg.q.shape[0])
        if self._pending is not None:
            raise ProtocolError(f"query for layer {msg.layer} sent while layer {self._pending[1]} is unanswered")
        if n > self.spec.max_queries or tuple(msg.q.shape[1:]) != (self.spec.num_heads, self.spec.head_dim):
            raise ProtocolError(
                f"query of shape {tuple(msg.q.shape)} does not fit the channel "
                f"(max {self.spec.max_queries} x {self.spec.num_heads} x {self.spec.head_dim})"
            )
        v = self._v
        v.q[:n].copy_(msg.q)
        v.positions[:n].copy_(msg.positions)
        v.header.copy_(torch.tensor([msg.step, msg.layer, n, _STATUS_OK]))
        self._pending = (msg.step, msg.layer, n)
        self._signal("user process")

    def recv_partial(self, timeout: float | None) -> PartialAttention:
        if self._pending is None:
            raise ProtocolError("recv_partial without an outstanding query")
        step, layer, n = self._pending
        self._wait(timeout, "user process")
        self._pending = None
        got_step, got_layer = int(self._v.header[0]), int(self._v.header[1])
        if (got_step, got_layer) != (step, layer):
            raise ProtocolError(f"asked step {step} layer {layer}, got an answer for step {got_step} layer {got_layer}")
        # Copies: the next query reuses the segment while the caller may still hold the answer.
        return PartialAttention(step, layer, self._v.out[:n].clone(), self._v.lse[:n].clone())

    def unlink(self) -> None:
        """Free the segment (the service created it, so it removes it)."""
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()


class UserEnd(_Endpoint):
    """The user process's side: wait for a query, answer it in place."""

    @property
    def signal(self) -> Connection:
        """The connection that becomes readable when a query is ready (for ``connection.wait``)."""
        return self._rx

    def recv_query(self, timeout: float | None = None) -> QueryMessage:
        self._wait(timeout, "service")
        step, layer, n, _ = (int(x) for x in self._v.header)
        # Views, not copies: the service does not touch the segment until we answer.
        return QueryMessage(step, layer, self._v.positions[:n], self._v.q[:n])

    def send_partial(self, part: PartialAttention) -> None:
        n = int(part.out.shape[0])
        self._v.out[:n].copy_(part.out)
        self._v.lse[:n].copy_(part.lse)
        self._signal("service")


@dataclass
class UserEndArgs:
    """Everything the child needs to build its :class:`UserEnd` (passed as a spawn argument)."""

    spec: ChannelSpec
    rx: Connection
    tx: Connection

    def attach(self) -> UserEnd:
        return UserEnd(SharedMemory(name=self.spec.shm_name), self.spec, self.rx, self.tx)


def create_channel(max_queries: int, num_heads: int, head_dim: int) -> tuple[ServiceEnd, UserEndArgs]:
    """Create the segment and the two signal pipes; returns the service end and the child's args."""
    probe = ChannelSpec("", max_queries, num_heads, head_dim)
    shm = SharedMemory(name=f"petridish_{uuid.uuid4().hex[:16]}", create=True, size=probe.nbytes)
    spec = ChannelSpec(shm.name, max_queries, num_heads, head_dim)
    q_rx, q_tx = Pipe(duplex=False)  # service -> user: "query ready"
    a_rx, a_tx = Pipe(duplex=False)  # user -> service: "answer ready"
    return ServiceEnd(shm, spec, rx=a_rx, tx=q_tx), UserEndArgs(spec, rx=q_rx, tx=a_tx)
