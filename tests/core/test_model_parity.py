"""Our model code against transformers on the same weights: logits on prefill and every decode step."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.sequence import KVSequence
from core.testing import tiny_checkpoint, tiny_model

PROMPTS = ["Hello there", "The quick brown fox jumps over the lazy dog", "a"]
STEPS = 32


def _ours_batched_greedy(loaded, prompts, page_size=4):
    """Prefill all prompts in one batch, then decode them together; logits of every step."""
    model, tok = loaded.model, loaded.tokenizer
    pool = model.new_kv_pool(256, page_size)
    seqs = [KVSequence(pool) for _ in prompts]
    ids = [tok.encode(p) for p in prompts]
    outs = model.forward(pool, [s.entry(token_ids=i, logits_at=list(range(len(i)))) for s, i in zip(seqs, ids)])
    prefill = [o.logits for o in outs]
    step_logits = [[o.logits[-1]] for o in outs]
    tokens = [[int(o.logits[-1].argmax())] for o in outs]
    for _ in range(STEPS - 1):
        outs = model.forward(pool, [s.entry(token_ids=[t[-1]]) for s, t in zip(seqs, tokens)])
        for b, o in enumerate(outs):
            step_logits[b].append(o.logits[0])
            tokens[b].append(int(o.logits[0].argmax()))
    return ids, prefill, step_logits, tokens


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma3"])
def test_tiny_model_logits_and_greedy_tokens_match_transformers(family):
    loaded = tiny_model(family)
    hf = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint(family)), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # decode all STEPS tokens, like our loop
    ids, prefill, step_logits, tokens = _ours_batched_greedy(loaded, PROMPTS)
    for b, prompt_ids in enumerate(ids):
        with torch.no_grad():
            ref_prefill = hf(torch.tensor([prompt_ids])).logits[0]
            gen = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=STEPS, do_sample=False,
                              output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        torch.testing.assert_close(prefill[b], ref_prefill, atol=1e-4, rtol=1e-4)
        ref_tokens = gen.sequences[0, len(prompt_ids):].tolist()
        assert tokens[b] == ref_tokens, f"{family} prompt {b}: greedy tokens differ"
        for step, (ours, ref) in enumerate(zip(step_logits[b], gen.logits)):
            torch.testing.assert_close(ours, ref[0], atol=1e-4, rtol=1e-4, msg=f"{family} prompt {b} step {step}")
