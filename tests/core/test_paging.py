"""Paging is invisible to the math: page sizes, shared prefixes, scattered pages, explicit positions."""

import pytest
import torch

from core.batch import ForwardEntry
from core.sequence import KVSequence

PROMPT = "Paged attention must not change a single logit, whatever the page size."


def _logits(loaded, page_size, num_pages=400, scatter=False):
    model, tok = loaded.model, loaded.tokenizer
    ids = tok.encode(PROMPT)
    pool = model.new_kv_pool(num_pages, page_size)
    if scatter:  # take every other page so a sequence's pages are not contiguous, in reverse order
        hold = pool.allocate(num_pages)
        pool.release(hold[::2])
        pool.allocator._free.reverse()
    seq = KVSequence(pool)
    first = model.forward(pool, [seq.entry(token_ids=ids[:-5], logits_at=list(range(len(ids) - 5)))])[0].logits
    rest = model.forward(pool, [seq.entry(token_ids=ids[-5:], logits_at=list(range(5)))])[0].logits
    if scatter:
        assert any(b - a != 1 for a, b in zip(seq.pages, seq.pages[1:]))
    return torch.cat([first, rest])


@pytest.mark.parametrize("family_fixture", ["tiny_llama", "tiny_gemma3"])
def test_page_sizes_and_scattered_pages_give_identical_logits(family_fixture, request):
    loaded = request.getfixturevalue(family_fixture)
    reference = _logits(loaded, page_size=1)
    for page_size in (16, 64):
        torch.testing.assert_close(_logits(loaded, page_size), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_logits(loaded, 16, scatter=True), reference, atol=1e-5, rtol=1e-5)


def test_shared_prefix_pages_give_the_same_logits_as_private_copies(tiny_gemma3):
    model, tok = tiny_gemma3.model, tiny_gemma3.tokenizer
    prefix, a, b = tok.encode("A shared system prompt. "), tok.encode("first", False), tok.encode("second!", False)
    pool = model.new_kv_pool(64, 4)
    base = KVSequence(pool)
    model.forward(pool, [base.entry(token_ids=prefix)])
    fork_a, fork_b = base.fork(), base.fork()
    shared = model.forward(pool, [fork_a.entry(token_ids=a, logits_at=range(len(a))),
                                  fork_b.entry(token_ids=b, logits_at=range(len(b)))])
    for ids, out in ((a, shared[0]), (b, shared[1])):
        alone = KVSequence(pool)
        ref = model.forward(pool, [alone.entry(token_ids=prefix + ids, logits_at=range(len(prefix), len(prefix) + len(ids)))])
        torch.testing.assert_close(out.logits, ref[0].logits, atol=1e-5, rtol=1e-5)
    # the prefix pages were shared, and the forks' appends did not write into them
    assert fork_a.pages[0] == base.pages[0] == fork_b.pages[0]


@pytest.mark.parametrize("family_fixture", ["tiny_llama", "tiny_gemma3"])
@pytest.mark.parametrize("cut", [16, 21])  # page-aligned, and not (a hole in the last page is masked)
def test_segments_encoded_separately_at_true_positions_match_the_one_shot_forward(family_fixture, cut, request):
    loaded = request.getfixturevalue(family_fixture)
    model, tok = loaded.model, loaded.tokenizer
    ids = tok.encode("Two segments, encoded apart, then attended together at the end.")
    n, m = len(ids), len(ids) - cut
    pool = model.new_kv_pool(64, 8)
    one_shot = model.forward(pool, [KVSequence(pool).entry(token_ids=ids, logits_at=range(n))])[0].logits
    first, second = KVSequence(pool), KVSequence(pool)
    model.forward(pool, [first.entry(token_ids=ids[:cut])])
    # The second segment lives in its own pages at positions cut..n-1 and attends to the first
    # segment's pages plus its own; unused slots at the end of the first segment's pages are masked.
    slots = second.reserve(m)
    base = len(first.pages) * pool.page_size
    mask = torch.zeros(m, base + m, dtype=torch.bool)
    mask[:, :cut] = True
    mask[:, base:] = torch.tril(torch.ones(m, m, dtype=torch.bool))
    entry = ForwardEntry(positions=torch.arange(cut, n), write_slots=slots, context_pages=first.pages + second.pages,
                         context_len=base + m, token_ids=torch.tensor(ids[cut:]), mask=mask, logits_at=range(m))
    out = model.forward(pool, [entry])[0].logits
    torch.testing.assert_close(out, one_shot[cut:], atol=1e-5, rtol=1e-5)
