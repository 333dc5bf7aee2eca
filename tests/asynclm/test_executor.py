import time

import pytest

from asynclm.clock import VirtualClock, WallClock
from asynclm.executor import Executor
from asynclm.functions import LatencyModel
from asynclm.protocol import FunctionCall


def _boom():
    raise RuntimeError("disk on fire")


def _hang():
    time.sleep(2.0)


IMPLS = {"boom": _boom, "hang": _hang, "garbage": lambda: object(), "huge": lambda: "x" * 10_000,
         "add": lambda a, b: a + b}


def _drain(ex: Executor):
    out = []
    while ex.num_pending():
        ex.wait_for_any()
        out += ex.poll()
    return {r.call.name: r for r in out}


@pytest.mark.parametrize("clock", [VirtualClock, WallClock])
def test_failures_become_error_interrupts_and_results_arrive(clock):
    latency = LatencyModel(min_s=0.01, mean_s=0.02, max_s=0.05)
    with Executor(clock(), latency, IMPLS, timeout_s=0.3, max_result_chars=100, simulate_missing=False) as ex:
        for i, name in enumerate(["boom", "hang", "garbage", "huge", "missing"]):
            ex.submit("owner", FunctionCall(i, name, {}))
        ex.submit("owner", FunctionCall(5, "add", {"a": 2, "b": 3}))
        got = _drain(ex)
    assert "RuntimeError: disk on fire" in got["boom"].interrupt.error
    assert "timed out after 0.3 s" in got["hang"].interrupt.error
    assert got["hang"].exec_s >= 0.3 - 1e-9
    assert "non-JSON" in got["garbage"].interrupt.error
    assert "over the 100 limit" in got["huge"].interrupt.error
    assert "no function named 'missing'" in got["missing"].interrupt.error
    assert got["add"].interrupt.value == 5 and not got["add"].interrupt.is_error


def test_virtual_clock_results_are_ready_at_issue_time_plus_latency():
    clock = VirtualClock()
    latency = LatencyModel(fixed={"add": 0.25})
    with Executor(clock, latency, IMPLS) as ex:
        clock.advance(1.0)
        ex.submit("o", FunctionCall(0, "add", {"a": 1, "b": 1}))
        assert ex.poll() == []
        ex.wait_for_any()
        (r,) = ex.poll()
    assert clock.now() == pytest.approx(1.25) and r.ready_at == pytest.approx(1.25)


def test_latency_draws_are_repeatable_and_within_bounds():
    m = LatencyModel(min_s=0.03, mean_s=0.11, max_s=0.5, seed=7)
    draws = [m.sample("f", str(i)) for i in range(2000)]
    assert draws == [m.sample("f", str(i)) for i in range(2000)]
    assert min(draws) >= 0.03 and max(draws) <= 0.5
    assert 0.09 < sum(draws) / len(draws) < 0.12  # clipping at 0.5 pulls the mean a little below 0.11


def test_a_call_takes_the_same_time_whatever_id_it_was_emitted_with():
    # Systems emit the same calls in different orders (Sync blocks, Async does not), so the ids differ;
    # the latency must follow the call, or per-task speedups compare different function times.
    calls = [FunctionCall(0, "f", {"x": 1}), FunctionCall(1, "g", {"y": 2}), FunctionCall(2, "f", {"x": 1})]
    exec_s = []
    for order in ([0, 1, 2], [1, 0, 2]):
        with Executor(VirtualClock(), LatencyModel(), {"f": lambda x: x, "g": lambda y: y}) as ex:
            for new_id, k in enumerate(order):
                ex.submit("owner", FunctionCall(new_id, calls[k].name, calls[k].arguments))
            results = []
            while ex.num_pending():
                ex.wait_for_any()
                results += ex.poll()
        exec_s.append(sorted(round(r.exec_s, 9) for r in results))
    assert exec_s[0] == exec_s[1]
    assert len(set(exec_s[0])) == 3  # a repeated call is drawn anew, not given its first twin's time
