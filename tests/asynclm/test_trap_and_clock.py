from asynclm.clock import StepCostModel, VirtualClock
from asynclm.executor import Executor
from asynclm.functions import LatencyModel
from asynclm.protocol import FunctionCall
from asynclm.runtime import AsyncLMRuntime, AsyncTask, Mode
from asynclm.sources import TeacherForcedSource
from asynclm.trap import TrapAction, TrapCostModel


def test_policy_map_keeps_short_waits_recomputes_short_contexts_swaps_long_ones():
    m = TrapCostModel(recompute_s=(0.0, 1e-4, 1e-7), swap_s=(2e-3, 1e-6), hold_cost_s_per_token_s=1e-4)
    assert m.choose(1000, 1e-4) is TrapAction.KEEP
    assert m.choose(8, 100.0) is TrapAction.RECOMPUTE  # 0.8 ms of prefill < 2 ms swap overhead
    assert m.choose(100_000, 100.0) is TrapAction.SWAP  # quadratic recompute loses to linear swap
    grid = m.policy_map([8, 100_000], [1e-4, 100.0])
    assert grid == [[TrapAction.KEEP, TrapAction.RECOMPUTE], [TrapAction.KEEP, TrapAction.SWAP]]


def test_calibrated_clock_charges_the_same_time_for_the_same_tokens(tiny, vocab):
    cost = StepCostModel.calibrate(tiny.model, contexts=(16, 64), prefills=(8, 32), repeats=1)
    assert min(cost.a, cost.b, cost.c) >= 0.0
    calls = [FunctionCall(0, "f", {"x": 1}), FunctionCall(1, "f", {"x": 2})]
    e2e = []
    for _ in range(2):
        with Executor(VirtualClock(), LatencyModel(fixed={"f": 0.01}), {"f": lambda x: x}) as ex:
            rt = AsyncLMRuntime(tiny.model, vocab, ex, Mode.SYNC, eos_token_ids=tiny.tokenizer.eos_token_ids,
                                num_pages=32, page_size=8, step_cost=cost)
            src = TeacherForcedSource(vocab, calls, [(), ()], ex.expected_latency, "ok", 1)
            (res,) = rt.run([AsyncTask("c", tiny.tokenizer.encode("Q"), src)])
        e2e.append(res.e2e_s)
        # Sync: the timeline is compute plus each call's latency, nothing else
        assert abs(res.e2e_s - (rt.forward_s + 0.02)) < 1e-9
    assert e2e[0] == e2e[1]


def test_replay_reproduces_the_real_models_calibrated_timeline_exactly(tiny, vocab):
    from asynclm.clock import ReplayModel

    cost = StepCostModel(1e-3, 2e-4, 1e-7)
    calls = [FunctionCall(0, "f", {"x": 1}), FunctionCall(1, "f", {"x": 2}), FunctionCall(2, "g", {})]
    out = []
    for model in (tiny.model, ReplayModel(tiny.model.config.vocab_size)):
        with Executor(VirtualClock(), LatencyModel(fixed={"f": 0.05, "g": 0.2}), {"f": lambda x: x, "g": dict}) as ex:
            rt = AsyncLMRuntime(model, vocab, ex, Mode.ASYNC, eos_token_ids=tiny.tokenizer.eos_token_ids,
                                num_pages=32, page_size=8, step_cost=cost)
            src = TeacherForcedSource(vocab, calls, [(), (), (0,)], ex.expected_latency, "ok", 1)
            (res,) = rt.run([AsyncTask("r", tiny.tokenizer.encode("Q"), src)])
        out.append(res)
    assert out[0].token_ids == out[1].token_ids
    assert out[0].e2e_s == out[1].e2e_s
