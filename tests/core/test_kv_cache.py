import pytest
import torch

from core.kv_cache import InvalidPageError, KVCacheSpec, KVPool, OutOfPagesError, PageAllocator
from core.sequence import KVSequence


def test_allocator_reference_counts_return_pages_only_at_zero():
    alloc = PageAllocator(4)
    pages = alloc.allocate(2)
    alloc.share(pages)
    alloc.release(pages)
    assert alloc.num_free == 2 and all(alloc.refcount(p) == 1 for p in pages)
    alloc.release(pages)
    assert alloc.num_free == 4


def test_out_of_pages_raises_and_allocates_nothing():
    alloc = PageAllocator(3)
    held = alloc.allocate(2)
    with pytest.raises(OutOfPagesError, match="requested 2, 1 free of 3"):
        alloc.allocate(2)
    assert alloc.num_free == 1 and all(alloc.refcount(p) == 1 for p in held)


@pytest.mark.parametrize("page", [-1, 4, 2])
def test_bad_page_ids_are_rejected(page):
    alloc = PageAllocator(4)
    alloc.allocate(2)  # pages 0 and 1; page 2 is in range but free
    with pytest.raises(InvalidPageError):
        alloc.release([page])


def _pool(num_pages=8, page_size=4):
    return KVPool(KVCacheSpec(num_layers=2, num_pages=num_pages, page_size=page_size, num_kv_heads=1, head_dim=2))


def test_copy_on_write_gives_a_private_copy_and_keeps_the_original():
    pool = _pool()
    (page,) = pool.allocate(1)
    pool.k_cache[0][page] = 1.0
    pool.share([page])
    pages = [page]
    new = pool.copy_on_write(pages, 0)
    assert new != page and pages == [new]
    assert torch.equal(pool.k_cache[0][new], pool.k_cache[0][page])
    assert pool.allocator.refcount(page) == 1


def test_fork_then_append_copies_the_shared_partial_page():
    pool = _pool()
    seq = KVSequence(pool)
    seq.reserve(6)  # pages [a, b], b half full
    child = seq.fork()
    slots = child.reserve(1)
    assert child.pages[0] == seq.pages[0] and child.pages[1] != seq.pages[1]
    assert int(slots[0]) // pool.page_size == child.pages[1]


def test_failed_reserve_leaves_the_sequence_and_pool_unchanged():
    pool = _pool(num_pages=2)
    seq = KVSequence(pool)
    seq.reserve(5)
    with pytest.raises(OutOfPagesError):
        seq.reserve(8)
    assert seq.length == 5 and len(seq.pages) == 2 and pool.allocator.num_free == 0


def test_export_import_round_trips_kv_and_positions():
    pool = _pool()
    pages = pool.allocate(2)
    for k in pool.k_cache:
        k[pages] = torch.randn(2, 4, 1, 2)
    pool.positions[pages] = torch.arange(8).view(2, 4)
    data = pool.export_pages(pages, 7)
    fresh = pool.allocate(2)
    pool.import_pages(data, fresh)
    for k in pool.k_cache:
        assert torch.equal(k[fresh], k[pages])
    assert torch.equal(pool.positions[fresh], pool.positions[pages])
