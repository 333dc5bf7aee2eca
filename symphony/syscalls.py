"""The system calls: the only way a LIP reaches the model, the KV file system and the outside world.

A LIP is ``async def main(lip: LIP)``. ``lip`` is its process's syscall table:

========================  =========================================================================
model                     ``await predict(fd, tokens)`` -> :class:`Distribution` of the next token
                          (appends the tokens' KV to the file); ``await append(fd, tokens)`` (no
                          logits); ``await predict_at(fd, tokens, at)`` -> one per index;
                          ``sample(dist, ...)``; ``tokenize``/``detokenize``; ``vocab_size``
KVFS                      ``create``, ``open``, ``close``, ``read``, ``stat``, ``fork``,
                          ``truncate``, ``link``, ``unlink``, ``mkdir``, ``listdir``, ``chmod``
process                   ``await receive()`` / ``send(msg)`` (to and from the client),
                          ``await call_tool(fn, *args)`` (server-side tool code on a worker thread),
                          ``await gather(*calls)`` (several predicts or tools at once),
                          ``await sched_yield()``, ``pid``, ``user``, ``args``, ``home``
========================  =========================================================================

Calls that wait (predict, tools, receive) are awaitables: the process blocks and costs nothing
until the kernel resumes it. The others run at once. Unlike Pie's wasm API (pages, embeddings,
command queues), Symphony's unit is the *file*: a LIP names KV by path and descriptor, and the
kernel owns pages, positions and batching.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from core.sampling import SamplingParams, sample
from symphony.errors import BadFileDescriptor, InvalidSyscall
from symphony.kvfs import PRIVATE, READ, WRITE, FileStat, KVFile

if TYPE_CHECKING:
    from symphony.kernel import Symphony
    from symphony.process import Process


class Distribution:
    """A next-token distribution returned by ``predict``: logits over the vocabulary (fp32)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def logprobs(self) -> torch.Tensor:
        return torch.log_softmax(self.logits.float(), dim=-1)

    def argmax(self) -> int:
        return int(self.logits.argmax())

    def logprob(self, token_id: int) -> float:
        return float(self.logprobs()[token_id])

    def top_k(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` most likely tokens with their log-probabilities, most likely first."""
        lp = self.logprobs()
        vals, ids = lp.topk(min(k, lp.shape[-1]))
        return [(int(i), float(v)) for i, v in zip(ids, vals)]

    def restrict(self, allowed: Sequence[int] | torch.Tensor) -> Distribution:
        """The same distribution with every token outside ``allowed`` (ids or bool mask) removed."""
        allowed = torch.as_tensor(allowed)
        if allowed.dtype != torch.bool:
            mask = torch.zeros_like(self.logits, dtype=torch.bool)
            mask[allowed.long()] = True
            allowed = mask
        return Distribution(self.logits.masked_fill(~allowed.to(self.logits.device), float("-inf")))


# -- the calls that block: the process yields one of these to the kernel -----------------------------
@dataclass
class PredictCall:
    file: KVFile
    token_ids: list[int]
    positions: list[int] | None
    mask: torch.Tensor | None
    logits_at: list[int]  # indices into token_ids, already made non-negative
    single: bool  # return one Distribution instead of a list


@dataclass
class ToolCall:
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    timeout_s: float | None


@dataclass
class ReceiveCall:
    pass


@dataclass
class YieldCall:
    pass


@dataclass
class GatherCall:
    calls: list[PredictCall | ToolCall] = field(default_factory=list)


BlockingCall = PredictCall | ToolCall | ReceiveCall | YieldCall | GatherCall


class _Trap:
    """An awaitable that hands one blocking call to the kernel and returns its result."""

    def __init__(self, call: BlockingCall):
        self.call = call

    def __await__(self) -> Generator[BlockingCall, Any, Any]:
        return (yield self.call)


@dataclass
class OpenFile:
    file: KVFile
    path: str | None
    writable: bool


class LIP:
    """A running LIP's handle on its process: every method is a system call."""

    def __init__(self, kernel: Symphony, process: Process):
        self._kernel = kernel
        self._proc = process

    # -- identity ----------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def user(self) -> str:
        return self._proc.user

    @property
    def args(self) -> dict[str, Any]:
        return self._proc.args

    @property
    def home(self) -> str:
        with self._kernel.syscall(self._proc):
            return self._kernel.kvfs.home(self._proc.user)

    # -- model ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._kernel.model.config.vocab_size

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return tuple(self._kernel.tokenizer.eos_token_ids)

    @property
    def bos_token_id(self) -> int | None:
        return self._kernel.tokenizer.bos_token_id

    def vocab(self) -> list[str]:
        """The text of every token id decoded alone, special tokens as "" (for constrained decoding)."""
        with self._kernel.syscall(self._proc):
            return self._kernel.vocab_strings()

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        with self._kernel.syscall(self._proc):
            return self._kernel.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        with self._kernel.syscall(self._proc):
            return self._kernel.tokenizer.decode(list(token_ids))

    def predict(
        self,
        fd: int,
        token_ids: Sequence[int],
        positions: Sequence[int] | None = None,
        mask: torch.Tensor | None = None,
    ) -> _Trap:
        """Append ``token_ids`` to the file and return the distribution of the token after them."""
        return _Trap(self._predict_call(fd, token_ids, positions, mask, [-1], single=True))

    def predict_at(
        self,
        fd: int,
        token_ids: Sequence[int],
        at: Sequence[int],
        positions: Sequence[int] | None = None,
        mask: torch.Tensor | None = None,
    ) -> _Trap:
        """Append tokens; return the next-token distribution after each index in ``at``, in index order."""
        return _Trap(self._predict_call(fd, token_ids, positions, mask, list(at), single=False))

    def append(
        self,
        fd: int,
        token_ids: Sequence[int],
        positions: Sequence[int] | None = None,
        mask: torch.Tensor | None = None,
    ) -> _Trap:
        """Append tokens' KV to the file without asking for any distribution (a prefill)."""
        return _Trap(self._predict_call(fd, token_ids, positions, mask, [], single=False))

    def _predict_call(
        self,
        fd: int,
        token_ids: Sequence[int],
        positions: Sequence[int] | None,
        mask: torch.Tensor | None,
        logits_at: list[int],
        single: bool,
    ) -> PredictCall:
        with self._kernel.syscall(self._proc):
            of = self._fd(fd, write=True)
            ids = [int(t) for t in token_ids]
            if not ids:
                raise InvalidSyscall(f"predict on fd {fd}: no tokens given")
            cfg = self._kernel.model.config
            if min(ids) < 0 or max(ids) >= cfg.vocab_size:
                raise InvalidSyscall(f"predict on fd {fd}: token id out of range [0, {cfg.vocab_size})")
            pos = None if positions is None else [int(p) for p in positions]
            if pos is not None:
                if len(pos) != len(ids):
                    raise InvalidSyscall(f"predict on fd {fd}: {len(pos)} positions for {len(ids)} tokens")
                if min(pos) < 0 or max(pos) >= cfg.max_position_embeddings:
                    raise InvalidSyscall(
                        f"predict on fd {fd}: positions must lie in [0, {cfg.max_position_embeddings})"
                    )
            elif of.file.next_position() + len(ids) > cfg.max_position_embeddings:
                raise InvalidSyscall(
                    f"predict on fd {fd}: the file would pass the model's {cfg.max_position_embeddings} positions"
                )
            at = sorted(i + len(ids) if i < 0 else i for i in logits_at)
            if any(not 0 <= i < len(ids) for i in at):
                raise InvalidSyscall(f"predict on fd {fd}: logits index out of range for {len(ids)} tokens")
            if mask is not None:
                mask = torch.as_tensor(mask, dtype=torch.bool)
                want = (len(ids), of.file.length + len(ids))
                if tuple(mask.shape) != want:
                    raise InvalidSyscall(f"predict on fd {fd}: mask shape {tuple(mask.shape)} != {want}")
            self._proc.stats["predicted_tokens"] += len(ids)
            return PredictCall(of.file, ids, pos, mask, at, single)

    def sample(
        self,
        dist: Distribution,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        allowed: Sequence[int] | torch.Tensor | None = None,
    ) -> int:
        """Pick a token from ``dist`` (greedy at temperature 0), only among ``allowed`` if given."""
        with self._kernel.syscall(self._proc):
            if allowed is not None:
                dist = dist.restrict(allowed)
            params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
            return sample(dist.logits, params, self._proc.generator)

    # -- KVFS ------------------------------------------------------------------------------------
    def _fd(self, fd: int, write: bool = False) -> OpenFile:
        of = self._proc.fds.get(fd)
        if of is None:
            raise BadFileDescriptor(f"fd {fd} is not open in LIP {self.pid}")
        if write and not of.writable:
            raise BadFileDescriptor(f"fd {fd} ({of.path}) is open read-only in LIP {self.pid}")
        return of

    def create(self, path: str, mode: int = PRIVATE, exist_ok: bool = False) -> int:
        """Create an empty KV file and open it for reading and writing (with exist_ok: open it)."""
        with self._kernel.syscall(self._proc):
            kvfs = self._kernel.kvfs
            if exist_ok and kvfs.exists(self.user, path):
                return self._proc.install(kvfs.lookup(self.user, path, READ | WRITE), path, True)
            return self._proc.install(kvfs.create(self.user, path, mode), path, True)

    def open(self, path: str, mode: str = "r") -> int:
        """Open an existing file: ``"r"`` to read and fork it, ``"rw"`` to also predict into it."""
        if mode not in ("r", "rw"):
            raise InvalidSyscall(f"open({path!r}): mode must be 'r' or 'rw', got {mode!r}")
        with self._kernel.syscall(self._proc):
            need = READ | WRITE if mode == "rw" else READ
            return self._proc.install(self._kernel.kvfs.lookup(self.user, path, need), path, mode == "rw")

    def close(self, fd: int) -> None:
        with self._kernel.syscall(self._proc):
            self._fd(fd)
            self._proc.uninstall(fd)

    def fork(self, fd: int, path: str | None = None, mode: int = PRIVATE) -> int:
        """A new file with the same tokens sharing pages copy-on-write; named if ``path`` is given."""
        with self._kernel.syscall(self._proc):
            kvfs = self._kernel.kvfs
            if path is not None:
                kvfs._check_create(self.user, path)  # fail before doing any work
            child = kvfs.fork(self._fd(fd).file, self.user, mode)
            new_fd = self._proc.install(child, path, True)
            if path is not None:
                kvfs.link_file(self.user, child, path)
            return new_fd

    def read(self, fd: int) -> tuple[list[int], list[int]]:
        """The file's token ids and their positions."""
        with self._kernel.syscall(self._proc):
            f = self._fd(fd).file
            return list(f.token_ids), list(f.positions)

    def stat(self, fd: int) -> FileStat:
        with self._kernel.syscall(self._proc):
            of = self._fd(fd)
            return self._kernel.kvfs.stat(of.file, of.path)

    def truncate(self, fd: int, length: int) -> None:
        with self._kernel.syscall(self._proc):
            self._kernel.kvfs.truncate(self._fd(fd, write=True).file, length)

    def link(self, fd: int, path: str) -> None:
        """Give an open file (for example an anonymous fork) a name."""
        with self._kernel.syscall(self._proc):
            self._kernel.kvfs.link_file(self.user, self._fd(fd).file, path)

    def unlink(self, path: str) -> None:
        with self._kernel.syscall(self._proc):
            self._kernel.kvfs.unlink(self.user, path)

    def mkdir(self, path: str, mode: int = 0o700, exist_ok: bool = False) -> None:
        with self._kernel.syscall(self._proc):
            self._kernel.kvfs.mkdir(self.user, path, mode, exist_ok)

    def listdir(self, path: str) -> list[str]:
        with self._kernel.syscall(self._proc):
            return self._kernel.kvfs.listdir(self.user, path)

    def exists(self, path: str) -> bool:
        with self._kernel.syscall(self._proc):
            return self._kernel.kvfs.exists(self.user, path)

    def chmod(self, path: str, mode: int) -> None:
        with self._kernel.syscall(self._proc):
            self._kernel.kvfs.chmod(self.user, path, mode)

    # -- process ---------------------------------------------------------------------------------
    def send(self, message: Any) -> None:
        """Send a message to the client (streamed text, a final answer...)."""
        with self._kernel.syscall(self._proc):
            self._proc.outbox.append(message)

    def receive(self) -> _Trap:
        """Wait for the client's next message (blocked LIPs hold no compute, only their files)."""
        with self._kernel.syscall(self._proc):
            return _Trap(ReceiveCall())

    def call_tool(self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None, **kwargs: Any) -> _Trap:
        """Run tool code on a server worker thread (offloaded I/O): no client round trip."""
        with self._kernel.syscall(self._proc):
            if not callable(fn):
                raise InvalidSyscall(f"call_tool: {fn!r} is not callable")
            return _Trap(ToolCall(fn, args, kwargs, timeout_s))

    def gather(self, *traps: _Trap) -> _Trap:
        """Wait for several predicts / tool calls at once; the kernel batches the predicts together."""
        with self._kernel.syscall(self._proc):
            calls = []
            for t in traps:
                if not isinstance(t, _Trap) or not isinstance(t.call, PredictCall | ToolCall):
                    raise InvalidSyscall(f"gather takes predict/append/call_tool calls, got {t!r}")
                calls.append(t.call)
            return _Trap(GatherCall(calls))

    def sched_yield(self) -> _Trap:
        """Let other LIPs run before continuing."""
        with self._kernel.syscall(self._proc):
            return _Trap(YieldCall())
