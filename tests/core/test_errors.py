"""Bad input gets a specific error that says what and where."""

import json

import pytest
import torch

from core.batch import ForwardEntry, PositionOutOfRangeError
from core.config import UnknownArchitectureError
from core.kv_cache import InvalidPageError, OutOfPagesError
from core.loader import ModelSourceError, load_model
from core.sequence import KVSequence
from core.testing import save_tiny_checkpoint


def test_out_of_pages_is_a_catchable_error_that_leaves_other_sequences_intact(tiny_llama):
    model = tiny_llama.model
    pool = model.new_kv_pool(4, 4)
    keeper = KVSequence(pool)
    before = model.forward(pool, [keeper.entry(token_ids=[5, 6, 7, 8, 9])])[0].logits
    greedy = KVSequence(pool)
    with pytest.raises(OutOfPagesError, match="out of KV pages"):
        greedy.entry(token_ids=list(range(10, 30)))
    after_ref = model.forward(pool, [keeper.entry(token_ids=[10])])[0].logits
    fresh = model.new_kv_pool(8, 4)
    seq = KVSequence(fresh)
    model.forward(fresh, [seq.entry(token_ids=[5, 6, 7, 8, 9])])
    torch.testing.assert_close(after_ref, model.forward(fresh, [seq.entry(token_ids=[10])])[0].logits)
    assert before is not None


def test_unallocated_or_out_of_range_pages_in_a_forward_are_rejected(tiny_llama):
    model = tiny_llama.model
    pool = model.new_kv_pool(8, 4)
    seq = KVSequence(pool)
    entry = seq.entry(token_ids=[5, 6])
    entry.context_pages = [7]  # never allocated
    with pytest.raises(InvalidPageError, match="page 7 is not allocated"):
        model.forward(pool, [entry])
    entry.context_pages = seq.pages
    entry.write_slots = torch.tensor([0, 999])
    with pytest.raises(InvalidPageError, match="write slot 999 outside the pool"):
        model.forward(pool, [entry])


def test_positions_past_the_model_limit_are_rejected(tiny_llama):
    model = tiny_llama.model
    pool = model.new_kv_pool(8, 4)
    entry = KVSequence(pool).entry(positions=[510, 511, 512], token_ids=[5, 6, 7])
    with pytest.raises(PositionOutOfRangeError, match="position 512 is past the model's limit of 512"):
        model.forward(pool, [entry])


def test_malformed_entries_are_rejected_with_the_entry_index(tiny_llama):
    model = tiny_llama.model
    pool = model.new_kv_pool(8, 4)
    good = KVSequence(pool).entry(token_ids=[5, 6])
    bad = ForwardEntry(positions=torch.arange(2), write_slots=torch.tensor([8, 9]), context_pages=[2],
                       context_len=2, token_ids=torch.tensor([5, 999]))
    pool.allocator._refcount[2] = 1
    with pytest.raises(ValueError, match="forward entry 1: token id out of range"):
        model.forward(pool, [good, bad])


def test_an_unknown_architecture_in_a_checkpoint_is_named(tmp_path):
    save_tiny_checkpoint("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "mamba", ["MambaForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnknownArchitectureError, match="unknown architecture \\['MambaForCausalLM'\\]"):
        load_model(str(tmp_path))


def test_an_unknown_model_source_is_named(tmp_path):
    with pytest.raises(ModelSourceError, match="is not 'gemma3-270m'"):
        load_model(str(tmp_path / "nowhere"))
