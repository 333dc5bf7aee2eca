"""The engine: batching, chunked prefill and preemption never change what a request generates."""

import pytest
import torch

from core.config import EngineConfig
from core.engine import Engine, RequestTooLargeError
from core.sampling import SamplingParams, probabilities
from core.sequence import KVSequence

PROMPTS = ["Once upon a time", "The engine batches requests of different lengths together", "Hi"]


def _greedy_alone(loaded, prompt, n):
    """Plain decoding with the forward primitive, one request at a time: the reference."""
    model, tok = loaded.model, loaded.tokenizer
    pool = model.new_kv_pool(128, 4)
    seq = KVSequence(pool)
    logits = model.forward(pool, [seq.entry(token_ids=tok.encode(prompt))])[0].logits[-1]
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = model.forward(pool, [seq.entry(token_ids=[out[-1]])])[0].logits[-1]
    return out


@pytest.mark.parametrize("cfg", [
    EngineConfig(page_size=4, num_pages=256),
    EngineConfig(page_size=16, num_pages=64, prefill_chunk_size=5, max_batch_tokens=8),  # chunked prefill
    EngineConfig(page_size=4, num_pages=24, max_batch_size=3),  # too few pages: forces preemption
])
def test_batched_engine_generates_what_plain_decoding_generates(tiny_llama, cfg):
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, cfg)
    outs = engine.generate(PROMPTS, params)
    for prompt, out in zip(PROMPTS, outs):
        assert out.token_ids == _greedy_alone(tiny_llama, prompt, 24)
        assert out.finished and out.finish_reason == "length"
        assert out.metrics.ttft_s > 0 and out.metrics.tpot_s > 0
    assert engine.pool.allocator.num_free == cfg.num_pages  # every page returned


def test_preemption_happens_under_page_pressure_and_is_counted(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, EngineConfig(page_size=4, num_pages=24, max_batch_size=3))
    outs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=24, ignore_eos=True))
    assert sum(o.metrics.num_preemptions for o in outs) > 0


def test_seeded_sampling_is_reproducible_and_differs_across_seeds(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, EngineConfig(page_size=8, num_pages=64))
    runs = [engine.generate("Hello", SamplingParams(max_new_tokens=16, temperature=1.0, seed=s, ignore_eos=True))[0]
            for s in (1, 1, 2)]
    assert runs[0].token_ids == runs[1].token_ids != runs[2].token_ids


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert (probabilities(logits, SamplingParams(temperature=1.0, top_k=2)) > 0).tolist() == [True, True, False, False]
    p = probabilities(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert (p > 0).tolist() == [True, True, False, False] and abs(float(p.sum()) - 1) < 1e-6


def test_stop_strings_cut_the_text(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, EngineConfig(page_size=8, num_pages=64))
    full = engine.generate("Once", SamplingParams(max_new_tokens=20, ignore_eos=True))[0].text
    stop = full[5:7]
    out = engine.generate("Once", SamplingParams(max_new_tokens=20, ignore_eos=True, stop_strings=(stop,)))[0]
    assert out.finish_reason == "stop_string" and stop not in out.text and full.startswith(out.text)


def test_streaming_yields_every_token_in_order(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, EngineConfig(page_size=8, num_pages=64))
    deltas = list(engine.stream("Once upon", SamplingParams(max_new_tokens=10, ignore_eos=True)))
    assert [d.new_token_ids[0] for d in deltas] == deltas[-1].token_ids == _greedy_alone(tiny_llama, "Once upon", 10)
    assert deltas[-1].finished and not any(d.finished for d in deltas[:-1])


def test_a_request_larger_than_the_pool_is_refused_up_front(tiny_llama):
    engine = Engine(tiny_llama.model, tiny_llama.tokenizer, EngineConfig(page_size=4, num_pages=4))
    with pytest.raises(RequestTooLargeError, match="needs 5 KV pages but the pool has 4"):
        engine.add_request([5] * 10, SamplingParams(max_new_tokens=10))
    with pytest.raises(RequestTooLargeError, match="exceeds the model's 512 positions"):
        engine.add_request([5] * 10, SamplingParams(max_new_tokens=600))
