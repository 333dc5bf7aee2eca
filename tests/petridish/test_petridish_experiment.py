"""The experiment's plan and figures (the measurements themselves run in `python -m experiments.petridish`)."""

import pytest

from experiments.harness import ConfigError, compose_config
from experiments.petridish import EXPERIMENT, SYSTEMS


def _cfg(*overrides):
    return compose_config("petridish", ["profile=ci", "wandb.mode=disabled", *overrides])


def test_ci_plan_covers_every_figure():
    points = EXPERIMENT.plan(_cfg())
    assert {p["figure"] for p in points} == {"users", "model", "input", "output", "breakdown"}
    assert [p["users"] for p in points if p["figure"] == "users"] == [1, 2, 4]


def test_figures_setting_selects_a_subset_of_measurements():
    points = EXPERIMENT.plan(_cfg("sweeps.ci.figures=[breakdown]"))
    assert [p["send_point"] for p in points] == ["early", "late"]


@pytest.mark.parametrize(
    ("override", "message"),
    [("sweeps.ci.send_points=[soon]", "send_points"), ("sweeps.ci.models=[gpt-9]", "random-llama"),
     ("workload.users=9", "exceeds"), ("sweeps.ci.figures=[fig99]", "sweep.figures")],
)
def test_bad_settings_fail_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        EXPERIMENT.plan(_cfg(override))


def _records():
    rows = []
    for n in (1, 2, 4):
        for s, tpot in zip(SYSTEMS, (0.10, 0.12, 0.40)):
            if s == "full_isolation" and n > 2:  # capped by isolation_max_users, as at profile=ci
                continue
            rows.append({"figure": "users", "users": n, "system": s, "tpot_s": tpot * n,
                         "throughput_tok_per_s": n / tpot, "total_bytes": (n if s == "full_isolation" else 1) * 2**30})
    for m, params in (("small", 1e6), ("default", 2.7e8)):
        rows += [{"figure": "model", "model": m, "params": params, "system": s, "tpot_s": t}
                 for s, t in zip(SYSTEMS, (0.1, 0.11, 0.3))]
    for x in (32, 128):
        rows += [{"figure": "input", "prompt_tokens": x, "system": s, "tpot_s": t}
                 for s, t in (("no_protection", 0.1), ("spd", 0.12))]
        rows += [{"figure": "output", "new_tokens": x, "system": s, "tpot_s": t}
                 for s, t in (("no_protection", 0.1), ("spd", 0.12))]
    for sp, wait in (("early", 0.001), ("late", 0.004)):
        rows.append({"figure": "breakdown", "send_point": sp, "tpot_s": 0.1 + wait,
                     **{f"{c}_s": 0.002 for c in ("q_proj", "send_q", "kv_proj", "attention_merge", "o_proj", "mlp")},
                     "receive_s": wait})
    return rows


def test_every_figure_draws_and_states_our_number():
    cfg = _cfg()
    for name, fig in EXPERIMENT.figures.items():
        result = fig.fn(_records(), cfg)
        assert result.figure is not None and result.ours, name
    ours = EXPERIMENT.figures["fig4_latency_vs_users"].fn(_records(), cfg).ours
    assert "4 users: SPD 1.20x no protection" in ours and "2 users: full isolation 3.33x SPD" in ours
