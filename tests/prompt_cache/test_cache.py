"""The cached path against the oracle: same logits (fp32, 1e-4) and tokens as a from-scratch forward."""

from __future__ import annotations

import pytest
import torch
from _prompt_cache_helpers import make_engine
from _prompt_cache_reference import reference_greedy

from core.sampling import SamplingParams
from prompt_cache.cache import PromptCache
from prompt_cache.pml import UnknownModuleError

SCHEMA = """<schema name="trip">
<system>Plan trips.</system>
<user>
<module name="plan">Trip of <param name="days" len="4"/> days
  <union scaffold="city">
    <module name="city">to a city</module>
    <module name="beach">to a beach by <param name="where" len="5"/> in May</module>
  </union>
  then home.
</module>
<module name="live" cache="false">Sky: <param name="sky" len="3"/>.</module>
<module name="notes">Pack light; bring a hat.</module>
</user>
</schema>"""

PROMPTS = [
    '<prompt schema="trip"><plan days="10"/><notes/> Where should I stay?</prompt>',
    '<prompt schema="trip"><plan><beach where="Nice"/></plan> Any tips?</prompt>',
    '<prompt schema="trip"><plan days="2"><beach/></plan><live sky="sun"/><notes/><user>Go?</user></prompt>',
    '<prompt schema="trip"><notes/><plan days="3"/></prompt>',  # no text: the last cached token is recomputed
    '<prompt schema="trip"><plan><beach where="Rome"/></plan></prompt>',  # no text, ends inside a module
]
STEPS = 2
# Gemma 3 (sliding windows of 8 over gapped positions) on the prompts with arguments, cache="false" and no text.
CASES = [("llama", p, "independent") for p in PROMPTS] + [
    ("gemma3", PROMPTS[2], "independent"), ("gemma3", PROMPTS[4], "independent"),
    # "root": modules also see the schema's own text before them (<bos>, the system turn).
    ("llama", PROMPTS[2], "root"), ("llama", PROMPTS[3], "root"), ("gemma3", PROMPTS[0], "root"),
]


def _check(cache: PromptCache, prompt: str) -> None:
    _, selection = cache.select(prompt)
    assert selection.blocks[0].path == ()  # the reference's "block 0 is the root"
    expected, first = reference_greedy(cache.model, selection, STEPS, cache.encoding)
    out = cache.generate(prompt, SamplingParams(max_new_tokens=STEPS, ignore_eos=True))
    torch.testing.assert_close(out.first_logits, first, atol=1e-4, rtol=1e-4)
    assert out.token_ids == expected


@pytest.mark.parametrize(("family", "prompt", "encoding"), CASES)
def test_cached_logits_match_block_diagonal_full_forward(family, prompt, encoding):
    cache = PromptCache(make_engine(family), encoding=encoding)
    cache.add_schema(SCHEMA)
    _check(cache, prompt)


def test_host_store_matches_reference_and_frees_its_pages():
    cache = PromptCache(make_engine("gemma3"), store="host", encoding="root")
    cache.add_schema(SCHEMA)
    assert cache.pool.allocator.num_free == cache.pool.num_pages  # modules live in host memory only
    _check(cache, PROMPTS[1])
    assert cache.pool.allocator.num_free == cache.pool.num_pages


def test_device_store_shares_module_pages_without_copying():
    cache = PromptCache(make_engine("llama"))
    cache.add_schema(SCHEMA)
    plan_pages = cache.store._modules["trip:plan"].pages
    composed = cache.compose(PROMPTS[0])
    try:
        assert all(p in composed.seq.pages for p in plan_pages)
        assert all(cache.pool.allocator.refcount(p) == 2 for p in plan_pages)
    finally:
        composed.seq.release()
    assert all(cache.pool.allocator.refcount(p) == 1 for p in plan_pages)


def test_eviction_under_a_small_budget_reencodes_and_keeps_outputs():
    roomy = PromptCache(make_engine("llama"))
    roomy.add_schema(SCHEMA)
    tight = PromptCache(make_engine("llama"), capacity_tokens=40)
    tight.add_schema(SCHEMA)
    assert tight.store.num_tokens <= 40 and tight.store.num_evictions > 0
    params = SamplingParams(max_new_tokens=3, ignore_eos=True)
    for prompt in PROMPTS[:3]:
        assert tight.generate(prompt, params).token_ids == roomy.generate(prompt, params).token_ids


def test_pool_exhaustion_evicts_least_recently_used_modules():
    cache = PromptCache(make_engine("llama", num_pages=60))  # one schema takes 44 pages
    cache.add_schema(SCHEMA)
    other = SCHEMA.replace('name="trip"', 'name="trip2"')
    cache.add_schema(other)  # does not fit beside the first: old modules are evicted
    assert cache.store.num_evictions > 0
    out = cache.generate(PROMPTS[0], SamplingParams(max_new_tokens=2, ignore_eos=True))
    assert len(out.token_ids) == 2


def test_schema_without_modules_matches_plain_engine_prefill():
    # Only the root and the prompt's text: positions are 0..n-1 and attention is causal, so the cached
    # path and the engine's ordinary full prefill must decode the same tokens.
    cache = PromptCache(make_engine("gemma3"))
    cache.add_schema('<schema name="s"><system>You are a helpful assistant who answers briefly.</system></schema>')
    prompt = '<prompt schema="s"><user>What is two plus two?</user></prompt>'
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    assert cache.generate(prompt, params).token_ids == cache.generate_baseline(prompt, params).token_ids


def test_scaffolding_default_path_equals_causal_prefill_at_schema_positions():
    # With scaffolding, modules on the default path see each other: serving exactly that path with no
    # arguments is an ordinary causal prefill of the path's tokens at their schema positions.
    cache = PromptCache(make_engine("llama"), encoding="scaffold")
    layout = cache.add_schema(SCHEMA.replace(' cache="false"', ""))
    prompt = '<prompt schema="trip"><plan/><live/><notes/> Hi</prompt>'
    _, selection = cache.select(prompt)
    assert [b.key for b in selection.blocks] == [b.key for b in layout.scaffold_path()]
    pairs = sorted((p, t) for b in selection.blocks for p, t in zip(b.positions, b.token_ids))
    pairs += list(zip(selection.text_positions, selection.text_ids))
    seq_pool = cache.model.new_kv_pool(64, 4)
    from core.sequence import KVSequence

    seq = KVSequence(seq_pool)
    entry = seq.entry(positions=[p for p, _ in pairs], token_ids=[t for _, t in pairs])
    expected = cache.model.forward(seq_pool, [entry])[0].logits[0]
    out = cache.generate(prompt, SamplingParams(max_new_tokens=1))
    torch.testing.assert_close(out.first_logits, expected, atol=1e-4, rtol=1e-4)


def test_scaffolding_union_member_sees_the_modules_before_it():
    independent = PromptCache(make_engine("llama"))
    scaffolded = PromptCache(make_engine("llama"), encoding="scaffold")
    for c in (independent, scaffolded):
        c.add_schema(SCHEMA)
    prompt = PROMPTS[1]
    a = independent.generate(prompt, SamplingParams(max_new_tokens=1)).first_logits
    b = scaffolded.generate(prompt, SamplingParams(max_new_tokens=1)).first_logits
    assert not torch.allclose(a, b, atol=1e-3)  # the beach module was encoded in context


def test_unknown_schema_and_module_errors_are_precise():
    cache = PromptCache(make_engine("llama"))
    cache.add_schema(SCHEMA)
    with pytest.raises(UnknownModuleError, match=r"line 2.*no module 'plam'"):
        cache.generate('<prompt schema="trip">\n<plam/></prompt>')
    with pytest.raises(ValueError, match="schema 'nope' was not added"):
        cache.generate('<prompt schema="nope"><plan/></prompt>')


@pytest.mark.parametrize("prompt", [None, '<prompt schema="mbti"><I/><F/> Describe the character.</prompt>'])
def test_paper_example_prompt_matches_reference(examples_dir, prompt):
    # The paper's own MBTI schema and prompt (unions with blank scaffold members, role tags, no text).
    cache = PromptCache(make_engine("llama", long=True))
    cache.add_schema(examples_dir / "schema_mbti_short.xml")
    _check(cache, prompt or (examples_dir / "prompt_mbti.xml").read_text())
