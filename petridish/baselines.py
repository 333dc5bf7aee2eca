"""The two baselines of the paper's evaluation, on the same engine.

* :class:`NoProtection`: one process holds every prompt and batches everyone. The fastest
  possible, and the reference SPD's overhead is measured against (exactness tests compare SPD
  with ``core.engine.Engine`` as well).
* :class:`FullIsolation`: one full model instance per user, each in its own process, each serving
  only its user. Prompts are as isolated as with SPD, but nothing is batched across users and
  every user pays for a whole copy of the model's weights.

Both return :class:`petridish.service_process.RequestResult`, like :class:`petridish.Petridish`.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch

from core.sampling import SamplingParams, sample
from core.sequence import KVSequence
from petridish.model_spec import ModelSpec
from petridish.service_process import RequestMetrics, RequestResult


class NoProtection:
    """Plain batched serving: the provider's process holds every prompt and its KV.

    The decode loop is the service's (one batched ``Model.forward`` per step over every user,
    same sampling and stop rule) without the split, so SPD's overhead is measured against the same
    code; prompts are prefilled together in one forward pass, as the user processes do in parallel.
    """

    def __init__(self, model, tokenizer, page_size: int = 16, num_pages: int = 1024):
        self.model, self.tokenizer = model, tokenizer
        self.pool = model.new_kv_pool(num_pages, page_size)

    def generate(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[RequestResult]:
        params = params or SamplingParams()
        t0 = time.perf_counter()
        seqs = [KVSequence(self.pool) for _ in prompts]
        try:
            outs = self.model.forward(self.pool, [s.entry(token_ids=self.tokenizer.encode(p)) for s, p in zip(seqs, prompts)])
            gen = params.make_generator()
            rows = [[sample(o.logits[-1], params, gen)] for o in outs]
            t_first = time.perf_counter()
            stop = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.tokenizer.eos_token_ids))
            live = [i for i, r in enumerate(rows) if not _done(r, stop, params)]
            while live:
                outs = self.model.forward(self.pool, [seqs[i].entry(token_ids=[rows[i][-1]]) for i in live])
                for i, o in zip(live, outs):
                    rows[i].append(sample(o.logits[-1], params, gen))
                live = [i for i in live if not _done(rows[i], stop, params)]
        finally:
            for s in seqs:
                s.release()
        now = time.perf_counter()
        return [
            RequestResult(i, [row], None, RequestMetrics(t_first - t0, (now - t_first) / max(len(row) - 1, 1), now - t0))
            for i, row in enumerate(rows)
        ]


def _done(row: list[int], stop: set[int], params: SamplingParams) -> bool:
    return len(row) >= params.max_new_tokens or row[-1] in stop


class IsolatedInstanceError(RuntimeError):
    """A full-isolation instance died (typically while loading: one model copy per user needs RAM)."""


@dataclass(frozen=True)
class _Job:
    prompt: str
    params: SamplingParams


class FullIsolation:
    """One process and one full model per user; requests run concurrently, unbatched."""

    _ctx = mp.get_context("spawn")

    def __init__(self, spec: ModelSpec, num_users: int, num_threads: int = 1, num_pages: int = 256):
        self._conns: list[Connection] = []
        self._procs = []
        for _ in range(num_users):
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(
                target=_isolated_main, args=(spec, child, num_threads, num_pages), daemon=True
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for i, (conn, proc) in enumerate(zip(self._conns, self._procs)):  # wait until every instance loaded
            try:
                conn.recv()
            except EOFError:
                self.close()
                raise IsolatedInstanceError(
                    f"isolated instance {i} (pid {proc.pid}) exited while loading its model "
                    f"(exit code {proc.exitcode}; -9 usually means the OS ran out of memory)"
                ) from None

    def generate(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[RequestResult]:
        if len(prompts) > len(self._conns):
            raise ValueError(f"{len(prompts)} prompts for {len(self._conns)} isolated instances")
        params = params or SamplingParams()
        t0 = time.perf_counter()
        for conn, prompt in zip(self._conns, prompts):
            conn.send(_Job(prompt, params))
        results = []
        for i, conn in enumerate(self._conns[: len(prompts)]):
            token_ids, ttft_s, tpot_s = conn.recv()
            done = time.perf_counter()
            results.append(RequestResult(i, [token_ids], None, RequestMetrics(ttft_s, tpot_s, done - t0)))
        return results

    def memory_bytes(self) -> dict[str, int]:
        """Private memory of every instance (each holds its own weights and KV)."""
        from petridish.system import unique_bytes

        total = sum(unique_bytes(p.pid) for p in self._procs)
        return {"instances_bytes": total, "total_bytes": total}

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs):
            conn.close()  # the instance sees EOF and exits
            proc.join(5)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> FullIsolation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isolated_main(spec: ModelSpec, conn: Connection, num_threads: int, num_pages: int) -> None:
    torch.set_num_threads(num_threads)
    model, tokenizer = spec.load()
    server = NoProtection(model, tokenizer, num_pages=num_pages)  # serving its one user only
    conn.send("ready")
    while True:
        try:
            job: _Job = conn.recv()
        except EOFError:
            return
        (res,) = server.generate([job.prompt], job.params)
        conn.send((res.token_ids, res.metrics.ttft_s, res.metrics.tpot_s))
