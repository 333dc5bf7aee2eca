"""Prompt Obfuscation: decoys are as probable as the secret, and every virtual prompt is exact."""

import pytest
import torch

from core.config import EngineConfig
from core.engine import Engine
from core.sampling import SamplingParams
from core.sequence import KVSequence
from petridish.messages import PromptRequest
from petridish.obfuscation import (
    ObfuscationConfig,
    ObfuscationError,
    obfuscated_buffer,
    plan_virtual_prompts,
    same_bucket,
    split_redacted,
)

PROMPT = "my name is <redacted>bob</redacted> and I live in <redacted>Oslo</redacted>, hi"
CONFIG = ObfuscationConfig(gamma=4, epsilon=0.05, seed=3, true_row=2)


@pytest.fixture(scope="module")
def loaded(llama_spec):
    return llama_spec.load()


def _token_probs(model, ids: list[int]) -> torch.Tensor:
    """p(ids[i] | ids[:i]) for every i >= 1, by one plain forward."""
    pool = model.new_kv_pool(32, 16)
    (out,) = model.forward(pool, [KVSequence(pool).entry(token_ids=ids, logits_at=list(range(len(ids) - 1)))])
    return torch.softmax(out.logits, -1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]


def test_split_redacted_finds_every_span():
    assert split_redacted("a <redacted>b</redacted> c<redacted>d</redacted>") == [
        ("a ", False), ("b", True), (" c", False), ("d", True)
    ]


def test_decoys_fall_in_the_true_tokens_probability_buckets(loaded):
    model, tok = loaded
    pool = model.new_kv_pool(256, 16)
    vp = plan_virtual_prompts(model, tok, pool, PromptRequest(0, PROMPT, obfuscation=CONFIG))
    assert len(vp.rows) == CONFIG.gamma
    true_ids = vp.ids(CONFIG.true_row)
    assert tok.decode(true_ids[1:]) == PROMPT.replace("<redacted>", "").replace("</redacted>", "")
    span = len(tok.encode("bob", add_special_tokens=False))
    start = len(vp.shared)
    true_p = _token_probs(model, true_ids)[start - 1 : start - 1 + span]
    for r in range(len(vp.rows)):
        ids = vp.ids(r)
        assert len(ids) == len(true_ids)
        if r == CONFIG.true_row:
            continue
        assert ids[start : start + span] != true_ids[start : start + span]  # a real decoy
        p = _token_probs(model, ids)[start - 1 : start - 1 + span]
        buckets = torch.floor(p / CONFIG.epsilon) == torch.floor(true_p / CONFIG.epsilon)
        assert bool(buckets.all()), f"row {r}: decoy probabilities {p.tolist()} vs true {true_p.tolist()}"
    assert pool.allocator.num_free == pool.num_pages  # sampling gave every page back


def test_relative_bucket_accepts_within_epsilon():
    probs = torch.tensor([0.10, 0.104, 0.2, 0.0951])
    cfg = ObfuscationConfig(prob_dist="rel", epsilon=0.05)
    assert same_bucket(probs, 0.1, cfg).tolist() == [True, True, False, True]


def test_masked_buffer_gives_each_row_the_kv_of_its_own_prompt(loaded):
    model, tok = loaded
    pool = model.new_kv_pool(256, 16)
    request = PromptRequest(0, PROMPT, obfuscation=CONFIG)
    buf = obfuscated_buffer(model, tok, pool, request)
    vp = plan_virtual_prompts(model, tok, pool, request)
    seq = KVSequence(pool)
    (out,) = model.forward(pool, [seq.entry(positions=buf.positions, token_ids=buf.token_ids, mask=buf.mask,
                                            logits_at=buf.last_index)])
    for r in range(len(vp.rows)):
        alone = KVSequence(pool)
        (ref,) = model.forward(pool, [alone.entry(token_ids=vp.ids(r))])
        torch.testing.assert_close(out.logits[r], ref.logits[-1], rtol=1e-4, atol=1e-4)


def test_obfuscated_rows_decode_like_their_virtual_prompts(llama_system):
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    (res,) = llama_system.generate([PROMPT], params, obfuscation=CONFIG)
    assert res.error is None and len(res.rows) == CONFIG.gamma
    model, tok = llama_system.service.model, llama_system.service.tokenizer
    vp = plan_virtual_prompts(model, tok, model.new_kv_pool(256, 16), PromptRequest(0, PROMPT, obfuscation=CONFIG))
    engine = Engine(model, tok, EngineConfig(num_pages=128, attention_backend="torch"))
    plain = engine.generate([vp.ids(r) for r in range(len(vp.rows))], params)
    assert res.rows == [p.token_ids for p in plain]
    # the client's answer is the true row, which is what plain serving of the real prompt gives
    real = engine.generate([PROMPT.replace("<redacted>", "").replace("</redacted>", "")], params)[0]
    assert res.token_ids == real.token_ids


def test_prompt_without_a_redacted_span_is_an_error_for_that_request(llama_system):
    (res,) = llama_system.generate(["nothing secret"], SamplingParams(max_new_tokens=3), obfuscation=CONFIG)
    assert "ObfuscationError" in res.error and "no <redacted>" in res.error


def test_invalid_obfuscation_settings_are_rejected():
    with pytest.raises(ObfuscationError, match="true_row"):
        ObfuscationConfig(gamma=2, true_row=2)
    with pytest.raises(ObfuscationError, match="prob_dist"):
        ObfuscationConfig(prob_dist="kl")
