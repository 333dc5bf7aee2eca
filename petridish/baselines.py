"""The two baselines of the paper's evaluation, on the same engine.

* :class:`NoProtection`: one process holds every prompt and batches everyone (``core.Engine``).
  The fastest possible and the reference SPD's overhead is measured against.
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

from core.config import EngineConfig
from core.engine import Engine
from core.sampling import SamplingParams
from petridish.model_spec import ModelSpec
from petridish.service_process import RequestMetrics, RequestResult


def _result(request_id: int, out, t0: float) -> RequestResult:
    m = out.metrics
    return RequestResult(
        request_id,
        [list(out.token_ids)],
        None,
        RequestMetrics(ttft_s=m.first_token_s - t0, tpot_s=m.tpot_s or 0.0, e2e_s=m.finish_s - t0),
    )


class NoProtection:
    """Plain batched serving: the provider's process sees every prompt."""

    def __init__(self, model, tokenizer, engine_config: EngineConfig | None = None):
        self.engine = Engine(model, tokenizer, engine_config or EngineConfig(num_pages=1024))

    def generate(self, prompts: Sequence[str], params: SamplingParams | None = None) -> list[RequestResult]:
        t0 = time.perf_counter()
        outs = self.engine.generate(list(prompts), params)
        return [_result(i, out, t0) for i, out in enumerate(outs)]


@dataclass(frozen=True)
class _Job:
    prompt: str
    params: SamplingParams


class FullIsolation:
    """One process and one full model per user; requests run concurrently, unbatched."""

    _ctx = mp.get_context("spawn")

    def __init__(self, spec: ModelSpec, num_users: int, num_threads: int = 1, engine_config: EngineConfig | None = None):
        self._conns: list[Connection] = []
        self._procs = []
        for _ in range(num_users):
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(
                target=_isolated_main, args=(spec, child, num_threads, engine_config), daemon=True
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:  # wait until every instance has loaded its weights
            conn.recv()

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


def _isolated_main(spec: ModelSpec, conn: Connection, num_threads: int, engine_config: EngineConfig | None) -> None:
    torch.set_num_threads(num_threads)
    model, tokenizer = spec.load()
    engine = Engine(model, tokenizer, engine_config or EngineConfig(num_pages=256))
    conn.send("ready")
    while True:
        try:
            job: _Job = conn.recv()
        except EOFError:
            return
        t0 = time.perf_counter()
        (out,) = engine.generate([job.prompt], job.params)
        m = out.metrics
        conn.send((list(out.token_ids), m.first_token_s - t0, m.tpot_s or 0.0))
