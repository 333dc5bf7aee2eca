"""The serving engine: continuous batching with chunked prefill over the forward primitive.

Each :meth:`Engine.step` builds one forward batch: every running request contributes either its
next decode token or its next prefill chunk (at most ``prefill_chunk_size`` tokens), within a
budget of ``max_batch_tokens``. Requests join as soon as a batch slot is free (continuous
batching) and leave when they hit a stop condition. If the KV pool runs dry, the most recently
admitted request is preempted: its pages are freed and it is re-queued to recompute its prompt
and the tokens it had generated (vLLM's recompute preemption), so no other request is harmed.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from core.batch import ForwardEntry
from core.config import EngineConfig
from core.kv_cache import OutOfPagesError
from core.models import PagedCausalLM
from core.sampling import SamplingParams, sample
from core.sequence import KVSequence
from core.tokenizer import Tokenizer


class RequestStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class RequestTooLargeError(ValueError):
    """A request can never fit the KV pool or the model's context, even alone."""


@dataclass
class RequestMetrics:
    arrival_s: float
    first_token_s: float | None = None
    finish_s: float | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_preemptions: int = 0

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first."""
        if self.finish_s is None or self.first_token_s is None or self.num_output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.num_output_tokens - 1)

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s


@dataclass
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    metrics: RequestMetrics
    new_token_ids: list[int] = field(default_factory=list)


@dataclass
class _Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    metrics: RequestMetrics
    generator: torch.Generator | None
    seq: KVSequence | None = None
    output: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens of prompt+output whose KV is in the pool
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str | None = None
    text: str = ""

    @property
    def all_tokens(self) -> list[int]:
        return self.prompt + self.output


class Engine:
    def __init__(self, model: PagedCausalLM, tokenizer: Tokenizer, config: EngineConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or EngineConfig()
        self.model.attention_backend = self.config.attention_backend
        self.pool = model.new_kv_pool(self.config.num_pages, self.config.page_size)
        self._ids = itertools.count()
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._requests: dict[int, _Request] = {}

    # -- public API -------------------------------------------------------------------------
    def add_request(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> int:
        params = params or SamplingParams()
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise ValueError("empty prompt")
        self._check_fits(len(ids) + params.max_new_tokens)
        req = _Request(next(self._ids), ids, params, RequestMetrics(time.perf_counter(), num_prompt_tokens=len(ids)),
                       params.make_generator())
        self._requests[req.id] = req
        self._waiting.append(req)
        return req.id

    def has_unfinished(self) -> bool:
        return bool(self._waiting or self._running)

    def step(self) -> list[RequestOutput]:
        """Run one forward batch; return a delta for every request that produced a token."""
        self._admit()
        batch = self._schedule()
        if not batch:
            return []
        entries = [entry for _, entry, _ in batch]
        outputs = self.model.forward(self.pool, entries)
        now = time.perf_counter()
        deltas = []
        for (req, _, n), out in zip(batch, outputs):
            req.num_computed += n
            if out.logits is None:  # a prefill chunk that does not reach the end of the prompt
                continue
            token = sample(out.logits[-1], req.params, req.generator)
            deltas.append(self._append_token(req, token, now))
        self._running = [r for r in self._running if r.status is RequestStatus.RUNNING]
        return deltas

    def generate(
        self, prompts: str | Sequence[str] | Sequence[Sequence[int]], params: SamplingParams | None = None
    ) -> list[RequestOutput]:
        """Run every prompt to completion (batched together) and return outputs in prompt order."""
        single = isinstance(prompts, str) or (bool(prompts) and isinstance(prompts[0], int))
        prompt_list = [prompts] if single else list(prompts)
        ids = [self.add_request(p, params) for p in prompt_list]
        while any(self._requests[i].status is not RequestStatus.FINISHED for i in ids):
            self.step()
        return [self._output(self._requests.pop(i)) for i in ids]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield a delta per generated token of one request (other requests keep being served)."""
        rid = self.add_request(prompt, params)
        while True:
            for delta in self.step():
                if delta.request_id == rid:
                    yield delta
                    if delta.finished:
                        self._requests.pop(rid, None)
                        return

    def abort(self, request_id: int) -> None:
        req = self._requests.pop(request_id, None)
        if req is not None:
            self._finish(req, "abort", time.perf_counter())
            if req in self._waiting:
                self._waiting.remove(req)
            self._running = [r for r in self._running if r is not req]

    # -- scheduling ---------------------------------------------------------------------------
    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.config.max_batch_size:
            req = self._waiting[0]
            if self.pool.pages_for(len(req.all_tokens)) > self.pool.allocator.num_free and self._running:
                break  # wait for running requests to free pages
            self._waiting.popleft()
            req.seq, req.num_computed, req.status = KVSequence(self.pool), 0, RequestStatus.RUNNING
            self._running.append(req)

    def _schedule(self) -> list[tuple[_Request, ForwardEntry, int]]:
        """One entry per running request, oldest first, within the token budget."""
        batch, budget = [], self.config.max_batch_tokens
        for req in list(self._running):
            if req.status is not RequestStatus.RUNNING or budget <= 0:
                continue
            pending = req.all_tokens[req.num_computed :]
            n = min(len(pending), self.config.prefill_chunk_size, budget)
            entry = self._reserve_entry(req, pending[:n], last=n == len(pending))
            if entry is None:
                continue
            batch.append((req, entry, n))
            budget -= n
        return batch

    def _reserve_entry(self, req: _Request, tokens: list[int], last: bool) -> ForwardEntry | None:
        while True:
            try:
                positions = torch.arange(req.num_computed, req.num_computed + len(tokens))
                return req.seq.entry(positions=positions, token_ids=tokens, logits_at=(-1,) if last else None)
            except OutOfPagesError:
                victim = self._running[-1]
                self._preempt(victim)
                if victim is req:
                    return None

    def _preempt(self, req: _Request) -> None:
        """Free a request's pages and queue it to recompute later (its tokens are kept)."""
        req.seq.release()
        req.seq, req.num_computed, req.status = None, 0, RequestStatus.WAITING
        req.metrics.num_preemptions += 1
        self._running.remove(req)
        self._waiting.appendleft(req)
        if not self._running:
            raise OutOfPagesError(self.pool.pages_for(len(req.all_tokens)), self.pool.allocator.num_free,
                                  self.pool.num_pages)

    # -- tokens and stopping ----------------------------------------------------------------
    def _append_token(self, req: _Request, token: int, now: float) -> RequestOutput:
        req.output.append(token)
        req.metrics.num_output_tokens = len(req.output)
        if req.metrics.first_token_s is None:
            req.metrics.first_token_s = now
        new_text = self.tokenizer.decode(req.output)
        reason = self._stop_reason(req, token, new_text)
        if reason == "stop_string":
            new_text = _cut_at_stop(new_text, req.params.stop_strings)
        req.text = new_text
        if reason:
            self._finish(req, reason, now)
        return self._output(req, new_token_ids=[token])

    def _stop_reason(self, req: _Request, token: int, text: str) -> str | None:
        p = req.params
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.tokenizer.eos_token_ids):
            return "stop_token"
        if p.stop_strings and any(s in text for s in p.stop_strings):
            return "stop_string"
        if len(req.output) >= p.max_new_tokens:
            return "length"
        if len(req.all_tokens) >= self.model.config.max_position_embeddings:
            return "context_full"
        return None

    def _finish(self, req: _Request, reason: str, now: float) -> None:
        req.status, req.finish_reason, req.metrics.finish_s = RequestStatus.FINISHED, reason, now
        if req.seq is not None:
            req.seq.release()
            req.seq = None

    def _output(self, req: _Request, new_token_ids: list[int] | None = None) -> RequestOutput:
        return RequestOutput(
            req.id, req.prompt, list(req.output), req.text, req.status is RequestStatus.FINISHED,
            req.finish_reason, req.metrics, new_token_ids or [],
        )

    def _check_fits(self, num_tokens: int) -> None:
        limit = self.model.config.max_position_embeddings
        if num_tokens > limit:
            raise RequestTooLargeError(f"prompt + max_new_tokens = {num_tokens} exceeds the model's {limit} positions")
        pages = self.pool.pages_for(num_tokens)
        if pages > self.pool.num_pages:
            raise RequestTooLargeError(
                f"a request of {num_tokens} tokens needs {pages} KV pages but the pool has {self.pool.num_pages}"
            )


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=len(text))
    return text[:cut]
