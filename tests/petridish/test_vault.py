"""The vault's two attention paths (dense cached on the CPU, paged on a GPU) give the same answer."""

import pytest
import torch
from tests_petridish_helpers import load_tiny

from core.sampling import SamplingParams
from petridish.messages import PromptRequest, QueryMessage
from petridish.obfuscation import ObfuscationConfig, obfuscated_buffer
from petridish.vault import PromptTooLongError, PromptVault, plain_buffer


@pytest.mark.parametrize("obfuscate", [False, True])
def test_dense_and_paged_private_attention_agree(obfuscate):
    model, tok = load_tiny("gemma3")  # sliding-window layers: the window is applied by position
    answers = []
    for dense in (True, False):
        pool = model.new_kv_pool(64, 16)
        if obfuscate:
            req = PromptRequest(0, "I live in <redacted>Oslo</redacted> now, ok", obfuscation=ObfuscationConfig(gamma=3))
            buf = obfuscated_buffer(model, tok, pool, req)
        else:
            buf = plain_buffer(tok, PromptRequest(0, "a private prompt longer than the window", public_prefix="sys: "))
        vault, reply = PromptVault.prefill(model, pool, buf, 0, SamplingParams(), dense=dense)
        rows = reply.num_rows
        q = torch.randn(rows, model.config.num_heads, model.config.head_dim, generator=torch.Generator().manual_seed(1))
        pos = torch.tensor(reply.next_positions) + 3
        answers.append([vault.attend(QueryMessage(0, layer, pos, q)) for layer in range(model.config.num_layers)])
        vault.release()
        assert pool.allocator.num_free == pool.num_pages
    for a, b in zip(*answers):
        torch.testing.assert_close(a.out, b.out, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.lse, b.lse, rtol=1e-5, atol=1e-5)


def test_prompt_larger_than_the_pool_is_rejected():
    model, tok = load_tiny("llama")
    pool = model.new_kv_pool(2, 16)
    with pytest.raises(PromptTooLongError, match="do not fit"):
        PromptVault.prefill(model, pool, plain_buffer(tok, PromptRequest(0, "y" * 40)), 0, SamplingParams())
