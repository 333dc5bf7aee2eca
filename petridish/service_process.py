"""ServiceProcess: one model, shared by all users, batching every user's decoding.

Per decode step the service builds one :class:`ForwardEntry` per decoding row (one per user, or
gamma per user with Prompt Obfuscation) and runs a single batched ``Model.forward``. Its KV pool
holds only public KV: the generated tokens (and a public prefix, if the request has one). Each
entry carries an ``ExternalAttention`` (:class:`_RowAttention`) that is the service's half of
Secure Partitioned Decoding:

* ``begin(layer, q)`` is called by the model right after the layer's queries exist and *before*
  its K/V projection; once every row of a user has its query, one :class:`QueryMessage` goes to
  that user's process (send point ``"early"``, the paper's choice), so the user computes private
  attention while the service projects K/V and attends over public KV;
* ``end(layer)`` collects the :class:`PartialAttention`; the model merges it exactly by the
  log-sum-exp rule (``core.attention.merge_attention_states``).

Send point ``"late"`` defers sending to ``end`` (after local attention): no overlap; the experiment
uses it to measure what the overlap buys.

A user process that crashes or stalls fails only its own request: its rows get an empty partial
state for the rest of that forward pass (so the batch completes), their outputs are discarded,
the request ends with the error, and the process is killed if it stalled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from core.kv_cache import OutOfPagesError
from core.sampling import SamplingParams, sample
from core.sequence import KVSequence
from petridish.channel import ChannelError
from petridish.messages import PartialAttention, PrefillReply, QueryMessage
from petridish.user_process import UserProcess

SEND_POINTS = ("early", "late")


@dataclass(frozen=True)
class ServiceConfig:
    page_size: int = 16
    num_pages: int = 1024
    stall_timeout_s: float = 60.0  # a user process silent this long has stalled
    prefill_timeout_s: float = 600.0
    send_point: str = "early"
    record_messages: bool = False  # instrumentation for the leak test: keep every message received

    def __post_init__(self) -> None:
        if self.send_point not in SEND_POINTS:
            raise ValueError(f"send_point {self.send_point!r} is not one of {SEND_POINTS}")


@dataclass
class RequestMetrics:
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    e2e_s: float = 0.0
    send_s: float = 0.0  # time the service spent writing queries and signalling
    wait_s: float = 0.0  # time the service blocked waiting for partial attention


@dataclass
class RequestResult:
    """One request's outcome. ``rows`` holds each decoding row's tokens (one row without PO)."""

    request_id: int
    rows: list[list[int]]
    error: str | None = None
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    logits: list[list[torch.Tensor]] | None = None  # per row, per decode step (when kept)
    true_row: int = 0  # set by the client side only (Prompt Obfuscation); the service never knows it

    @property
    def token_ids(self) -> list[int]:
        """The user's answer: the true row's tokens."""
        return self.rows[self.true_row] if self.rows else []


class _VaultLink:
    """The service's side of one request's split attention: rows batched into one message per layer."""

    def __init__(self, user: UserProcess, num_rows: int, config: ServiceConfig, log: list | None):
        self.user, self.num_rows, self.config, self.log = user, num_rows, config, log
        self.step = 0
        self.positions = torch.zeros(num_rows, dtype=torch.long)
        self.error: str | None = None
        self.stalled = False
        self.send_s = self.wait_s = 0.0
        self._q: list[torch.Tensor | None] = [None] * num_rows
        self._sent = False
        self._answer: PartialAttention | None = None
        self.rows = [_RowAttention(self, r) for r in range(num_rows)]

    def begin(self, row: int, layer: int, q: torch.Tensor) -> None:
        if self.error:
            return
        self._q[row] = q
        self._answer, self._sent = None, False
        if self.config.send_point == "early" and all(x is not None for x in self._q):
            self._send(layer)

    def end(self, row: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.error and self._answer is None:
            if not self._sent:
                self._send(layer)
            self._receive()
        if self.error:  # an empty part: the merge ignores it, the row's output is discarded
            shape = (1, *self._shape())
            return torch.zeros(shape), torch.full(shape[:2], float("-inf"))
        if row == self.num_rows - 1:
            self._q = [None] * self.num_rows
        return self._answer.out[row : row + 1], self._answer.lse[row : row + 1]

    def _shape(self) -> tuple[int, int]:
        spec = self.user.channel.spec
        return spec.num_heads, spec.head_dim

    def _send(self, layer: int) -> None:
        t0 = time.perf_counter()
        q = torch.cat([x.float() for x in self._q])
        try:
            self.user.channel.send_query(QueryMessage(self.step, layer, self.positions, q))
            self._sent = True
        except ChannelError as exc:
            self._fail(exc)
        self.send_s += time.perf_counter() - t0

    def _receive(self) -> None:
        t0 = time.perf_counter()
        try:
            self._answer = self.user.channel.recv_partial(self.config.stall_timeout_s)
            if self.log is not None:
                self.log.append(self._answer)
        except ChannelError as exc:
            self._fail(exc)
        self.wait_s += time.perf_counter() - t0

    def _fail(self, exc: ChannelError) -> None:
        self.error = f"user process {self.user.pid}: {type(exc).__name__}: {exc}"
        self.stalled = "Stalled" in type(exc).__name__


class _RowAttention:
    """The ``ExternalAttention`` of one decoding row (see ``core.batch``)."""

    def __init__(self, link: _VaultLink, row: int):
        self.link, self.row = link, row

    def begin(self, layer: int, q: torch.Tensor) -> None:
        self.link.begin(self.row, layer, q)

    def end(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.link.end(self.row, layer)


@dataclass
class _Request:
    request_id: int
    user: UserProcess
    sampling: SamplingParams
    link: _VaultLink
    seqs: list[KVSequence]
    rows: list[list[int]]
    stop: set[int]
    generator: torch.Generator | None
    t_start: float
    t_first: float
    logits: list[list[torch.Tensor]] | None


class ServiceProcess:
    """Batches decoding for all admitted requests; holds only public KV."""

    def __init__(self, model, tokenizer, config: ServiceConfig | None = None, keep_logits: bool = False):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or ServiceConfig()
        self.pool = model.new_kv_pool(self.config.num_pages, self.config.page_size)
        self.keep_logits = keep_logits
        self.received: list | None = [] if self.config.record_messages else None
        self.fed_token_ids: list[int] = []  # every token id this process ran the model on (leak test)
        self._active: list[_Request] = []
        self._prefixes: dict[str, KVSequence] = {}

    @property
    def num_active(self) -> int:
        return len(self._active)

    def admit(self, user: UserProcess, request_id: int, sampling: SamplingParams, public_prefix: str = "",
              t_start: float | None = None) -> RequestResult | None:
        """Take over a request whose prompt the controller relayed to ``user``.

        Waits for the user process's prefill reply. Returns a finished result right away when the
        request ended at its first token (or failed); otherwise it joins the decoding batch.
        """
        t_start = time.perf_counter() if t_start is None else t_start
        try:
            reply = user.read_reply(self.config.prefill_timeout_s)
        except Exception as exc:
            user.kill()
            return RequestResult(request_id, [], error=f"prefill failed: {exc}")
        if self.received is not None:
            self.received.append(reply)
        t_first = time.perf_counter()
        rows = [[t] for t in reply.first_token_ids]
        stop = set(sampling.stop_token_ids)
        if not sampling.ignore_eos:
            stop |= set(self.tokenizer.eos_token_ids)
        req = _Request(
            request_id, user, sampling, _VaultLink(user, reply.num_rows, self.config, self.received),
            [], rows, stop, _generator(sampling), t_start, t_first,
            [[] for _ in rows] if self.keep_logits else None,
        )
        req.link.positions = torch.tensor(reply.next_positions, dtype=torch.long)
        try:
            req.seqs = [self._public_prefix(public_prefix, reply) for _ in rows]
        except Exception as exc:
            return self._finish(req, f"public prefix: {exc}")
        if self._done(req):
            return self._finish(req, None)
        self._active.append(req)
        return None

    def step(self) -> list[RequestResult]:
        """One batched decode step over every active request; returns the requests that ended."""
        if not self._active:
            return []
        entries, owners, finished = [], [], []
        for req in list(self._active):
            req.link.step += 1
            try:
                for r, seq in enumerate(req.seqs):
                    entries.append(seq.entry(
                        positions=req.link.positions[r : r + 1], token_ids=[req.rows[r][-1]],
                        external_attention=req.link.rows[r],
                    ))
                    owners.append((req, r))
            except OutOfPagesError as exc:
                entries, owners = _drop(entries, owners, req)
                self._active.remove(req)
                finished.append(self._finish(req, f"service KV pool: {exc}"))
        for e in entries:
            self.fed_token_ids.extend(e.token_ids.tolist())
        outs = self.model.forward(self.pool, entries) if entries else []
        by_req: dict[int, list[torch.Tensor]] = {}
        for (req, _), out in zip(owners, outs):
            by_req.setdefault(id(req), []).append(out.logits[-1])
        for req in list(self._active):
            if req.link.error:
                if req.link.stalled:
                    req.user.kill()
                self._active.remove(req)
                finished.append(self._finish(req, req.link.error))
                continue
            logits = torch.stack(by_req[id(req)])
            for r, tok in enumerate(sample(row, req.sampling, req.generator) for row in logits):
                req.rows[r].append(tok)
                if req.logits is not None:
                    req.logits[r].append(logits[r])
            req.link.positions += 1
            if self._done(req):
                self._active.remove(req)
                finished.append(self._finish(req, None))
        return finished

    def run(self) -> list[RequestResult]:
        results = []
        while self._active:
            results.extend(self.step())
        return results

    def _done(self, req: _Request) -> bool:
        """A request ends when every row has hit a stop token or the token budget."""
        return all(
            len(row) >= req.sampling.max_new_tokens or (row and row[-1] in req.stop) for row in req.rows
        )

    def _finish(self, req: _Request, error: str | None) -> RequestResult:
        now = time.perf_counter()
        for seq in req.seqs:
            seq.release()
        req.user.finish(req.request_id)
        rows = [_cut(row, req.stop, req.sampling.max_new_tokens) for row in req.rows]
        n = max((len(r) for r in rows), default=0)
        metrics = RequestMetrics(
            ttft_s=req.t_first - req.t_start,
            tpot_s=(now - req.t_first) / max(n - 1, 1),
            e2e_s=now - req.t_start,
            send_s=req.link.send_s,
            wait_s=req.link.wait_s,
        )
        return RequestResult(req.request_id, rows, error, metrics, req.logits)

    def _public_prefix(self, text: str, reply: PrefillReply) -> KVSequence:
        """A row's sequence, starting with the shared public-prefix KV (prefilled once per text)."""
        if not text:
            if reply.public_prefix_len:
                raise ValueError(f"user process reports a {reply.public_prefix_len}-token prefix, none was given")
            return KVSequence(self.pool)
        if text not in self._prefixes:
            ids = self.tokenizer.encode(text)
            seq = KVSequence(self.pool)
            self.model.forward(self.pool, [seq.entry(token_ids=ids, logits_at=None)])
            self.fed_token_ids.extend(ids)
            self._prefixes[text] = seq
        base = self._prefixes[text]
        if base.length != reply.public_prefix_len:
            raise ValueError(f"public prefix is {base.length} tokens here, {reply.public_prefix_len} in the user process")
        return base.fork()


def _generator(params: SamplingParams) -> torch.Generator | None:
    """The service's generator for tokens 2.. (the user process drew token 1 from its own)."""
    if params.seed is None:
        return None
    g = torch.Generator()
    g.manual_seed(params.seed + 1)
    return g


def _cut(row: list[int], stop: set[int], limit: int) -> list[int]:
    for i, t in enumerate(row):
        if t in stop:
            return row[: i + 1]
    return row[:limit]


def _drop(entries: list, owners: list, req: _Request) -> tuple[list, list]:
    keep = [i for i, (owner, _) in enumerate(owners) if owner is not req]
    return [entries[i] for i in keep], [owners[i] for i in keep]
