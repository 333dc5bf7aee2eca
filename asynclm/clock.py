"""Time for the runtime and the executor: a virtual clock (default) or the wall clock.

With :class:`VirtualClock` the runtime advances time by the *measured* duration of every forward
pass and swap it runs, and function latencies come from a latency model; when every sequence waits,
time jumps to the next function completion. This keeps results repeatable on a shared, noisy CPU
while every generation cost in it is a real measurement on the real engine. :class:`WallClock`
runs everything in real time (functions really sleep) for demos and for checking the virtual one.
"""

from __future__ import annotations

import time


class VirtualClock:
    virtual = True

    def __init__(self) -> None:
        self._now = 0.0

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Account for work that took ``seconds`` of (measured) compute."""
        self._now += max(0.0, seconds)

    def jump_to(self, t: float) -> None:
        """Idle until ``t`` (nothing to compute until a function returns)."""
        self._now = max(self._now, t)


class WallClock:
    virtual = False

    def __init__(self) -> None:
        self._t0 = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def advance(self, seconds: float) -> None:
        """Real time already passed while the work ran."""

    def jump_to(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)


Clock = VirtualClock | WallClock


class StepCostModel:
    """Forward-pass time as a fitted function of the batch: ``a + b * new_tokens + c * new_tokens * context``.

    Fitted by :meth:`calibrate` from timed forward passes of the real model (decode steps at several
    context lengths, prefills of several sizes). On a shared, noisy CPU the runtime can charge this
    calibrated cost instead of each pass's raw measured time, so two systems that run the same
    tokens are charged the same time; on a quiet machine or a GPU use the raw measurements.
    """

    def __init__(self, a: float, b: float, c: float):
        self.a, self.b, self.c = a, b, c

    def __call__(self, entries) -> float:
        new = sum(e.num_new for e in entries)
        attn = sum(e.num_new * e.context_len for e in entries)
        return self.a + self.b * new + self.c * attn

    @classmethod
    def calibrate(cls, model, contexts: tuple[int, ...] = (32, 128, 384), prefills: tuple[int, ...] = (16, 64, 256),
                  repeats: int = 3) -> StepCostModel:
        import torch

        from core.sequence import KVSequence

        pool = model.new_kv_pool(max(*contexts, *prefills) // 16 + 4, 16)
        rows, times = [], []

        def timed(seq: KVSequence, n: int) -> None:
            best = float("inf")
            for _ in range(repeats):
                entry = seq.entry(token_ids=torch.full((n,), 5))
                t0 = time.perf_counter()
                model.forward(pool, [entry])
                best = min(best, time.perf_counter() - t0)  # min: the least disturbed run
                seq.truncate(seq.length - n)
            rows.append([1.0, n, n * (seq.length + n)])
            times.append(best)

        for ctx in contexts:  # decode steps after a context of ctx tokens
            seq = KVSequence(pool)
            model.forward(pool, [seq.entry(token_ids=torch.full((ctx,), 5))])
            timed(seq, 1)
            seq.release()
        for n in prefills:
            seq = KVSequence(pool)
            timed(seq, n)
            seq.release()
        A = torch.tensor(rows, dtype=torch.float64)
        y = torch.tensor(times, dtype=torch.float64).unsqueeze(1)
        a, b, c = (float(v) for v in torch.linalg.lstsq(A, y).solution.squeeze(1).clamp(min=0.0))
        return cls(a, b, c)

    def __repr__(self) -> str:
        return f"StepCostModel(a={self.a:.3g} s, b={self.b:.3g} s/token, c={self.c:.3g} s/token/context)"


class ReplayModel:
    """A stand-in for the model that only *prices* forward passes with a :class:`StepCostModel`.

    With the teacher-forced source the tokens never depend on the logits, so the timeline of a run
    under a calibrated clock is fully determined by the token counts and the fitted costs. Replaying
    it without the transformer costs milliseconds, which makes sensitivity sweeps (speedup against the
    ratio of function time to generation time) cheap. Never use it with a sampling source: its logits
    are zeros.
    """

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def new_kv_pool(self, num_pages: int, page_size: int = 16):
        from core.kv_cache import KVCacheSpec, KVPool

        return KVPool(KVCacheSpec(1, num_pages, page_size, 1, 1))  # bookkeeping only: 1 layer, 1 dim

    def forward(self, pool, entries):
        import torch

        from core.batch import ForwardOutput

        for e in entries:  # keep the pool's positions current, as the real forward does
            pool.positions.view(-1).index_copy_(0, e.write_slots, e.positions)
        return [ForwardOutput(logits=torch.zeros(1, self.vocab_size)) for _ in entries]
