"""The service never receives a private token id, the prompt's text, or any prompt KV.

The service is instrumented: it records every message it receives (``record_messages``) and every
token id it feeds the model; afterwards the test walks every tensor reachable from it.
"""

import pickle

import pytest
import torch

from core.sampling import SamplingParams
from core.sequence import KVSequence
from petridish.messages import PartialAttention, PrefillReply

CANARY = "zqx-CANARY-7731"
PROMPTS = [f"patient {CANARY} has condition kz9", f"account {CANARY[::-1]} balance 8812"]


@pytest.fixture
def served(llama_system):
    """The service's records are reset so they cover exactly this call."""
    system = llama_system
    system.service.received.clear()
    system.service.fed_token_ids.clear()
    results = system.generate(PROMPTS, SamplingParams(max_new_tokens=6, ignore_eos=True))
    return system, results


def _reachable_tensors(root) -> list[torch.Tensor]:
    """Every tensor reachable from ``root`` through attributes, containers and dataclasses."""
    seen, out, stack = set(), [], [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, type)):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            out.append(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack.extend(obj)
        elif isinstance(obj, torch.nn.Module):
            continue  # the weights are the provider's, not the user's
        elif hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return out


def _prompt_kv(model, ids: list[int], public_ids: set[int]) -> list[torch.Tensor]:
    """K and V rows of the prompt, every layer, from a reference prefill: (rows, head_dim) each.

    Layer 0's V depends on the token id alone (no position, no context), so a prompt token that
    is also an output token has the same layer-0 V as the service's copy of that output: public,
    not a leak. Those rows are left out.
    """
    pool = model.new_kv_pool(16, 16)
    seq = KVSequence(pool)
    model.forward(pool, [seq.entry(token_ids=ids, logits_at=None)])
    rows = []
    for layer in range(model.config.num_layers):
        k, v = pool.gather(layer, seq.pages, seq.length)
        if layer == 0:
            private = torch.tensor([t not in public_ids for t in ids])
            v = v[private]
        rows += [k.reshape(-1, k.shape[-1]), v.reshape(-1, v.shape[-1])]
    return rows


def test_service_receives_only_prefill_replies_and_partial_attention(served):
    pd, results = served
    assert pd.service.received
    assert {type(m) for m in pd.service.received} == {PrefillReply, PartialAttention}
    for m in pd.service.received:
        if isinstance(m, PrefillReply):  # only the first output token(s) and a position
            first = next(r for r in results if r.request_id == m.request_id).token_ids[0]
            assert m.first_token_ids == (first,)


def test_no_prompt_text_in_anything_the_service_received(served):
    pd, _ = served
    blob = pickle.dumps(pd.service.received)
    for prompt in PROMPTS:
        for piece in (prompt, CANARY, CANARY[::-1], prompt.encode("utf-8").hex()):
            assert piece.encode() not in blob


def test_service_runs_the_model_only_on_generated_tokens(served):
    pd, results = served
    fed = sorted(pd.service.fed_token_ids)
    # each step feeds the previous output token: all outputs but the last, of every request
    assert fed == sorted(t for r in results for t in r.token_ids[:-1])


def test_no_prompt_kv_among_the_service_tensors(served):
    pd, results = served
    outputs = {t for r in results for t in r.token_ids}
    model, tok = pd.service.model, pd.service.tokenizer
    held = _reachable_tensors(pd.service)
    assert any(t is pd.service.pool.k_cache[0] for t in held)  # the walk does reach the KV pool
    d = model.config.head_dim
    held_rows = [t.reshape(-1, d).float() for t in held if t.dim() >= 2 and t.shape[-1] == d]
    for prompt in PROMPTS:
        secret = torch.cat(_prompt_kv(model, tok.encode(prompt), outputs))
        for rows in held_rows:
            dist = torch.cdist(secret, rows)  # (secret rows, held rows)
            assert float(dist.min()) > 1e-3, "a prompt K/V vector is held by the service"


def test_the_kv_check_would_catch_a_leak(served):
    """Guards the test above: a service pool that did hold prompt KV is detected."""
    pd, _ = served
    model, tok = pd.service.model, pd.service.tokenizer
    secret = torch.cat(_prompt_kv(model, tok.encode(PROMPTS[0]), set()))
    leaky = torch.cat([torch.randn(5, secret.shape[-1]), secret[3:4]])
    assert float(torch.cdist(secret, leaky).min()) <= 1e-3
