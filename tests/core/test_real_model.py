"""Gemma 3 270M (the embedded GGUF): our engine and transformers agree token for token."""

import pytest
import torch

from core.config import EngineConfig
from core.engine import Engine
from core.loader import default_model_path
from core.sampling import SamplingParams

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Photosynthesis is the process by which plants",
]


@pytest.fixture(scope="module")
def hf_gemma():
    from transformers import AutoModelForCausalLM

    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    return model


def test_gemma3_270m_greedy_32_tokens_match_transformers(real_model, hf_gemma):
    engine = Engine(real_model.model, real_model.tokenizer, EngineConfig(page_size=16, num_pages=256))
    outs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=32, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        ids = real_model.tokenizer.encode(prompt)
        with torch.no_grad():
            ref = hf_gemma.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
        assert out.token_ids == ref, f"{prompt!r}: {out.text!r} vs {real_model.tokenizer.decode(ref)!r}"


def test_gemma3_270m_prefill_logits_match_transformers(real_model, hf_gemma):
    from core.sequence import KVSequence

    ids = real_model.tokenizer.encode(" ".join(PROMPTS))
    pool = real_model.model.new_kv_pool(16, 16)
    ours = real_model.model.forward(pool, [KVSequence(pool).entry(token_ids=ids, logits_at=range(len(ids)))])[0].logits
    with torch.no_grad():
        ref = hf_gemma(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=1e-3)
