"""Attention over paged KV: the torch reference (CPU path, test oracle) and the backend switch.

Every attention call in the repository goes through :func:`paged_attention` and
:func:`merge_attention_states`; the ``backend`` argument picks the torch reference below or the
Triton kernels in :mod:`core.triton_attention` (``auto`` = Triton on CUDA, torch elsewhere).

Semantics, shared by both backends, for one sequence ``b`` with ``n`` new query tokens and a
context of ``L`` tokens laid out over ``block_tables[b]``:

* default: query ``i`` may attend to context tokens ``j <= L - n + i`` (causal, new tokens last);
* with ``masks[b]`` (n, L) bool: exactly the True entries;
* with ``sliding_window = W``: additionally ``q_pos - k_pos < W``, using token positions (the
  pool's per-slot positions), so windows stay correct when positions have gaps;
* GQA: query head ``h`` reads KV head ``h // (num_heads // num_kv_heads)``.

Outputs are ``o`` (T, H, D) and the log-sum-exp of the scaled scores ``lse`` (T, H) in fp32,
natural log. A query row with nothing to attend to gets ``o = 0`` and ``lse = -inf``, which the
merge treats as an empty part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch

BACKENDS = ("torch", "triton", "auto")


@dataclass
class AttentionMetadata:
    """The ragged batch as attention sees it (names follow vLLM)."""

    query_start: list[int]  # (B+1,) offsets of each sequence's queries in the flat (T, ...) batch
    block_tables: list[list[int]]  # per sequence: the pages of its context, in order
    context_lens: list[int]  # per sequence: valid tokens in its context
    masks: list[torch.Tensor | None]  # per sequence: (n_b, L_b) bool or None (causal)
    query_positions: torch.Tensor  # (T,) int64
    slot_mapping: torch.Tensor  # (T,) int64: where each new token's K/V is written
    # Tensors derived from the fields above, computed once per forward and reused by every layer.
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)

    @cached_property
    def is_decode(self) -> bool:
        """One query per sequence and no custom masks: the decode kernel's case."""
        return all(m is None for m in self.masks) and all(
            self.query_start[b + 1] - self.query_start[b] == 1 for b in range(self.num_seqs)
        )

    def padded_context_slots(self, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, max_len) slot ids of every context token, padded with slot 0, and the validity mask.

        Computed once per forward and shared by every layer's batched decode attention.
        """
        if "padded_context_slots" not in self.cache:
            width = max(max(self.context_lens, default=0), 1)
            slots = torch.zeros(self.num_seqs, width, dtype=torch.long)
            valid = torch.zeros(self.num_seqs, width, dtype=torch.bool)
            for b, (table, length) in enumerate(zip(self.block_tables, self.context_lens)):
                idx = torch.arange(length)
                pages = torch.as_tensor(table, dtype=torch.long)[idx // page_size]
                slots[b, :length] = pages * page_size + idx % page_size
                valid[b, :length] = True
            device = self.query_positions.device
            self.cache["padded_context_slots"] = (slots.to(device), valid.to(device))
        return self.cache["padded_context_slots"]

    @cached_property
    def block_table_tensor(self) -> torch.Tensor:
        """(B, max_pages) int32, padded with 0 (padding is never read: context_lens bound it)."""
        width = max((len(t) for t in self.block_tables), default=0)
        out = torch.zeros(self.num_seqs, max(width, 1), dtype=torch.int32)
        for b, t in enumerate(self.block_tables):
            if t:
                out[b, : len(t)] = torch.as_tensor(list(t), dtype=torch.int32)
        return out


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Scatter new K/V (T, KVH, D) into the paged caches at ``slot_mapping``."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def allowed_mask(
    n: int,
    context_len: int,
    mask: torch.Tensor | None,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    sliding_window: int | None,
) -> torch.Tensor:
    """The (n, L) boolean mask of which context tokens each query may attend to."""
    if mask is None:
        rows = torch.arange(n, device=q_pos.device).unsqueeze(1) + (context_len - n)
        allowed = torch.arange(context_len, device=q_pos.device).unsqueeze(0) <= rows
    else:
        allowed = mask.to(torch.bool)
    if sliding_window is not None:
        allowed = allowed & ((q_pos.unsqueeze(1) - k_pos.unsqueeze(0)) < sliding_window)
    return allowed


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense masked attention for one sequence. q (n,H,D); k,v (L,KVH,D); allowed (n,L)."""
    n, num_heads, _ = q.shape
    group = num_heads // k.shape[1]
    qf = q.float().view(n, k.shape[1], group, -1)  # (n, KVH, G, D)
    scores = torch.einsum("nkgd,lkd->kgnl", qf, k.float()) * scale  # (KVH, G, n, L)
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (KVH, G, n)
    probs = torch.exp(scores - lse.unsqueeze(-1).clamp_min(-1e30))
    probs = torch.nan_to_num(probs, nan=0.0)
    out = torch.einsum("kgnl,lkd->nkgd", probs, v.float()).reshape(n, num_heads, -1)
    return out.to(q.dtype), lse.permute(2, 0, 1).reshape(n, num_heads)


def paged_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_positions: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference paged attention over a ragged batch: dense attention per sequence, in query tiles
    that read only the keys their queries may see (:func:`_query_tiles`).

    With ``need_lse=False`` it calls torch's fused ``scaled_dot_product_attention`` (faster on the
    CPU) and returns ``lse`` unfilled; callers that merge states must ask for it.
    """
    page_size = k_cache.shape[1]
    if meta.is_decode and meta.num_seqs > 1:
        return _decode_batched(q, k_cache, v_cache, slot_positions, meta, scale, sliding_window)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device)
    kv_shape = k_cache.shape[2:]
    for b in range(meta.num_seqs):
        for s, e, slots, allowed in _query_tiles(meta, b, page_size, slot_positions, sliding_window):
            if slots.numel() == 0:  # nothing to attend to: the contract's empty result
                out[s:e], lse[s:e] = 0, float("-inf")
                continue
            k = k_cache.view(-1, *kv_shape).index_select(0, slots)
            v = v_cache.view(-1, *kv_shape).index_select(0, slots)
            if need_lse:
                out[s:e], lse[s:e] = attention_reference(q[s:e], k, v, allowed, scale)
            else:
                out[s:e] = _sdpa(q[s:e], k, v, allowed, scale)
    return out, lse


# Queries per tile of a long prefill: small enough that a tile of a sliding-window layer reads
# ~tile + window keys rather than the whole context, large enough that the matmuls stay efficient.
QUERY_TILE = 256


def _query_tiles(
    meta: AttentionMetadata, b: int, page_size: int, slot_positions: torch.Tensor, sliding_window: int | None
) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Sequence ``b``'s queries in tiles ``(start, end, slot ids, (tile, L') allowed mask)``.

    Each tile keeps only the context slots one of its queries may see. Dropping columns no query
    can see changes nothing in the result but saves their reads and arithmetic: with a sliding window
    (15 of Gemma 3's 18 layers) a tile reads ~tile + window keys instead of the whole context, causal
    tiles of a long prefill skip the keys after their last query, and composed prompts never read
    their hidden padding slots. Computed once per forward per window size and shared by every layer
    (positions and masks do not change between layers).
    """
    key = ("query_tiles", b, page_size, sliding_window)
    if key in meta.cache:
        return meta.cache[key]
    s, e = meta.query_start[b], meta.query_start[b + 1]
    length = meta.context_lens[b]
    device = meta.query_positions.device
    pages = torch.as_tensor(meta.block_tables[b], dtype=torch.long, device=device)
    if pages.numel() * page_size < length:
        raise ValueError(f"context_len {length} exceeds {pages.numel()} pages of {page_size}")
    idx = torch.arange(length, device=device)
    slots = pages[idx // page_size] * page_size + idx % page_size
    k_pos = slot_positions.view(-1).index_select(0, slots) if sliding_window else None
    allowed = allowed_mask(e - s, length, meta.masks[b], meta.query_positions[s:e], k_pos, sliding_window)
    tiles = []
    for start in range(0, e - s, QUERY_TILE):
        tile = allowed[start:start + QUERY_TILE]
        seen = tile.any(dim=0)
        tile_slots = slots
        if not bool(seen.all()):
            keep = seen.nonzero().squeeze(1)
            tile_slots, tile = slots.index_select(0, keep), tile.index_select(1, keep)
        tiles.append((s + start, s + start + tile.shape[0], tile_slots, tile))
    meta.cache[key] = tiles
    return tiles


def _decode_batched(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_positions: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode (one query per sequence) for the whole batch at once over contexts padded to the longest.

    One gather and two small matmuls per layer instead of a Python loop over sequences: on the CPU
    the loop's overhead, not the arithmetic, dominates a decode step at batch 8.
    """
    slots, allowed = meta.padded_context_slots(k_cache.shape[1])  # (B, L)
    num_seqs, num_heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    k = k_cache.view(-1, kv_heads, head_dim)[slots].float()  # (B, L, KVH, D)
    v = v_cache.view(-1, kv_heads, head_dim)[slots].float()
    if sliding_window is not None:
        k_pos = slot_positions.view(-1)[slots]
        allowed = allowed & ((meta.query_positions.unsqueeze(1) - k_pos) < sliding_window)
    qf = q.float().view(num_seqs, kv_heads, num_heads // kv_heads, head_dim)  # (B, KVH, G, D)
    scores = torch.einsum("bkgd,blkd->bkgl", qf, k) * scale
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # (B, KVH, G)
    probs = torch.nan_to_num(torch.exp(scores - lse.unsqueeze(-1).clamp_min(-1e30)), nan=0.0)
    out = torch.einsum("bkgl,blkd->bkgd", probs, v).reshape(num_seqs, num_heads, head_dim)
    return out.to(q.dtype), lse.reshape(num_seqs, num_heads)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float) -> torch.Tensor:
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=allowed, scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    ).transpose(0, 1)
    # A row that may attend to nothing comes back NaN; the contract says zeros.
    return torch.nan_to_num(out, nan=0.0)


def merge_attention_states_torch(
    outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention over the union of disjoint KV parts from each part's (out, lse).

    out = sum_i exp(lse_i - lse) * out_i with lse = logsumexp_i(lse_i). Parts with lse = -inf
    (nothing attended) contribute nothing.
    """
    lse_stack = torch.stack([x.float() for x in lses])  # (P, T, H)
    lse = torch.logsumexp(lse_stack, dim=0)
    weights = torch.exp(lse_stack - lse.clamp_min(-1e30).unsqueeze(0))
    weights = torch.nan_to_num(weights, nan=0.0)
    out = sum(w.unsqueeze(-1) * o.float() for w, o in zip(weights, outs))
    return out.to(outs[0].dtype), lse


def resolve_backend(backend: str, device: torch.device | str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "triton" if torch.device(device).type == "cuda" else "torch"
    return backend


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_positions: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    backend: str = "auto",
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the batch's queries over their paged contexts; returns (out, lse).

    ``need_lse=False`` lets the torch path skip computing lse (the Triton kernels always do).
    """
    if resolve_backend(backend, q.device) == "triton":
        from core import triton_attention

        return triton_attention.paged_attention(q, k_cache, v_cache, slot_positions, meta, scale, sliding_window)
    return paged_attention_torch(q, k_cache, v_cache, slot_positions, meta, scale, sliding_window, need_lse)


def merge_attention_states(
    outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor], backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    if resolve_backend(backend, outs[0].device) == "triton":
        from core import triton_attention

        return triton_attention.merge_attention_states(outs, lses)
    return merge_attention_states_torch(outs, lses)
