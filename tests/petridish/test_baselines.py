"""The baselines serve the same tokens as the plain engine, and weights really are shared."""

import torch

from core.config import EngineConfig
from core.engine import Engine
from core.sampling import SamplingParams
from petridish.baselines import FullIsolation, NoProtection
from petridish.weights import SharedWeights

PROMPTS = ["first private prompt", "a second, longer private prompt here"]
PARAMS = SamplingParams(max_new_tokens=6, ignore_eos=True)


def _plain(model, tok):
    return [o.token_ids for o in Engine(model, tok, EngineConfig(num_pages=64, attention_backend="torch")).generate(PROMPTS, PARAMS)]


def test_no_protection_matches_the_plain_engine(llama_system):
    model, tok = llama_system.service.model, llama_system.service.tokenizer
    got = NoProtection(model, tok, num_pages=64).generate(PROMPTS, PARAMS)
    assert [r.token_ids for r in got] == _plain(model, tok)


def test_full_isolation_matches_the_plain_engine(llama_spec, llama_system):
    model, tok = llama_system.service.model, llama_system.service.tokenizer
    with FullIsolation(llama_spec, 1, num_pages=64) as iso:
        got = iso.generate(PROMPTS[:1], PARAMS)
        assert iso.memory_bytes()["total_bytes"] > 0
    assert got[0].token_ids == _plain(model, tok)[0]


def test_shared_weights_alias_the_service_parameters(llama_system):
    source = llama_system.source
    assert isinstance(source, SharedWeights)
    model, _ = source.load()
    service_params = dict(llama_system.service.model.named_parameters())
    for name, p in model.named_parameters():
        assert p.is_shared() and p.data_ptr() == service_params[name].data_ptr(), name
    ids = torch.tensor([2, 40, 41, 42])
    pool_a, pool_b = model.new_kv_pool(4, 16), llama_system.service.model.new_kv_pool(4, 16)
    from core.sequence import KVSequence

    (a,) = model.forward(pool_a, [KVSequence(pool_a).entry(token_ids=ids)])
    (b,) = llama_system.service.model.forward(pool_b, [KVSequence(pool_b).entry(token_ids=ids)])
    torch.testing.assert_close(a.logits, b.logits)
