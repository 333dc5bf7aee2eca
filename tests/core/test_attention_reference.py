"""The torch reference attention against plain dense attention, and the exact merge rule."""

import itertools

import torch

from core.attention import AttentionMetadata, merge_attention_states_torch, paged_attention_torch


def _paged(k, v, page_size, pages):
    """Lay (L, KVH, D) tensors over the given page ids in a fresh cache."""
    num_pages = max(pages) + 1
    kc = torch.zeros(num_pages, page_size, *k.shape[1:])
    vc = torch.zeros_like(kc)
    pos = torch.full((num_pages, page_size), -1, dtype=torch.long)
    for i in range(k.shape[0]):
        kc[pages[i // page_size], i % page_size] = k[i]
        vc[pages[i // page_size], i % page_size] = v[i]
        pos[pages[i // page_size], i % page_size] = i
    return kc, vc, pos


def _dense(q, k, v, allowed, scale):
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = torch.einsum("nhd,lhd->hnl", q, k) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hnl,lhd->nhd", torch.softmax(s, -1), v), torch.logsumexp(s, -1).T


def test_paged_reference_matches_dense_attention_with_gqa_window_and_noncontiguous_pages():
    torch.manual_seed(0)
    L, n, H, KVH, D, page = 11, 4, 4, 2, 8, 3
    q, k, v = torch.randn(n, H, D), torch.randn(L, KVH, D), torch.randn(L, KVH, D)
    pages = [5, 1, 7, 2]
    kc, vc, pos = _paged(k, v, page, pages)
    meta = AttentionMetadata([0, n], [pages], [L], [None], torch.arange(L - n, L), torch.zeros(n, dtype=torch.long))
    for window in (None, 3):
        out, lse = paged_attention_torch(q, kc, vc, pos, meta, 0.3, window)
        qi = torch.arange(L - n, L).unsqueeze(1)
        kj = torch.arange(L).unsqueeze(0)
        allowed = (kj <= qi) & ((qi - kj < window) if window else True)
        ref_out, ref_lse = _dense(q, k, v, allowed, 0.3)
        assert torch.allclose(out, ref_out, atol=1e-5) and torch.allclose(lse, ref_lse, atol=1e-5)
        fast, _ = paged_attention_torch(q, kc, vc, pos, meta, 0.3, window, need_lse=False)
        assert torch.allclose(fast, ref_out, atol=1e-5)


def test_merging_split_attention_equals_attention_over_the_whole():
    torch.manual_seed(1)
    L, H, D = 13, 2, 4
    q, k, v = torch.randn(1, H, D), torch.randn(L, H, D), torch.randn(L, H, D)
    full, full_lse = _dense(q, k, v, torch.ones(1, L, dtype=torch.bool), 0.5)
    cuts = [0, 3, 4, 9, L]
    parts = [_dense(q, k[a:b], v[a:b], torch.ones(1, b - a, dtype=torch.bool), 0.5) for a, b in itertools.pairwise(cuts)]
    out, lse = merge_attention_states_torch([p[0] for p in parts], [p[1] for p in parts])
    assert torch.allclose(out, full, atol=1e-6) and torch.allclose(lse, full_lse, atol=1e-6)


def test_a_query_with_nothing_to_attend_gets_zero_output_and_minus_inf_lse():
    q, k, v = torch.randn(1, 1, 2), torch.randn(3, 1, 2), torch.randn(3, 1, 2)
    kc, vc, pos = _paged(k, v, 4, [0])
    meta = AttentionMetadata([0, 1], [[0]], [3], [torch.zeros(1, 3, dtype=torch.bool)], torch.tensor([2]),
                             torch.tensor([0]))
    out, lse = paged_attention_torch(q, kc, vc, pos, meta, 1.0)
    assert torch.equal(out, torch.zeros_like(out)) and lse.item() == float("-inf")
    merged, merged_lse = merge_attention_states_torch([out, torch.ones_like(out)], [lse, torch.zeros_like(lse)])
    assert torch.equal(merged, torch.ones_like(out)) and merged_lse.item() == 0.0


def test_batched_decode_matches_one_sequence_at_a_time():
    torch.manual_seed(2)
    H, KVH, D, page = 4, 2, 8, 4
    lengths = [1, 7, 13]
    tables = [[3], [0, 5], [1, 2, 4, 6]]
    kc, vc = torch.randn(8, page, KVH, D), torch.randn(8, page, KVH, D)
    pos = torch.arange(8 * page).view(8, page) * 2  # gapped positions
    q = torch.randn(len(lengths), H, D)
    q_pos = torch.tensor([int(pos.view(-1)[t[(n - 1) // page] * page + (n - 1) % page]) for t, n in zip(tables, lengths)])
    for window in (None, 9):
        meta = AttentionMetadata([0, 1, 2, 3], tables, lengths, [None] * 3, q_pos, torch.zeros(3, dtype=torch.long))
        out, lse = paged_attention_torch(q, kc, vc, pos, meta, 0.4, window)
        for b in range(3):
            single = AttentionMetadata([0, 1], [tables[b]], [lengths[b]], [None], q_pos[b:b + 1], torch.zeros(1, dtype=torch.long))
            ref_out, ref_lse = paged_attention_torch(q[b:b + 1], kc, vc, pos, single, 0.4, window)
            torch.testing.assert_close(out[b:b + 1], ref_out, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lse[b:b + 1], ref_lse, atol=1e-5, rtol=1e-5)


def test_columns_no_query_can_see_are_skipped_without_changing_the_result():
    from core.attention import _query_tiles

    torch.manual_seed(3)
    L, n, H, KVH, D, page, window = 40, 3, 2, 1, 8, 4, 6
    q, k, v = torch.randn(n, H, D), torch.randn(L, KVH, D), torch.randn(L, KVH, D)
    pages = list(range(9, -1, -1))  # reversed page order
    kc, vc, pos = _paged(k, v, page, pages)
    mask = torch.ones(n, L, dtype=torch.bool)
    mask[:, 30:34] = False  # e.g. a composed prompt's padding slots
    mask[0, L - 2:] = False  # causal among the new tokens
    mask[1, L - 1] = False
    meta = AttentionMetadata([0, n], [pages], [L], [mask], torch.arange(L - n, L), torch.zeros(n, dtype=torch.long))
    for window_ in (None, window):
        out, lse = paged_attention_torch(q, kc, vc, pos, meta, 0.3, window_)
        qi, kj = torch.arange(L - n, L).unsqueeze(1), torch.arange(L).unsqueeze(0)
        allowed = mask & ((qi - kj < window_) if window_ else True)
        ref_out, ref_lse = _dense(q, k, v, allowed, 0.3)
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
        ((_, _, slots, _),) = _query_tiles(meta, 0, page, pos, window_)
        assert slots.numel() == int(allowed.any(0).sum())  # only the columns some query sees were read


def test_a_long_query_block_in_tiles_equals_dense_attention(monkeypatch):
    import core.attention

    monkeypatch.setattr(core.attention, "QUERY_TILE", 4)
    torch.manual_seed(4)
    L, n, H, KVH, D, page = 23, 10, 4, 2, 8, 4
    q, k, v = torch.randn(n, H, D), torch.randn(L, KVH, D), torch.randn(L, KVH, D)
    pages = [3, 0, 5, 1, 4, 2]
    kc, vc, pos = _paged(k, v, page, pages)
    for window in (None, 5):
        meta = AttentionMetadata([0, n], [pages], [L], [None], torch.arange(L - n, L), torch.zeros(n, dtype=torch.long))
        for need_lse in (True, False):
            out, lse = paged_attention_torch(q, kc, vc, pos, meta, 0.3, window, need_lse=need_lse)
            qi, kj = torch.arange(L - n, L).unsqueeze(1), torch.arange(L).unsqueeze(0)
            ref_out, ref_lse = _dense(q, k, v, (kj <= qi) & ((qi - kj < window) if window else True), 0.3)
            torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
            if need_lse:
                torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
        tiles = core.attention._query_tiles(meta, 0, page, pos, window)
        assert [(s, e) for s, e, _, _ in tiles] == [(0, 4), (4, 8), (8, 10)]
        assert tiles[0][2].numel() < L  # the first tile does not read the keys after its last query
