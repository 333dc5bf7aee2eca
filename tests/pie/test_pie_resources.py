"""Per-inferlet resource tables, the export registry and the command batcher, without wasm."""

import threading

import pytest
import torch

from core.batch import ForwardEntry
from core.sequence import KVSequence
from pie.batching import BatchPolicy, CommandBatcher
from pie.errors import ResourceError
from pie.resources import ExportRegistry, ResourceTable


@pytest.fixture
def pool(tiny):
    return tiny.model.new_kv_pool(16, 4)


def test_virtual_ids_are_private_to_each_table(pool):
    lock = threading.Lock()
    a, b = ResourceTable(pool, lock, "a"), ResourceTable(pool, lock, "b")
    pa = a.alloc_pages(2)
    b.alloc_pages(1)
    with pytest.raises(ResourceError, match="not owned"):
        b.physical([pa[1]])  # b holds only virtual id 0
    assert a.physical(pa) != b.physical([0]) * 2


def test_release_all_returns_every_page(pool):
    table = ResourceTable(pool, threading.Lock(), "t")
    free = pool.allocator.num_free
    table.alloc_pages(5)
    table.alloc_embeds(3)
    assert pool.allocator.num_free == free - 5
    table.release_all()
    assert pool.allocator.num_free == free
    with pytest.raises(ResourceError):
        table.embed(0)


def test_quota_and_exhaustion_are_resource_errors(pool):
    table = ResourceTable(pool, threading.Lock(), "t", max_pages=3)
    with pytest.raises(ResourceError, match="quota"):
        table.alloc_pages(4)
    big = ResourceTable(pool, threading.Lock(), "big")
    with pytest.raises(ResourceError, match="out of KV pages"):
        big.alloc_pages(pool.num_pages + 1)


def test_dealloc_of_foreign_or_duplicate_ids_changes_nothing(pool):
    table = ResourceTable(pool, threading.Lock(), "t")
    ids = table.alloc_pages(2)
    with pytest.raises(ResourceError):
        table.dealloc_pages([ids[0], 99])
    with pytest.raises(ResourceError, match="duplicates"):
        table.dealloc_pages([ids[0], ids[0]])
    assert table.num_pages == 2


def test_export_import_shares_pages_until_everyone_lets_go(pool):
    lock = threading.Lock()
    registry = ExportRegistry(pool, lock)
    owner, reader = ResourceTable(pool, lock, "owner"), ResourceTable(pool, lock, "reader")
    free = pool.allocator.num_free
    pages = owner.alloc_pages(2)
    registry.export("prefix", owner.physical(pages))
    imported = reader.map_shared(registry.get("prefix"))
    assert reader.physical(imported) == owner.physical(pages)
    owner.release_all()
    registry.unexport("prefix")
    assert pool.allocator.num_free == free - 2  # the reader still holds them
    reader.release_all()
    assert pool.allocator.num_free == free
    with pytest.raises(ResourceError, match="no KV pages"):
        registry.get("prefix")


def _entries(pool, prompts):
    seqs = [KVSequence(pool) for _ in prompts]
    return seqs, [s.entry(token_ids=p) for s, p in zip(seqs, prompts)]


@pytest.mark.parametrize("kind", ["eager", "k", "t", "adaptive"])
def test_batched_commands_give_the_same_logits_as_separate_forwards(tiny, kind):
    prompts = [[2, 10, 11, 12], [2, 20, 21], [2, 30, 31, 32, 33]]
    ref_pool = tiny.model.new_kv_pool(16, 4)
    _, ref_entries = _entries(ref_pool, prompts)
    expected = [tiny.model.forward(ref_pool, [e])[0].logits for e in ref_entries]
    pool = tiny.model.new_kv_pool(16, 4)
    # k and adaptive must wait for all three even on a loaded machine: generous bounds (they return early).
    wait = 0.05 if kind in ("eager", "t") else 10.0
    batcher = CommandBatcher(tiny.model, pool, BatchPolicy(kind, k=3, timeout_s=wait, max_wait_s=wait), lambda: 3)
    try:
        _, entries = _entries(pool, prompts)
        outs = [None] * 3
        threads = [threading.Thread(target=lambda i=i: outs.__setitem__(i, batcher.submit(entries[i])))
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        batcher.stop()
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out.logits, ref, rtol=1e-4, atol=1e-4)
    assert batcher.stats.commands == 3
    if kind in ("k", "adaptive"):
        assert batcher.stats.batches == 1  # all three waited for each other


def test_a_malformed_command_fails_alone(tiny):
    pool = tiny.model.new_kv_pool(16, 4)
    batcher = CommandBatcher(tiny.model, pool, BatchPolicy("k", k=2, timeout_s=5.0), lambda: 2)
    try:
        _, (good,) = _entries(pool, [[2, 5, 6]])
        bad = ForwardEntry(positions=torch.tensor([0]), write_slots=torch.tensor([0]), context_pages=[15],
                           context_len=1, token_ids=torch.tensor([1]))  # page 15 was never allocated
        result = {}

        def submit_good():
            result["good"] = batcher.submit(good)

        t = threading.Thread(target=submit_good)
        t.start()
        with pytest.raises(Exception, match="not allocated"):
            batcher.submit(bad)
        t.join(30)
    finally:
        batcher.stop()
    assert result["good"].logits.shape == (1, tiny.model.config.vocab_size)


class _ThreadSpy:
    """Delegates to the model and records which thread ran each forward."""

    def __init__(self, model):
        self.model, self.threads = model, []

    def forward(self, pool, entries):
        self.threads.append(threading.get_ident())
        return self.model.forward(pool, entries)


@pytest.mark.parametrize(("inline", "ready_inferlets", "on_caller"), [(True, 1, True), (False, 1, False), (True, 2, False)])
def test_a_lone_inferlet_runs_its_batch_on_its_own_thread(tiny, inline, ready_inferlets, on_caller):
    ref_pool = tiny.model.new_kv_pool(16, 4)
    _, (ref_entry,) = _entries(ref_pool, [[2, 10, 11, 12]])
    expected = tiny.model.forward(ref_pool, [ref_entry])[0].logits
    pool, spy = tiny.model.new_kv_pool(16, 4), _ThreadSpy(tiny.model)
    batcher = CommandBatcher(spy, pool, BatchPolicy("eager", inline=inline), lambda: ready_inferlets)
    try:
        _, (entry,) = _entries(pool, [[2, 10, 11, 12]])
        out = batcher.submit(entry)
        _, (second,) = _entries(pool, [[2, 5]])
        batcher.submit(second)  # the worker picks up again after an inline batch (and vice versa)
    finally:
        batcher.stop()
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-4)
    assert (spy.threads[0] == threading.get_ident()) is on_caller
    assert batcher.stats.batches == 2
