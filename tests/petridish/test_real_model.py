"""SPD on the real default model (Gemma 3 270M): same greedy tokens as the plain engine."""

import pytest
import torch

from core.config import EngineConfig
from core.engine import Engine
from core.sampling import SamplingParams
from petridish.model_spec import ModelSpec
from petridish.system import Petridish


@pytest.mark.real_model
@pytest.mark.slow
def test_spd_on_gemma3_270m_matches_the_plain_engine(real_model):
    prompts = ["My blood pressure this morning was 150/95 and I feel dizzy. What should I do?",
               "Summarise: the quarterly revenue fell 12 percent while costs rose."]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    spec = ModelSpec("gemma3-270m")
    loaded = (real_model.model, real_model.tokenizer)  # users map these weights: no second load
    with Petridish(spec, num_users=2, keep_logits=True, loaded=loaded) as pd:
        spd = pd.generate(prompts, params)
        engine = Engine(pd.service.model, pd.service.tokenizer, EngineConfig(num_pages=64))
        plain = engine.generate(prompts, params)
    assert [r.error for r in spd] == [None, None]
    assert [r.token_ids for r in spd] == [p.token_ids for p in plain]
    assert all(torch.isfinite(torch.stack(r.logits[0])).all() for r in spd)
