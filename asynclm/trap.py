"""The trap handler: what to do with a sequence's KV while it waits at ``[TRAP][END]``.

Three actions (the paper's policy map, Fig 7):

* ``KEEP``: leave the pages in the pool; costs memory for the whole wait;
* ``SWAP``: copy the pages to host memory and free them, copy back on wake; costs time linear in
  the context length (two copies);
* ``RECOMPUTE``: free the pages and re-prefill the context on wake; costs time quadratic in the
  context length (attention) on top of a linear term.

:class:`TrapCostModel` prices each action in seconds. Keeping is priced by the memory it holds:
``hold_cost_s_per_token_s`` is what one token of KV held for one second costs the rest of the batch
(zero on an idle machine, larger under memory pressure). :func:`measure_trap_costs` fits the swap and
recompute coefficients on the real engine, so the map is the measured machine's, not the paper's.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import torch

from core.kv_cache import KVPool
from core.sequence import KVSequence


class TrapAction(enum.Enum):
    KEEP = "keep"
    SWAP = "swap"
    RECOMPUTE = "recompute"


@dataclass(frozen=True)
class TrapCostModel:
    recompute_s: tuple[float, float, float] = (0.0, 1e-4, 1e-8)  # a + b L + c L^2
    swap_s: tuple[float, float] = (1e-4, 2e-6)  # a + b L (swap out + swap in)
    hold_cost_s_per_token_s: float = 1e-5

    def cost(self, action: TrapAction, context_len: int, expected_wait_s: float) -> float:
        L = float(context_len)
        if action is TrapAction.KEEP:
            return self.hold_cost_s_per_token_s * L * max(expected_wait_s, 0.0)
        if action is TrapAction.SWAP:
            return self.swap_s[0] + self.swap_s[1] * L
        a, b, c = self.recompute_s
        return a + b * L + c * L * L

    def choose(self, context_len: int, expected_wait_s: float) -> TrapAction:
        """The cheapest action; ties go to KEEP, then SWAP (the least disruptive)."""
        return min(TrapAction, key=lambda a: self.cost(a, context_len, expected_wait_s))

    def policy_map(self, lengths: list[int], waits_s: list[float]) -> list[list[TrapAction]]:
        """``grid[i][j]`` = best action at ``lengths[i]`` tokens and ``waits_s[j]`` seconds of wait."""
        return [[self.choose(L, w) for w in waits_s] for L in lengths]


@dataclass
class SwappedKV:
    """A sequence's KV parked in host memory by :func:`swap_out`."""

    data: dict[str, torch.Tensor]
    length: int


def swap_out(seq: KVSequence) -> SwappedKV:
    parked = SwappedKV(seq.pool.export_pages(seq.pages, seq.length), seq.length)
    seq.pool.release(seq.pages)
    seq.pages, seq.length = [], 0
    return parked


def swap_in(seq: KVSequence, parked: SwappedKV) -> None:
    """Bring parked KV back into freshly allocated pages (raises OutOfPagesError cleanly)."""
    pages = seq.pool.allocate(parked.data["k"].shape[1])
    seq.pool.import_pages(parked.data, pages)
    seq.pages, seq.length = pages, parked.length


def drop(seq: KVSequence) -> None:
    """Free the pages; the caller re-prefills the tokens on wake (RECOMPUTE)."""
    seq.pool.release(seq.pages)
    seq.pages, seq.length = [], 0


def measure_trap_costs(
    model, lengths: list[int], hold_cost_s_per_token_s: float, page_size: int = 16, repeats: int = 2
) -> tuple[TrapCostModel, list[dict]]:
    """Time prefill (recompute) and swap out+in at each length on ``model``; fit the cost model."""
    pool: KVPool = model.new_kv_pool(max(lengths) // page_size + 2, page_size)
    rows = []
    for L in lengths:
        tokens = torch.randint(3, min(model.config.vocab_size, 200), (L,))
        best_pre, best_swap = float("inf"), float("inf")
        for _ in range(repeats):
            seq = KVSequence(pool)
            t0 = time.perf_counter()
            model.forward(pool, [seq.entry(token_ids=tokens, logits_at=(-1,))])
            best_pre = min(best_pre, time.perf_counter() - t0)
            t0 = time.perf_counter()
            swap_in(seq, swap_out(seq))
            best_swap = min(best_swap, time.perf_counter() - t0)
            seq.release()
        rows.append({"context_len": L, "recompute_s": best_pre, "swap_s": best_swap})
    x = torch.tensor([float(r["context_len"]) for r in rows], dtype=torch.float64)
    pre = torch.tensor([r["recompute_s"] for r in rows], dtype=torch.float64)
    swp = torch.tensor([r["swap_s"] for r in rows], dtype=torch.float64)
    rec = _nonneg_lstsq(torch.stack([torch.ones_like(x), x, x * x], 1), pre)
    sw = _nonneg_lstsq(torch.stack([torch.ones_like(x), x], 1), swp)
    model_ = TrapCostModel(tuple(rec), tuple(sw), hold_cost_s_per_token_s)
    return model_, rows


def _nonneg_lstsq(A: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Least squares with coefficients clipped at 0 (a cost cannot fall with length)."""
    coef = torch.linalg.lstsq(A, y.unsqueeze(1)).solution.squeeze(1).clamp(min=0.0)
    return [float(c) for c in coef]
