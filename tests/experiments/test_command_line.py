"""The command a researcher types: Hydra's entry point, including a -m sweep, end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from experiments.harness import read_rows

REPO = Path(__file__).resolve().parents[2]


def test_multirun_writes_one_rows_file_and_figure_folder_per_job(tmp_path, tiny_engine_overrides):
    args = [
        *tiny_engine_overrides,
        "sweep.systems=[ours]",
        "sweep.prefill_lens=[8]",
        "sweep.decode_batch_sizes=[1]",
        "ray.enabled=false",
        "wandb.mode=disabled",
        f"results_dir={tmp_path}",
        "engine.page_size=8,16",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.engine", "-m", *args],
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    rows_files = sorted((tmp_path / "engine").glob("rows-*.jsonl"))
    assert len(rows_files) == 2
    page_sizes = sorted(read_rows(f)[0]["config"]["engine"]["page_size"] for f in rows_files)
    assert page_sizes == [8, 16]
    assert read_rows(rows_files[0])[0]["command"].startswith("python -m experiments.engine model=tiny-random")
    jobs = sorted(
        p.parent.name for p in (tmp_path / "engine" / "figures").glob("multirun-*/*/fig_decode_throughput-cpu.png")
    )
    assert jobs == ["0", "1"]
    assert not list((tmp_path / "engine" / "figures").glob("*.json"))  # single-run summaries stay untouched
