"""Plain completion through the text-completion inferlet on the real Gemma 3 270M."""

import pytest

from pie.runtime import PieRuntime, RuntimeConfig


@pytest.mark.real_model
@pytest.mark.slow
def test_text_completion_inferlet_matches_engine_greedy_on_gemma(real_model, ids):
    from core.engine import Engine
    from core.sampling import SamplingParams

    prompt = "The capital of France is"
    engine = Engine(real_model.model, real_model.tokenizer)
    expected = list(engine.generate([prompt], SamplingParams(max_new_tokens=8))[0].token_ids)
    with PieRuntime(real_model.model, real_model.tokenizer, RuntimeConfig(num_pages=32, page_size=16)) as rt:
        out = rt.run("text_completion", [prompt, "8"], timeout=600)
    assert ids(out) == expected
    assert out.split("\n", 1)[1] == real_model.tokenizer.decode(expected)
