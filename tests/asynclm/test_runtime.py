"""The runtime on a tiny random model: interrupts are exact, every system completes the same calls."""

from __future__ import annotations

import pytest
import torch

from asynclm.clock import StepCostModel, VirtualClock
from asynclm.executor import Executor
from asynclm.functions import LatencyModel
from asynclm.protocol import FunctionCall, Interrupt, Tag
from asynclm.runtime import AsyncLMRuntime, AsyncTask, Mode
from asynclm.sources import TeacherForcedSource
from asynclm.trap import TrapAction
from core.sequence import KVSequence

CALLS = [
    FunctionCall(0, "slow", {"x": 1}),
    FunctionCall(1, "fast", {"y": "a"}),
    FunctionCall(2, "fast", {"y": "b"}),
]
IMPLS = {"slow": lambda x: x * 10, "fast": lambda y: y.upper(), "boom": lambda: 1 / 0}


def _run(tiny, vocab, mode, calls=CALLS, deps=None, latency=None, key="t", prompt="Q: do it.", **kw):
    clock = VirtualClock()
    latency = latency or LatencyModel(fixed={"slow": 0.05, "fast": 0.002, "boom": 0.001})
    ex = Executor(clock, latency, IMPLS)
    rt = AsyncLMRuntime(tiny.model, vocab, ex, mode, eos_token_ids=tiny.tokenizer.eos_token_ids, num_pages=64,
                        page_size=8, trap_action=kw.pop("trap_action", None), **kw.pop("runtime_kw", {}))
    tasks = []
    for k in key.split(","):
        src = TeacherForcedSource(vocab, calls, deps or [()] * len(calls), ex.expected_latency, "ok.",
                                  tiny.tokenizer.eos_token_ids[0], **kw.pop("source_kw", {}))
        tasks.append(AsyncTask(k, tiny.tokenizer.encode(prompt + k), src, record_logits=True, **kw))
    try:
        return rt.run(tasks), rt
    finally:
        ex.close()


def _full_forward_logits(model, token_ids: list[int]) -> torch.Tensor:
    pool = model.new_kv_pool(64, 8)
    seq = KVSequence(pool)
    (out,) = model.forward(pool, [seq.entry(token_ids=token_ids, logits_at=list(range(len(token_ids))))])
    return out.logits


def _injected_mid_decode(vocab, tokens: list[int]) -> bool:
    """An [INTR] right after a token the model generated, not after a [TRAP][END] pause."""
    intr, trap, end = vocab.id(Tag.INTR), vocab.id(Tag.TRAP), vocab.id(Tag.END)
    return any(t == intr and tokens[i - 1] != intr and not (tokens[i - 1] == end and tokens[i - 2] == trap)
               for i, t in enumerate(tokens) if i >= 2)


@pytest.mark.parametrize("trap_action", [TrapAction.KEEP, TrapAction.SWAP, TrapAction.RECOMPUTE])
def test_interrupt_mid_decode_logits_match_full_recompute(tiny, vocab, trap_action):
    (res,), _ = _run(tiny, vocab, Mode.ASYNC, trap_action=trap_action)
    assert res.finish_reason == "eos" and len(res.interrupts) == 3
    tokens = res.token_ids[:-1]  # the final EOS is sampled, never fed
    assert _injected_mid_decode(vocab, tokens), vocab.render(tokens)
    assert trap_action in res.trap_actions
    ref = _full_forward_logits(tiny.model, tokens)
    for index, logits in res.logits:
        torch.testing.assert_close(logits, ref[index], rtol=1e-4, atol=1e-4)


def test_batched_sequences_each_receive_their_own_interrupts(tiny, vocab):
    results, rt = _run(tiny, vocab, Mode.ASYNC, key="a,bb,ccc")
    assert len(results) == 3
    for res in results:
        assert sorted(i.call_id for i in res.interrupts) == [0, 1, 2]
        assert {i.call_id: i.value for i in res.interrupts} == {0: 10, 1: "A", 2: "B"}
        ref = _full_forward_logits(tiny.model, res.token_ids[:-1])
        for index, logits in res.logits:
            torch.testing.assert_close(logits, ref[index], rtol=1e-4, atol=1e-4)
    assert rt.num_forwards < sum(r.generated_tokens for r in results)  # the three decoded in shared passes


@pytest.mark.parametrize("mode", list(Mode))
def test_every_system_makes_the_same_calls_and_gets_every_result(tiny, vocab, mode):
    (res,), _ = _run(tiny, vocab, mode)
    assert res.finish_reason == "eos"
    assert sorted(c.body() for c in res.calls) == sorted(c.body() for c in CALLS)
    assert sorted(i.call_id for i in res.interrupts) == [0, 1, 2]
    assert not res.malformed and not res.violations
    ref = _full_forward_logits(tiny.model, res.token_ids[:-1])
    for index, logits in res.logits[-3:]:
        torch.testing.assert_close(logits, ref[index], rtol=1e-4, atol=1e-4)
    if mode is Mode.ASYNC_NAIVE:
        assert res.recomputed_tokens > 0  # it restarts the completion at each interrupt
    else:
        assert res.recomputed_tokens == 0


def test_sync_waits_for_each_result_before_the_next_call(tiny, vocab):
    (res,), _ = _run(tiny, vocab, Mode.SYNC)
    text = vocab.render(res.token_ids)
    assert text.index("[INTR]0") < text.index("[CALL]1") < text.index("[INTR]1") < text.index("[CALL]2")


def test_dependent_call_is_emitted_only_after_its_dependency_returns(tiny, vocab):
    (res,), _ = _run(tiny, vocab, Mode.ASYNC, deps=[(), (), (0,)])
    text = vocab.render(res.token_ids)
    assert text.index("[INTR]0") < text.index("fast(y='b')")
    assert "[TRAP][END]" in text


def test_failing_function_gives_an_error_interrupt_and_the_task_ends(tiny, vocab):
    calls = [FunctionCall(0, "boom", {}), FunctionCall(1, "fast", {"y": "z"})]
    (res,), _ = _run(tiny, vocab, Mode.ASYNC, calls=calls)
    name = {c.call_id: c.name for c in res.calls}
    by_name = {name[i.call_id]: i for i in res.interrupts}
    assert "ZeroDivisionError" in by_name["boom"].error and by_name["fast"].value == "Z"
    assert res.finish_reason == "eos"


class _Replay:
    """Emits fixed tokens, then EOS: stands in for a model that writes malformed call syntax."""

    def __init__(self, tokens, eos):
        self.tokens, self.eos = list(tokens), eos

    def next_token(self, task, logits):
        return self.tokens.pop(0) if self.tokens else self.eos


def test_malformed_call_from_the_model_is_reported_not_crashed_on(tiny, vocab):
    clock = VirtualClock()
    with Executor(clock, LatencyModel(), IMPLS) as ex:
        rt = AsyncLMRuntime(tiny.model, vocab, ex, Mode.ASYNC, eos_token_ids=tiny.tokenizer.eos_token_ids,
                            num_pages=32, page_size=8)
        bad = [vocab.id(Tag.CALL), *vocab.encode_text("slow(x=1"), vocab.id(Tag.END)]
        (res,) = rt.run([AsyncTask("m", tiny.tokenizer.encode("Q"), _Replay(bad, tiny.tokenizer.eos_token_ids[0]))])
    assert len(res.malformed) == 1 and "not a Python expression" in res.malformed[0].reason
    assert res.interrupts[0].is_error and "malformed call" in res.interrupts[0].error
    assert res.finish_reason == "eos" and not res.calls


def test_user_interrupt_reaches_async_mid_task_but_sync_only_at_a_boundary(tiny, vocab):
    user = [(0.0, Interrupt("user", "also check the weather"))]
    kw = dict(user_interrupts=user, source_kw={"expected_user_messages": 1})
    (a,), _ = _run(tiny, vocab, Mode.ASYNC, **dict(kw, source_kw=dict(kw["source_kw"])))
    (s,), _ = _run(tiny, vocab, Mode.SYNC, **kw)
    for res in (a, s):
        assert any(i.call_id == "user" for i in res.interrupts) and res.finish_reason == "eos"
    a_text, s_text = vocab.render(a.token_ids), vocab.render(s.token_ids)
    # Async: injected right after the first decode step; Sync: only at the first wait (with a result).
    assert a_text.index("[INTR]user") < a_text.index("[CALL]")
    assert s_text.index("[INTR]user") > s_text.index("[CALL]0[HEAD]slow(x=1)[END]")


def test_wall_clock_runtime_really_waits_for_calls_and_completes(tiny, vocab):
    from asynclm.clock import WallClock

    latency = LatencyModel(fixed={"slow": 0.3, "fast": 0.05})
    with Executor(WallClock(), latency, IMPLS) as ex:
        rt = AsyncLMRuntime(tiny.model, vocab, ex, Mode.ASYNC, eos_token_ids=tiny.tokenizer.eos_token_ids,
                            num_pages=64, page_size=8)
        src = TeacherForcedSource(vocab, CALLS, [()] * 3, ex.expected_latency, "ok.", tiny.tokenizer.eos_token_ids[0])
        (res,) = rt.run([AsyncTask("w", tiny.tokenizer.encode("Q"), src)])
    assert sorted(i.call_id for i in res.interrupts) == [0, 1, 2] and res.finish_reason == "eos"
    assert res.e2e_s >= 0.3  # the slow call's result cannot arrive before its latency has passed
    assert [r for r in res.exec_s if r >= 0.3]  # and it was really waited for, on the wall clock


@pytest.mark.parametrize("mode, requests", [(Mode.SYNC, 3), (Mode.SYNC_PARALLEL, 1)])
def test_request_ttft_adds_one_ttft_per_new_request_to_a_blocking_baseline(tiny, vocab, mode, requests):
    # A fitted step cost makes both runs' clocks deterministic, so the difference is exactly the charges:
    # Sync sends a new request after each of its 3 results, Sync-Parallel once after its single round.
    cost = StepCostModel(0.01, 0.001, 0.0)
    (plain,), _ = _run(tiny, vocab, mode, runtime_kw={"step_cost": cost})
    (stateless,), _ = _run(tiny, vocab, mode, runtime_kw={"step_cost": cost, "request_ttft_s": 0.5})
    assert stateless.token_ids == plain.token_ids
    assert plain.request_s == 0.0
    assert stateless.request_s == pytest.approx(0.5 * requests)
    assert stateless.e2e_s - plain.e2e_s == pytest.approx(0.5 * requests)
    assert stateless.ttft_s == pytest.approx(plain.ttft_s)  # the first request's prefill is outside the span
    assert plain.span_s == pytest.approx(plain.e2e_s - plain.ttft_s)


def test_with_request_ttft_async_naive_pays_a_ttft_per_interrupt_instead_of_a_reprefill(tiny, vocab):
    cost = StepCostModel(0.01, 0.001, 0.0)
    (naive,), _ = _run(tiny, vocab, Mode.ASYNC_NAIVE, runtime_kw={"step_cost": cost, "request_ttft_s": 0.5})
    (asyn,), _ = _run(tiny, vocab, Mode.ASYNC, runtime_kw={"step_cost": cost, "request_ttft_s": 0.5})
    assert naive.recomputed_tokens == 0 and naive.request_s >= 0.5
    assert asyn.request_s == 0.0
    assert sorted(i.call_id for i in naive.interrupts) == [0, 1, 2]
