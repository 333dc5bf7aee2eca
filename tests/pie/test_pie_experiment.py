"""CI reproduction check: ``experiments.pie`` runs end to end at profile=ci on the tiny model.

The tiny model's compute is negligible, so the paper's speed-ups (which come from saving model
work) are not asserted here; the claims that do not depend on model size are: a warm launch is
faster than loading a compiled component from disk, a control call is far cheaper than a decode
step, and decoding takes a handful of host calls per output token.
"""

import pytest

from experiments.harness.testing import run_experiment


@pytest.mark.slow
def test_pie_experiment_regenerates_every_figure(tmp_path):
    result = run_experiment("pie", [
        "model=tiny-random", "model.family=llama", "sweeps.ci.inferlets=[text_completion,sandbox_probe]",
        "sweeps.ci.batch_sizes=[1]", "sweeps.ci.agents=[1]", "sweeps.ci.agent_turns=1", "sweeps.ci.thought_tokens=4",
        "sweeps.ci.fig7.turns=1", "sweeps.ci.fig7.thought_tokens=4", "sweeps.ci.tpot.tokens=6", "sweeps.ci.tpot.pairs=2",
        "sweeps.ci.launch_concurrency=[1,4]", "sweeps.ci.cold_launch=false", "sweeps.ci.policies=[eager,adaptive]",
        "sweeps.ci.policy_inferlets=3", "sweeps.ci.decode_tokens=4", "workload.tool_ms=1",
        "workload.react_prompt='Tools: search[query].'", "workload.case_study_prompt='Tools: search[query], python[code].'",
    ], tmp_path)
    assert set(result.figures) == {
        "table2_inferlet_size", "table3_tpot_overhead", "fig6_agent", "fig7_agent_export", "fig8_reasoning",
        "fig9_launch_latency", "fig10_call_latency", "fig11_calls_per_token", "table5_batching_policies",
    }
    rec = result.records
    launch = {(r["mode"], r["concurrent"]): r["launch_s"] for r in rec if r["figure"] == "fig9"}
    assert launch[("warm", 1)] < launch[("disk", 1)]
    (calls,) = [r for r in rec if r["figure"] == "fig10"]
    assert calls["control_call_s"] < calls["decode_step_s"]
    (fig11,) = [r for r in rec if r["figure"] == "fig11"]
    assert 1 <= fig11["calls_per_token"] <= 8  # embed + forward + get-next-dist per token, plus set-up
    (tpot,) = [r for r in rec if r["figure"] == "table3"]
    assert tpot["pairs"] == len(tpot["overhead_pairs"]) == 2
    assert tpot["forward_s"] > 0 and tpot["pie_outside_s"] > 0  # the forward clock saw both systems' steps


def test_unknown_inferlet_or_policy_is_refused_before_any_work():
    from experiments.harness import ConfigError, compose_config
    from experiments.harness.runner import load_experiment

    experiment = load_experiment("pie")
    with pytest.raises(ConfigError, match="nope"):
        experiment.plan(compose_config("pie", ["sweeps.ci.inferlets=[nope]"]))
    with pytest.raises(ConfigError, match="batching policies"):
        experiment.plan(compose_config("pie", ["runtime.policy=fifo"]))
    with pytest.raises(ConfigError, match="tpot"):
        experiment.plan(compose_config("pie", ["sweeps.ci.tpot.tokens=2"]))
