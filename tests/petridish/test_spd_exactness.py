"""SPD must be exact: splitting attention across processes changes no token and no logit."""

from dataclasses import replace

import pytest
import torch

from core.config import EngineConfig
from core.engine import Engine
from core.sampling import SamplingParams
from core.sequence import KVSequence
from petridish.service_process import ServiceConfig

PROMPTS = ["my salary is 91k and my doctor says", "ssn 123-45-6789"]  # different lengths, one batch


def _full_recompute_logits(model, ids: list[int], num_prompt: int) -> torch.Tensor:
    """Logits at every generated position from one plain forward over prompt + output."""
    pool = model.new_kv_pool(64, 16)
    seq = KVSequence(pool)
    n = len(ids)
    (out,) = model.forward(pool, [seq.entry(token_ids=ids, logits_at=list(range(num_prompt - 1, n - 1)))])
    return out.logits


def test_spd_greedy_tokens_equal_plain_engine(system):
    params = SamplingParams(max_new_tokens=10, ignore_eos=True)
    spd = system.generate(PROMPTS, params)
    engine = Engine(system.service.model, system.service.tokenizer, EngineConfig(num_pages=64, attention_backend="torch"))
    plain = engine.generate(PROMPTS, params)
    for s, p in zip(spd, plain):
        assert s.error is None
        assert s.token_ids == p.token_ids
        assert len(s.token_ids) == 10


def test_spd_logits_match_full_recompute(system):
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    model, tok = system.service.model, system.service.tokenizer
    for prompt, res in zip(PROMPTS, system.generate(PROMPTS, params)):
        prompt_ids = tok.encode(prompt)
        ref = _full_recompute_logits(model, prompt_ids + res.token_ids, len(prompt_ids))
        got = torch.stack(res.logits[0])  # the service's logits for tokens 2.. (token 1 came from prefill)
        torch.testing.assert_close(got, ref[1:], rtol=1e-4, atol=1e-4)


def test_spd_without_the_private_part_would_differ(system):
    """Guards the test above: dropping the private attention visibly changes the logits."""
    params = SamplingParams(max_new_tokens=4, ignore_eos=True)
    model, tok = system.service.model, system.service.tokenizer
    res = system.generate(PROMPTS[:1], params)[0]
    only_public = _full_recompute_logits(model, [tok.encode(PROMPTS[0])[-1], *res.token_ids], 1)
    assert not torch.allclose(torch.stack(res.logits[0]), only_public[1:], atol=1e-3)


def test_public_prefix_is_served_from_the_service_and_stays_exact(system):
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    prefix = "system: be helpful. "
    spd = system.generate(PROMPTS[:2], params, public_prefix=prefix)
    tok = system.service.tokenizer
    engine = Engine(system.service.model, tok, EngineConfig(num_pages=64, attention_backend="torch"))
    ids = [tok.encode(prefix) + tok.encode(p, add_special_tokens=False) for p in PROMPTS[:2]]
    plain = engine.generate(ids, params)
    assert [s.token_ids for s in spd] == [p.token_ids for p in plain]


def test_late_send_point_gives_the_same_tokens(llama_system):
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    service = llama_system.service
    early_config = service.config
    service.config = replace(early_config, send_point="late")
    try:
        late = llama_system.generate(PROMPTS, params)
    finally:
        service.config = early_config
    engine = Engine(service.model, service.tokenizer, EngineConfig(num_pages=64, attention_backend="torch"))
    assert [r.token_ids for r in late] == [p.token_ids for p in engine.generate(PROMPTS, params)]


def test_unknown_send_point_is_rejected():
    with pytest.raises(ValueError, match="send_point"):
        ServiceConfig(send_point="sometimes")
