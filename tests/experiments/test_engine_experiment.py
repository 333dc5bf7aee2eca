"""The engine benchmark through the whole harness, on the tiny random model, in one process."""

from __future__ import annotations

import json

import pytest

from experiments.harness import FigureFailedError, read_rows, replot
from experiments.harness.runner import load_experiment
from experiments.harness.testing import run_experiment


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory, tiny_engine_overrides):
    results_dir = tmp_path_factory.mktemp("results")
    return results_dir, run_experiment("engine", tiny_engine_overrides, results_dir)


def test_engine_experiment_writes_rows_figures_and_summaries(engine_run):
    tmp_path, result = engine_run

    # One row per sweep point, in sweep order: 2 prefill lengths and 2 batch sizes, for both systems.
    assert [r["index"] for r in result.rows] == list(range(8))
    assert {(r["phase"], r["system"]) for r in result.records} == {
        (phase, system) for phase in ("prefill", "decode") for system in ("ours", "transformers")
    }
    assert read_rows(result.rows_path) == json.loads(json.dumps(result.rows))
    row = result.rows[0]
    assert row["machine"]["cpu_cores"] >= 1 and row["machine"]["torch"]
    assert row["config"]["model"]["source"] == "tiny-random"

    figures = tmp_path / "engine" / "figures"
    for name in ("fig_prefill_throughput", "fig_decode_throughput"):
        assert (figures / f"{name}-cpu.png").stat().st_size > 0
        assert (figures / f"{name}-cpu.pdf").stat().st_size > 0
        summary = json.loads((figures / f"{name}-cpu.json").read_text())
        assert summary["command"].startswith("python -m experiments.engine profile=ci model=tiny-random")
        assert summary["device"].startswith("CPU: ")


def test_engine_greedy_tokens_match_transformers(engine_run):
    # The benchmark compares two implementations of the same weights: both must produce the same
    # greedy tokens, or the timing comparison is between different computations.
    records = engine_run[1].records
    for phase, key in (("prefill", "first_token"), ("decode", "output_token_ids")):
        ours = {
            r["prompt_len"] * 100 + r["batch_size"]: r[key]
            for r in records
            if r["phase"] == phase and r["system"] == "ours"
        }
        theirs = {
            r["prompt_len"] * 100 + r["batch_size"]: r[key]
            for r in records
            if r["phase"] == phase and r["system"] == "transformers"
        }
        assert ours == theirs
    decode = [r for r in records if r["phase"] == "decode"]
    assert all(
        len(seqs) == r["batch_size"] and all(len(s) == 3 for s in seqs)
        for r, seqs in ((r, r["output_token_ids"]) for r in decode)
    )


def test_replot_redraws_the_same_summaries_from_rows(engine_run):
    _, result = engine_run
    redrawn = replot(load_experiment("engine"), result.rows_path, figures_subdir="replot")
    assert {n: s["ours"] for n, s in redrawn.summaries.items()} == {n: s["ours"] for n, s in result.summaries.items()}
    assert redrawn.figures["fig_decode_throughput"].parent.name == "replot"


def test_broken_figure_keeps_the_others_and_says_how_to_replot(engine_run, monkeypatch):
    _, result = engine_run
    experiment = load_experiment("engine")

    def broken(records, cfg):
        raise KeyError("no_such_metric")

    monkeypatch.setattr(experiment.figures["fig_prefill_throughput"], "fn", broken)
    with pytest.raises(FigureFailedError, match=r"fig_prefill_throughput: KeyError.*replot="):
        replot(experiment, result.rows_path, figures_subdir="broken")
    assert (result.rows_path.parent / "figures" / "broken" / "fig_decode_throughput-cpu.png").exists()


def test_model_loads_once_per_worker_and_run_logs_offline_to_wandb(tmp_path, tiny_engine_overrides, monkeypatch):
    from experiments.harness import context

    calls = []
    real_load = context.load_configured_model
    monkeypatch.setattr(context, "load_configured_model", lambda cfg: calls.append(1) or real_load(cfg))
    context.clear_process_cache()
    overrides = [*tiny_engine_overrides, "sweep.systems=[ours]", "wandb.mode=offline"]  # 4 points, our engine
    result = run_experiment("engine", overrides, tmp_path)
    assert len(result.rows) == 4 and len(calls) == 1

    runs = list((tmp_path / "engine" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb")), "the offline run holds no logged data"
