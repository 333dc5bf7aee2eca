"""Triton kernels for attention over paged KV: ragged prefill, split-KV decode, merging states.

These are the GPU path behind :func:`core.attention.paged_attention` (``backend="triton"``, or
``"auto"`` on CUDA). Their semantics are exactly the torch reference's in :mod:`core.attention`
(the oracle the tests compare against): causal in context order with the new tokens last, an
optional per-sequence ``(n, L)`` mask that replaces the causal rule, a sliding window by token
*position* (read from the pool's per-slot positions), GQA, and the log-sum-exp of the scaled
scores in fp32 natural log. A query row with nothing to attend to gets ``out = 0`` and
``lse = -inf``.

Map of this file:

* :func:`paged_attention` - the backend entry point; decode batches go to the decode kernel,
  everything else to the prefill kernel.
* :func:`paged_prefill` / ``_prefill_kernel`` - ragged batch, one program per (block of query
  tokens of one sequence, KV head); the block's rows are (token, query head of that KV head's
  group) pairs, so each K/V tile read from the pages serves every query head that shares it.
* :func:`paged_decode` / ``_decode_kernel`` - one query per sequence, split along the KV length
  (flash-decoding) so short batches of long contexts still fill the GPU; the splits' partial
  states are combined by the merge kernel.
* :func:`merge_attention_states` / ``_merge_kernel`` - exact attention over the union of
  disjoint KV parts from each part's (out, lse) (Petridish, Prompt Cache, and decode's splits).
* :func:`prefill_tiles` / :func:`decode_tiles` - tile sizes and launch options per head dim,
  GQA group and dtype (``bench/attention.py --sm90-resources`` shows what they compile to).

All kernels run the online softmax in base 2 (``exp2`` is one instruction; scores are
pre-multiplied by ``log2(e)``) and convert the log-sum-exp back to natural log on the way out.
Tensors derived from the :class:`~core.attention.AttentionMetadata` (block tables on the device,
packed masks, the prefill work list) are built once per forward and reused by every layer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from core.attention import AttentionMetadata

_LOG2E = 1.4426950408889634


class TritonAttentionError(ValueError):
    """The inputs to a Triton attention kernel are inconsistent (shapes, devices, metadata)."""


# --------------------------------------------------------------------------------------------
# Shared device functions
# --------------------------------------------------------------------------------------------


@triton.jit
def _attend_tile(q, k_ptrs, v_ptrs, load_mask, allowed, m_i, l_i, acc, sm_scale_log2, DOT_PRECISION: tl.constexpr):
    """Fold one tile of keys into the online softmax: scores ``q @ k^T`` (M, N) where ``allowed``,
    then the running max ``m_i`` (log2 units), normaliser ``l_i`` and unnormalised output ``acc``.
    K/V rows outside ``load_mask`` are not read (they cost no bandwidth)."""
    k = tl.load(k_ptrs, mask=load_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * sm_scale_log2
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # A row that has seen nothing allowed yet keeps m = -inf; exp2(-inf - -inf) would be NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_ptrs, mask=load_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _finish(m_i, l_i, acc):
    """Normalise; rows that attended to nothing get out = 0 and lse = -inf (natural log)."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    return out, lse


# --------------------------------------------------------------------------------------------
# Kernel 1: paged prefill over a ragged batch
# --------------------------------------------------------------------------------------------


@triton.jit
def _prefill_tile_mask(
    start, seq, ctx_len, kv_end, tok, limit, row_ok, masked_rows, mask_off, q_pos, sliding_window,
    block_table_ptr, pos_ptr, mask_ptr, stride_bt, stride_pp,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, SLIDING: tl.constexpr,
):  # fmt: skip
    """Which of the keys ``start .. start + BLOCK_N`` each query row may attend to (BLOCK_M, BLOCK_N),
    with the keys' pages and in-page offsets: the causal limit ``j <= L - n + i`` (or the row of
    the custom mask), then the sliding window on positions."""
    j = start + tl.arange(0, BLOCK_N)
    j_ok = j < kv_end
    page = tl.load(block_table_ptr + seq * stride_bt + j // PAGE_SIZE, mask=j_ok, other=0).to(tl.int64)
    offset = j % PAGE_SIZE
    allowed = row_ok[:, None] & j_ok[None, :] & (j[None, :] <= limit[:, None])
    if HAS_MASK:
        in_mask = (masked_rows & row_ok)[:, None] & j_ok[None, :]
        custom = tl.load(mask_ptr + mask_off + tok[:, None] * ctx_len + j[None, :], mask=in_mask, other=0)
        allowed = tl.where(masked_rows[:, None], in_mask & (custom != 0), allowed)
    if SLIDING:
        k_pos = tl.load(pos_ptr + page * stride_pp + offset, mask=j_ok, other=0).to(tl.int32)
        allowed = allowed & ((q_pos[:, None] - k_pos[None, :]) < sliding_window)
    return allowed, page, offset, j_ok


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, out_ptr, lse_ptr,
    work_seq_ptr, work_first_ptr, query_start_ptr, context_len_ptr, block_table_ptr, q_pos_ptr,
    mask_ptr, mask_off_ptr,
    sm_scale_log2, sliding_window,
    stride_qt, stride_qh, stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh,
    stride_ot, stride_oh, stride_lt, stride_lh, stride_bt, stride_pp,
    HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_MASK: tl.constexpr, SLIDING: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Flash attention of BLOCK_M // GROUP_PAD query tokens of one sequence (all GROUP query heads
    of one KV head) over that sequence's pages.

    Algorithm: the host lists (sequence, first query token) work items. A program loads its query
    rows once, then walks the context in tiles of BLOCK_N tokens: it looks each token's page up in
    the block table, builds the allowed mask (causal limit ``j <= L - n + i``, or the custom mask
    row; then the sliding window on positions), reads only the K/V rows some query may attend to,
    and folds the tile in with the online softmax. A causal block stops at its last query's limit;
    with a window or mask, a first pass over positions (and mask rows) narrows the loop to the span
    of tiles some row attends to.
    """
    work = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(work_seq_ptr + work)
    first = tl.load(work_first_ptr + work)
    q_begin = tl.load(query_start_ptr + seq)
    n = tl.load(query_start_ptr + seq + 1) - q_begin
    ctx_len = tl.load(context_len_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    tok = first + rows // GROUP_PAD  # query index within the sequence
    head = kv_head * GROUP + rows % GROUP_PAD
    row_ok = (tok < n) & (rows % GROUP_PAD < GROUP)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q_rows = (q_begin + tok).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    limit = ctx_len - n + tok  # causal: query i sees context tokens j <= L - n + i
    kv_end = tl.maximum(tl.minimum(ctx_len, ctx_len - n + first + BLOCK_M // GROUP_PAD), 0)
    mask_off = -1  # -1: this sequence is causal
    masked_rows = row_ok & False
    q_pos = 0
    if HAS_MASK:
        mask_off = tl.load(mask_off_ptr + seq)
        kv_end = tl.where(mask_off >= 0, ctx_len, kv_end)
        # Per row rather than a scalar: the interpreter mis-types scalar & block masks.
        masked_rows = (tl.zeros([BLOCK_M], tl.int64) + mask_off) >= 0
    if SLIDING:
        # Positions are < 2**31 (a model's context); int32 halves the registers of the window test.
        q_pos = tl.load(q_pos_ptr + q_rows, mask=row_ok, other=0).to(tl.int32)

    if HAS_MASK or SLIDING:
        # Pass 1 reads only positions (and mask rows) to find the span of tiles some row attends
        # to, so pass 2 spends K/V reads and dots on O(window) keys per query, not O(context), and
        # stays a branch-free loop the compiler can software-pipeline. Positions need not be
        # monotone: then the span is just wider.
        kv_lo = kv_end
        kv_hi = kv_end * 0
        for start in range(0, kv_end, BLOCK_N):
            allowed, page, offset, j_ok = _prefill_tile_mask(
                start, seq, ctx_len, kv_end, tok, limit, row_ok, masked_rows, mask_off, q_pos, sliding_window,
                block_table_ptr, pos_ptr, mask_ptr, stride_bt, stride_pp, PAGE_SIZE, BLOCK_N, HAS_MASK, SLIDING,
            )  # fmt: skip
            hit = tl.max(tl.max(allowed.to(tl.int32), axis=1), axis=0) > 0
            kv_lo = tl.minimum(kv_lo, tl.where(hit, start, kv_end))
            kv_hi = tl.maximum(kv_hi, tl.where(hit, start + BLOCK_N, 0))
    else:
        kv_lo = kv_end * 0
        kv_hi = kv_end

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(kv_lo, kv_hi, BLOCK_N):
        allowed, page, offset, j_ok = _prefill_tile_mask(
            start, seq, ctx_len, kv_end, tok, limit, row_ok, masked_rows, mask_off, q_pos, sliding_window,
            block_table_ptr, pos_ptr, mask_ptr, stride_bt, stride_pp, PAGE_SIZE, BLOCK_N, HAS_MASK, SLIDING,
        )  # fmt: skip
        if HAS_MASK or SLIDING:
            key_ok = tl.max(allowed.to(tl.int32), axis=0) > 0  # K/V rows no query attends to are not read
        else:
            key_ok = j_ok  # causal: every key before kv_end is attended by some row
        k_ptrs = k_ptr + (page * stride_kp + offset * stride_ks + kv_head * stride_kh)[:, None] + d[None, :]
        v_ptrs = v_ptr + (page * stride_vp + offset * stride_vs + kv_head * stride_vh)[:, None] + d[None, :]
        m_i, l_i, acc = _attend_tile(q, k_ptrs, v_ptrs, key_ok[:, None] & d_ok[None, :], allowed,
                                     m_i, l_i, acc, sm_scale_log2, DOT_PRECISION)  # fmt: skip

    out, lse = _finish(m_i, l_i, acc)
    tl.store(
        out_ptr + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    tl.store(lse_ptr + q_rows * stride_lt + head * stride_lh, lse, mask=row_ok)


# --------------------------------------------------------------------------------------------
# Kernel 2: paged decode, split along the KV length (flash-decoding)
# --------------------------------------------------------------------------------------------


@triton.jit
def _decode_tile_keys(
    start, seq, kv_end, q_pos, sliding_window, block_table_ptr, pos_ptr, stride_bt, stride_pp,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SLIDING: tl.constexpr,
):  # fmt: skip
    """Keys ``start .. start + BLOCK_N`` the single query may attend to, with their pages and
    offsets: all of the context (the query is its last token), within the window if any."""
    j = start + tl.arange(0, BLOCK_N)
    key_ok = j < kv_end
    page = tl.load(block_table_ptr + seq * stride_bt + j // PAGE_SIZE, mask=key_ok, other=0).to(tl.int64)
    offset = j % PAGE_SIZE
    if SLIDING:
        k_pos = tl.load(pos_ptr + page * stride_pp + offset, mask=key_ok, other=0)
        key_ok = key_ok & ((q_pos - k_pos) < sliding_window)
    return key_ok, page, offset


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, out_ptr, lse_ptr,
    context_len_ptr, block_table_ptr, q_pos_ptr,
    sm_scale_log2, sliding_window, tokens_per_split,
    stride_qt, stride_qh, stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh,
    stride_os, stride_ot, stride_oh, stride_ls, stride_lt, stride_lh, stride_bt, stride_pp,
    HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SLIDING: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Attention of one sequence's single query (all GROUP heads of one KV head) over one split
    ``[split * tokens_per_split, (split + 1) * tokens_per_split)`` of its context.

    Algorithm: decode reads the whole KV once and does two flops per byte, so it is bound by
    memory bandwidth; with few sequences, one program per (sequence, KV head) would leave most SMs
    idle. The host therefore splits each context into chunks, each program streams its chunk's
    pages with the online softmax and writes a partial (out, lse) to ``out[split]``; the merge
    kernel then combines the splits exactly. The GQA group's heads are the rows of one tile (padded
    to the 16 rows a tensor-core dot needs), so each K/V row is read once for the whole group.
    """
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx_len = tl.load(context_len_ptr + seq)
    kv_begin = split * tokens_per_split
    kv_end = tl.minimum(ctx_len, kv_begin + tokens_per_split)

    rows = tl.arange(0, GROUP_PAD)
    head = kv_head * GROUP + rows
    row_ok = rows < GROUP
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = tl.load(
        q_ptr + seq.to(tl.int64) * stride_qt + head[:, None] * stride_qh + d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    q_pos = 0
    if SLIDING:
        q_pos = tl.load(q_pos_ptr + seq)

    span_lo = kv_begin
    span_hi = kv_end
    if SLIDING:
        # Pass 1 reads only positions to find the span of this split's tiles inside the window, so
        # pass 2 stays a branch-free (software-pipelined) loop over O(window) keys.
        span_lo = kv_end
        span_hi = kv_begin
        for start in range(kv_begin, kv_end, BLOCK_N):
            key_ok, page, offset = _decode_tile_keys(start, seq, kv_end, q_pos, sliding_window, block_table_ptr,
                                                     pos_ptr, stride_bt, stride_pp, PAGE_SIZE, BLOCK_N, SLIDING)  # fmt: skip
            hit = tl.max(key_ok.to(tl.int32), axis=0) > 0
            span_lo = tl.minimum(span_lo, tl.where(hit, start, kv_end))
            span_hi = tl.maximum(span_hi, tl.where(hit, start + BLOCK_N, kv_begin))

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
    for start in range(span_lo, span_hi, BLOCK_N):
        key_ok, page, offset = _decode_tile_keys(start, seq, kv_end, q_pos, sliding_window, block_table_ptr,
                                                 pos_ptr, stride_bt, stride_pp, PAGE_SIZE, BLOCK_N, SLIDING)  # fmt: skip
        k_ptrs = k_ptr + (page * stride_kp + offset * stride_ks + kv_head * stride_kh)[:, None] + d[None, :]
        v_ptrs = v_ptr + (page * stride_vp + offset * stride_vs + kv_head * stride_vh)[:, None] + d[None, :]
        m_i, l_i, acc = _attend_tile(q, k_ptrs, v_ptrs, key_ok[:, None] & d_ok[None, :],
                                     row_ok[:, None] & key_ok[None, :], m_i, l_i, acc, sm_scale_log2,
                                     DOT_PRECISION)  # fmt: skip

    out, lse = _finish(m_i, l_i, acc)
    base_o = split.to(tl.int64) * stride_os + seq.to(tl.int64) * stride_ot
    tl.store(
        out_ptr + base_o + head[:, None] * stride_oh + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    base_l = split.to(tl.int64) * stride_ls + seq.to(tl.int64) * stride_lt
    tl.store(lse_ptr + base_l + head * stride_lh, lse, mask=row_ok)


# --------------------------------------------------------------------------------------------
# Kernel 3: merging partial attention states
# --------------------------------------------------------------------------------------------


@triton.jit
def _merge_kernel(
    parts_out_ptr, parts_lse_ptr, out_ptr, lse_ptr, num_parts, num_heads,
    stride_pp, stride_pt, stride_ph, stride_lp, stride_lt, stride_lh,
    stride_ot, stride_oh, stride_mt, stride_mh,
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Exact attention over the union of disjoint KV parts, for BLOCK_H heads of one token.

    Algorithm: with part ``p``'s normalised output ``o_p`` and log-sum-exp ``lse_p``, the full
    attention is ``o = sum_p exp(lse_p - lse) o_p`` with ``lse = logsumexp_p lse_p``. The program
    streams the parts with a running maximum (the online softmax over parts), so it reads each
    part once; empty parts (``lse_p = -inf``) get weight 0.
    """
    token = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = h < num_heads
    d = tl.arange(0, BLOCK_D)
    io_mask = h_ok[:, None] & (d < HEAD_DIM)[None, :]

    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    lse_ptrs = parts_lse_ptr + token * stride_lt + h * stride_lh
    out_ptrs = parts_out_ptr + token * stride_pt + h[:, None] * stride_ph + d[None, :]
    for _ in range(num_parts):
        lse_p = tl.load(lse_ptrs, mask=h_ok, other=float("-inf")).to(tl.float32)
        o_p = tl.load(out_ptrs, mask=io_mask, other=0.0).to(tl.float32)
        lse_ptrs += stride_lp  # advancing 64-bit pointers: part * stride never overflows int32
        out_ptrs += stride_pp
        m_new = tl.maximum(m, lse_p)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        w = tl.exp(lse_p - m_safe)
        acc = acc * alpha[:, None] + w[:, None] * o_p
        l_sum = l_sum * alpha + w
        m = m_new

    empty = l_sum == 0.0
    l_safe = tl.where(empty, 1.0, l_sum)
    tl.store(out_ptr + token * stride_ot + h[:, None] * stride_oh + d[None, :],
             (acc / l_safe[:, None]).to(out_ptr.dtype.element_ty), mask=io_mask)  # fmt: skip
    tl.store(lse_ptr + token * stride_mt + h * stride_mh, tl.where(empty, float("-inf"), m + tl.log(l_safe)),
             mask=h_ok)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Host side: metadata on the device, tile sizes, launches
# --------------------------------------------------------------------------------------------


@dataclass
class _DeviceMeta:
    """The metadata tensors the kernels read, built once per forward and shared by every layer."""

    query_start: torch.Tensor  # (B+1,) int32
    context_lens: torch.Tensor  # (B,) int32
    block_table: torch.Tensor  # (B, max_pages) int32
    query_positions: torch.Tensor  # (T,) int64
    mask_flat: torch.Tensor | None  # all custom masks, row-major, concatenated; uint8
    mask_offsets: torch.Tensor | None  # (B,) int64 start of each sequence's mask in mask_flat, -1 = causal
    max_context_len: int
    work_lists: dict[int, tuple[torch.Tensor, torch.Tensor]]  # block_q -> (sequence, first token) per program


def _empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer the kernels write is allocated here (tests poison them through this hook)."""
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _to_device(values: Sequence[int] | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host metadata to ``device`` without a blocking copy: pinned staging, then an async upload
    (the stream orders it before the kernels that read it)."""
    host = torch.as_tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _device_meta(meta: AttentionMetadata, device: torch.device, num_pages: int, page_size: int) -> _DeviceMeta:
    """Validate the metadata once and move it to ``device``; cached on ``meta`` for later layers."""
    cache = meta.cache.setdefault("triton_device_meta", {})
    key = (str(device), num_pages, page_size)
    if key in cache:
        return cache[key]
    num_seqs = meta.num_seqs
    if len(meta.query_start) != num_seqs + 1 or len(meta.block_tables) != num_seqs or len(meta.masks) != num_seqs:
        raise TritonAttentionError(
            f"AttentionMetadata lists disagree: {num_seqs} context_lens, {len(meta.query_start)} query_start "
            f"(want {num_seqs + 1}), {len(meta.block_tables)} block_tables, {len(meta.masks)} masks"
        )
    masks: list[torch.Tensor] = []
    offsets: list[int] = []
    used = 0
    for b, (table, length, mask) in enumerate(zip(meta.block_tables, meta.context_lens, meta.masks)):
        if length > len(table) * page_size:
            raise TritonAttentionError(
                f"sequence {b}: context_len {length} exceeds its {len(table)} pages of {page_size} tokens"
            )
        if table and not 0 <= min(table) <= max(table) < num_pages:
            raise TritonAttentionError(f"sequence {b}: page ids {min(table)}..{max(table)} outside 0..{num_pages - 1}")
        n = meta.query_start[b + 1] - meta.query_start[b]
        if mask is None:
            offsets.append(-1)
            continue
        if tuple(mask.shape) != (n, length):
            raise TritonAttentionError(f"sequence {b}: mask shape {tuple(mask.shape)}, expected ({n}, {length})")
        offsets.append(used)
        used += mask.numel()
        masks.append(mask.reshape(-1))
    has_mask = bool(masks)
    dm = _DeviceMeta(
        query_start=_to_device(meta.query_start, torch.int32, device),
        context_lens=_to_device(meta.context_lens, torch.int32, device),
        block_table=_to_device(meta.block_table_tensor, torch.int32, device),
        query_positions=meta.query_positions.to(device=device, dtype=torch.int64),
        mask_flat=torch.cat([m.to(device=device, dtype=torch.uint8) for m in masks]) if has_mask else None,
        mask_offsets=_to_device(offsets, torch.int64, device) if has_mask else None,
        max_context_len=max(meta.context_lens, default=0),
        work_lists={},
    )
    cache[key] = dm
    return dm


def _work_list(meta: AttentionMetadata, dm: _DeviceMeta, block_q: int, device: torch.device):
    """(sequence, first query token) of each prefill program: ragged sequences, no padding work."""
    if block_q not in dm.work_lists:
        items = [
            (b, first)
            for b in range(meta.num_seqs)
            for first in range(0, meta.query_start[b + 1] - meta.query_start[b], block_q)
        ]
        # Longest programs first (a causal block's work grows with its last query's context
        # index), so the short ones fill the tail of the grid instead of a long one running alone.
        n = [meta.query_start[b + 1] - meta.query_start[b] for b in range(meta.num_seqs)]
        items.sort(key=lambda it: -(meta.context_lens[it[0]] - n[it[0]] + it[1]))
        seqs = [b for b, _ in items]
        firsts = [first for _, first in items]
        dm.work_lists[block_q] = (
            _to_device(seqs, torch.int32, device),
            _to_device(firsts, torch.int32, device),
        )
    return dm.work_lists[block_q]


def _check_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_positions: torch.Tensor,
                  meta: AttentionMetadata) -> tuple[int, int, int]:  # fmt: skip
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise TritonAttentionError(
            f"expected q (T, H, D) and k/v caches (pages, page_size, KVH, D) of one shape; got q "
            f"{tuple(q.shape)}, k {tuple(k_cache.shape)}, v {tuple(v_cache.shape)}"
        )
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim or num_heads % num_kv_heads:
        raise TritonAttentionError(
            f"q has {num_heads} heads of dim {head_dim}, caches {num_kv_heads} KV heads of dim {k_cache.shape[3]}: "
            f"head dims must match and heads be a multiple of KV heads"
        )
    if not (q.device == k_cache.device == v_cache.device == slot_positions.device):
        raise TritonAttentionError(
            f"q on {q.device}, k_cache on {k_cache.device}, v_cache on {v_cache.device}, positions on "
            f"{slot_positions.device}: all must share one device"
        )
    if q.device.type != "cuda" and not _interpreting():
        raise TritonAttentionError(
            f"the Triton attention backend got tensors on {q.device}: it runs on CUDA (or on the CPU under "
            f"TRITON_INTERPRET=1, for tests); use attention backend 'torch' or 'auto' here"
        )
    if q.shape[0] != meta.query_start[-1]:
        raise TritonAttentionError(f"q has {q.shape[0]} tokens but query_start ends at {meta.query_start[-1]}")
    if q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or slot_positions.stride(-1) != 1:
        raise TritonAttentionError("q, k_cache, v_cache and slot_positions must be contiguous in their last dim")
    return num_heads, num_kv_heads, head_dim


def _interpreting() -> bool:
    """Whether these kernels were defined under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_prefill_kernel, InterpretedFunction)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 operands would otherwise run as TF32 on tensor cores (~1e-3 relative error) while the
    # reference is exact fp32; "tf32" is the default and has no effect on bf16/fp16 operands.
    return "ieee" if dtype == torch.float32 else "tf32"


def _is_gpu(device: torch.device) -> bool:
    return device.type == "cuda"


@dataclass(frozen=True)
class Tiles:
    """A kernel's compile-time shape (``constexprs``, without PAGE_SIZE) and launch options."""

    constexprs: dict
    launch: dict

    @property
    def block_q(self) -> int:
        """Query tokens per prefill program (its rows are tokens x the padded GQA group)."""
        return self.constexprs["BLOCK_M"] // self.constexprs["GROUP_PAD"]


def prefill_tiles(head_dim: int, group: int, dtype: torch.dtype, has_mask: bool, sliding: bool) -> Tiles:
    """Tiles for an H100: 128 query rows x 64 keys for 256-byte rows (bf16 x 128), halved as rows
    get wider (fp32, dim 256); a window or custom mask builds a (rows, keys) mask per tile, so its
    tiles are narrower. Chosen so the sm_90 builds neither spill registers nor exceed ~110 KB of
    shared memory at two stages (``bench/attention.py --sm90-resources``), not yet tuned by timing."""
    group_pad = triton.next_power_of_2(group)
    block_d = max(16, triton.next_power_of_2(head_dim))
    row_bytes = block_d * torch.finfo(dtype).bits // 8
    block_m = max(group_pad, 128 if row_bytes <= 256 else 64 if row_bytes <= 512 else 32)
    block_n = 64 if row_bytes <= 256 and not (has_mask or sliding) else 32
    if has_mask:
        block_m = max(group_pad, min(block_m, 64))
    constexprs = dict(
        HEAD_DIM=head_dim, GROUP=group, GROUP_PAD=group_pad, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        HAS_MASK=has_mask, SLIDING=sliding, DOT_PRECISION=_dot_precision(dtype),
    )  # fmt: skip
    return Tiles(constexprs, dict(num_warps=4 if block_d <= 64 else 8, num_stages=2))


def decode_tiles(head_dim: int, group: int, dtype: torch.dtype, sliding: bool) -> Tiles:
    """One query's GQA group padded to the 16 rows a tensor-core dot needs, x 64 keys (32 for rows
    over 256 bytes), three stages of K/V in flight: no spills and ~40 KB of shared memory on sm_90."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_n = 64 if block_d * torch.finfo(dtype).bits // 8 <= 256 else 32
    constexprs = dict(
        HEAD_DIM=head_dim, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        BLOCK_D=block_d, SLIDING=sliding, DOT_PRECISION=_dot_precision(dtype),
    )  # fmt: skip
    return Tiles(constexprs, dict(num_warps=4, num_stages=3))


def paged_prefill(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_positions: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a ragged batch of new tokens over their paged contexts (any number per sequence)."""
    num_heads, num_kv_heads, head_dim = _check_inputs(q, k_cache, v_cache, slot_positions, meta)
    dm = _device_meta(meta, q.device, k_cache.shape[0], k_cache.shape[1])
    out = _empty(q.shape, q.dtype, q.device) if out is None else out
    lse = _empty(q.shape[:2], torch.float32, q.device) if lse is None else lse
    has_mask = dm.mask_flat is not None
    tiles = prefill_tiles(head_dim, num_heads // num_kv_heads, q.dtype, has_mask, sliding_window is not None)
    seqs, firsts = _work_list(meta, dm, tiles.block_q, q.device)
    if seqs.numel() == 0:
        return out, lse
    dummy = dm.query_start  # stands in for unused pointer arguments
    _prefill_kernel[(seqs.numel(), num_kv_heads)](
        q, k_cache, v_cache, slot_positions, out, lse,
        seqs, firsts, dm.query_start, dm.context_lens, dm.block_table, dm.query_positions,
        dm.mask_flat if has_mask else dummy, dm.mask_offsets if has_mask else dummy,
        scale * _LOG2E, sliding_window or 0,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), lse.stride(0), lse.stride(1), dm.block_table.stride(0), slot_positions.stride(0),
        PAGE_SIZE=k_cache.shape[1], **tiles.constexprs, **tiles.launch,
    )  # fmt: skip
    return out, lse


@functools.cache
def _multi_processor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_splits(num_seqs: int, num_kv_heads: int, max_context_len: int, block_n: int, device: torch.device) -> int:
    """Enough KV splits that about two waves of programs cover the SMs, each split >= 4 tiles long."""
    if not _is_gpu(device):
        return 1
    sms = _multi_processor_count(device.index if device.index is not None else torch.cuda.current_device())
    wanted = math.ceil(2 * sms / max(1, num_seqs * num_kv_heads))
    return max(1, min(wanted, math.ceil(max_context_len / (4 * block_n)), 64))


def paged_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_positions: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one new token per sequence over its paged context, split along the KV length.

    ``num_splits`` (default: chosen from the batch and the GPU's SM count) cuts each context into
    that many chunks; the chunks' partial states are merged exactly.
    """
    num_heads, num_kv_heads, head_dim = _check_inputs(q, k_cache, v_cache, slot_positions, meta)
    if not meta.is_decode:
        raise TritonAttentionError("paged_decode needs one query per sequence and no custom masks; use paged_prefill")
    dm = _device_meta(meta, q.device, k_cache.shape[0], k_cache.shape[1])
    out = _empty(q.shape, q.dtype, q.device) if out is None else out
    lse = _empty(q.shape[:2], torch.float32, q.device) if lse is None else lse
    num_seqs = meta.num_seqs
    if num_seqs == 0:
        return out, lse
    tiles = decode_tiles(head_dim, num_heads // num_kv_heads, q.dtype, sliding_window is not None)
    block_n = tiles.constexprs["BLOCK_N"]
    if num_splits is None:
        num_splits = _num_splits(num_seqs, num_kv_heads, dm.max_context_len, block_n, q.device)
    if num_splits < 1:
        raise TritonAttentionError(f"num_splits must be >= 1, got {num_splits}")
    # Splits are whole tiles so no tile straddles two programs.
    tokens_per_split = block_n * max(1, math.ceil(dm.max_context_len / (num_splits * block_n)))
    if num_splits == 1:
        part_out, part_lse = out.unsqueeze(0), lse.unsqueeze(0)
    else:
        part_out = _empty((num_splits, *q.shape), torch.float32, q.device)
        part_lse = _empty((num_splits, *q.shape[:2]), torch.float32, q.device)
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, slot_positions, part_out, part_lse,
        dm.context_lens, dm.block_table, dm.query_positions,
        scale * _LOG2E, sliding_window or 0, tokens_per_split,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1), part_lse.stride(2),
        dm.block_table.stride(0), slot_positions.stride(0),
        PAGE_SIZE=k_cache.shape[1], **tiles.constexprs, **tiles.launch,
    )  # fmt: skip
    if num_splits > 1:
        _merge_stacked(part_out, part_lse, out, lse)
    return out, lse


def _merge_stacked(parts_out: torch.Tensor, parts_lse: torch.Tensor, out: torch.Tensor, lse: torch.Tensor) -> None:
    """Merge (P, T, H, D) partial outputs and (P, T, H) lses into ``out`` (T, H, D) and ``lse`` (T, H)."""
    num_parts, num_tokens, num_heads, head_dim = parts_out.shape
    if num_tokens == 0:
        return
    block_d = triton.next_power_of_2(head_dim)
    block_h = min(triton.next_power_of_2(num_heads), max(1, 4096 // block_d))
    _merge_kernel[(num_tokens, triton.cdiv(num_heads, block_h))](
        parts_out, parts_lse, out, lse, num_parts, num_heads,
        parts_out.stride(0), parts_out.stride(1), parts_out.stride(2),
        parts_lse.stride(0), parts_lse.stride(1), parts_lse.stride(2),
        out.stride(0), out.stride(1), lse.stride(0), lse.stride(1),
        HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4,
    )  # fmt: skip


def merge_attention_states(
    outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention over the union of disjoint KV parts from each part's (out (T,H,D), lse (T,H))."""
    if len(outs) == 0 or len(outs) != len(lses):
        raise TritonAttentionError(f"need one lse per output and at least one part; got {len(outs)} and {len(lses)}")
    shape = outs[0].shape
    for i, (o, s) in enumerate(zip(outs, lses)):
        if o.dim() != 3 or o.shape != shape or s.shape != shape[:2] or o.device != outs[0].device:
            raise TritonAttentionError(
                f"part {i}: out {tuple(o.shape)} on {o.device}, lse {tuple(s.shape)}; expected out "
                f"{tuple(shape)} and lse {tuple(shape[:2])} on {outs[0].device} like part 0"
            )
    parts_out = torch.stack([o for o in outs])
    parts_lse = torch.stack([s.float() for s in lses])
    out = _empty(shape, outs[0].dtype, outs[0].device)
    lse = _empty(shape[:2], torch.float32, outs[0].device)
    _merge_stacked(parts_out, parts_lse, out, lse)
    return out, lse


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_positions: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    sliding_window: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton backend of :func:`core.attention.paged_attention`: decode kernel or prefill kernel."""
    if meta.is_decode:
        return paged_decode(q, k_cache, v_cache, slot_positions, meta, scale, sliding_window)
    return paged_prefill(q, k_cache, v_cache, slot_positions, meta, scale, sliding_window)
