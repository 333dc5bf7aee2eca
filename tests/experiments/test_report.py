"""`python -m experiments.report` turns figure summaries into the README's results table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from experiments.report import BEGIN, END, collect_summaries, main

REPO = Path(__file__).resolve().parents[2]


def _summary(results: Path, experiment: str, figure: str, kind: str, model: str = "gemma3-270m", **extra):
    folder = results / experiment / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "experiment": experiment,
        "figure": figure,
        "paper": "8x",
        "ours": f"3x on {kind}",
        "device": f"{kind.upper()}: test",
        "device_kind": kind,
        "profile": "ci",
        "model": model,
        "command": f"python -m experiments.{experiment} profile=ci",
        **extra,
    }
    (folder / f"{figure}-{kind}.json").write_text(json.dumps(summary))


def test_report_creates_results_section_and_keeps_the_rest(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nIntro text.\n")
    _summary(tmp_path / "results", "engine", "fig_decode_throughput", "cpu")
    _summary(tmp_path / "results", "engine", "fig_decode_throughput", "gpu")

    main(["--results", str(tmp_path / "results"), "--readme", str(readme)])

    text = readme.read_text()
    assert text.startswith("# Title\n\nIntro text.\n")
    table = text.split(BEGIN)[1].split(END)[0]
    rows = [line for line in table.splitlines() if line.startswith("| engine")]
    assert len(rows) == 2 and "3x on cpu" in rows[0] and "3x on gpu" in rows[1]
    assert "`python -m experiments.engine profile=ci`" in rows[0]


def test_report_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{BEGIN}\nold table\n{END}\nafter\n")
    _summary(tmp_path / "results", "engine", "fig_prefill_throughput", "cpu", ours="a | b")

    main(["--results", str(tmp_path / "results"), "--readme", str(readme)])
    main(["--results", str(tmp_path / "results"), "--readme", str(readme)])  # idempotent

    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith(f"{END}\nafter\n")
    assert "old table" not in text and text.count(BEGIN) == 1
    assert r"| a \| b |" in text  # a pipe inside a cell is escaped


def test_busy_machine_is_flagged_in_the_device_column(tmp_path):
    _summary(tmp_path / "results", "engine", "fig_a", "cpu", max_load_avg_1m=13.2, cpu_cores=2)
    _summary(tmp_path / "results", "engine", "fig_b", "cpu", max_load_avg_1m=1.1, cpu_cores=2)
    main(["--results", str(tmp_path / "results"), "--readme", str(tmp_path / "README.md")])
    rows = [line for line in (tmp_path / "README.md").read_text().splitlines() if line.startswith("| engine")]
    assert "busy machine (load 13)" in rows[0] and "busy" not in rows[1]


def test_tiny_model_runs_are_left_out_unless_asked(tmp_path):
    _summary(tmp_path, "engine", "fig_a", "cpu", model="tiny-random-gemma3")
    _summary(tmp_path, "engine", "fig_b", "cpu")
    assert [s["figure"] for s in collect_summaries(tmp_path)] == ["fig_b"]
    assert [s["figure"] for s in collect_summaries(tmp_path, include_tiny=True)] == ["fig_a", "fig_b"]


def test_engine_run_appears_in_report(tmp_path, tiny_engine_overrides):
    from experiments.harness.testing import run_experiment

    overrides = [
        *tiny_engine_overrides,
        "sweep.systems=[ours]",
        "sweep.prefill_lens=[8]",
        "sweep.decode_batch_sizes=[1]",
    ]
    run_experiment("engine", overrides, tmp_path / "results")
    readme = tmp_path / "README.md"
    main(["--results", str(tmp_path / "results"), "--readme", str(readme), "--include-tiny"])
    text = readme.read_text()
    assert "| engine | fig_prefill_throughput |" in text and "| engine | fig_decode_throughput |" in text


def test_listing_names_every_experiment():
    proc = subprocess.run(
        [sys.executable, "-m", "experiments"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert "engine" in proc.stdout and "report" in proc.stdout


def test_experiment_help_lists_the_config():
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.engine", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "profile: ci, paper" in proc.stdout and "decode_batch_sizes" in proc.stdout
