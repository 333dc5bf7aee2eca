"""Batch-level scheduling: every LIP's pending predict calls become one ``Model.forward`` batch.

The program-level scheduler (:mod:`symphony.kernel`) runs LIPs until each one blocks; their
predict calls wait here. :meth:`BatchScheduler.step` packs them, oldest first, into one batch of at
most ``max_batch_size`` entries and ``max_batch_tokens`` new tokens (a long predict is split into
chunks across steps, as chunked prefill does), runs the model once, appends the KV to each file,
and returns the finished calls with their distributions.

At most one chunk per file goes into a batch: the next chunk of the same file attends to this
one's KV, so it must wait for the forward that writes it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from core.kv_cache import OutOfPagesError
from symphony.errors import InvalidSyscall
from symphony.kvfs import KVFS
from symphony.syscalls import Distribution, PredictCall


@dataclass
class PredictRequest:
    call: PredictCall
    owner: int  # pid
    on_done: Callable[[PredictRequest], None]
    done: int = 0  # tokens already appended
    base_len: int = -1  # the file's length before the first chunk (mask columns are relative to it)
    positions: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def remaining(self) -> int:
        return len(self.call.token_ids) - self.done

    def result(self) -> Distribution | list[Distribution] | None:
        dists = [Distribution(x) for x in self.logits]
        return dists[0] if self.call.single else dists


@dataclass
class BatchStats:
    forwards: int = 0
    entries: int = 0
    tokens: int = 0
    forward_s: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    def mean_batch_size(self) -> float:
        return self.entries / self.forwards if self.forwards else 0.0


class BatchScheduler:
    def __init__(self, model, kvfs: KVFS, max_batch_size: int = 64, max_batch_tokens: int = 512):
        self.model, self.kvfs = model, kvfs
        self.max_batch_size, self.max_batch_tokens = max_batch_size, max_batch_tokens
        self.queue: deque[PredictRequest] = deque()
        self.stats = BatchStats()

    def submit(self, request: PredictRequest) -> None:
        self.queue.append(request)

    def has_work(self) -> bool:
        return bool(self.queue)

    def cancel(self, pid: int) -> int:
        """Drop a dead process's queued calls (none is ever mid-forward: forwards are synchronous)."""
        before = len(self.queue)
        self.queue = deque(r for r in self.queue if r.owner != pid)
        return before - len(self.queue)

    def step(self) -> list[PredictRequest]:
        """Run one forward over the packed batch; return the requests it finished (or failed)."""
        picked, entries, chunks = [], [], []
        files, tokens = set(), 0
        finished: list[PredictRequest] = []
        for req in list(self.queue):
            if len(entries) >= self.max_batch_size or tokens >= self.max_batch_tokens:
                break
            f = req.call.file
            if f.ino in files:
                continue
            n = min(req.remaining, self.max_batch_tokens - tokens)
            try:
                entry = self._entry(req, n)
            except InvalidSyscall as e:
                req.error = e
                self.queue.remove(req)
                finished.append(req)
                continue
            except OutOfPagesError as e:
                if entries:
                    continue  # the pool may have room once this batch's files go idle
                req.error = e  # nothing else can run: no progress possible for this call
                self.queue.remove(req)
                finished.append(req)
                continue
            picked.append(req)
            entries.append(entry)
            chunks.append(n)
            files.add(f.ino)
            tokens += n
        if not entries:
            return finished
        t0 = time.perf_counter()
        try:
            outputs = self.model.forward(self.kvfs.pool, entries)
        except Exception as e:  # a malformed entry fails the calls in this batch, not the server
            for req, n in zip(picked, chunks):
                self.kvfs.abort_append(req.call.file, n)
                req.error = e
                self.queue.remove(req)
                finished.append(req)
            return finished
        self.stats.forwards += 1
        self.stats.entries += len(entries)
        self.stats.tokens += tokens
        self.stats.batch_sizes.append(len(entries))
        self.stats.forward_s += time.perf_counter() - t0
        for req, n, out in zip(picked, chunks, outputs):
            s = req.done
            self.kvfs.commit_append(req.call.file, req.call.token_ids[s : s + n], req.positions[s : s + n])
            if out.logits is not None:
                req.logits.extend(out.logits.float().cpu().unbind(0))
            req.done += n
            if req.remaining == 0:
                self.queue.remove(req)
                finished.append(req)
        return finished

    def _entry(self, req: PredictRequest, n: int):
        call, f, s = req.call, req.call.file, req.done
        if req.base_len < 0:  # first chunk: fix the positions now that earlier appends have landed
            req.base_len = f.length
            start = f.next_position()
            req.positions = call.positions or list(range(start, start + len(call.token_ids)))
        at = [i - s for i in call.logits_at if s <= i < s + n]
        mask = None
        if call.mask is not None:
            if call.mask.shape[1] != req.base_len + len(call.token_ids):
                raise InvalidSyscall(
                    f"predict mask has {call.mask.shape[1]} columns but the file holds {req.base_len} tokens "
                    f"+ {len(call.token_ids)} new (another predict on the file landed first)"
                )
            mask = call.mask[s : s + n, : req.base_len + s + n]
        return self.kvfs.begin_append(
            f, call.token_ids[s : s + n], req.positions[s : s + n], mask=mask, logits_at=at or None
        )
