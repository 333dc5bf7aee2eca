"""Where a run's outputs go, and their shapes.

    <results_dir>/<name>/rows-<run_id>.jsonl      one row per measurement (below)
    <results_dir>/<name>/figures/<fig>-<kind>.png  the figure (and .pdf), kind = cpu | gpu
    <results_dir>/<name>/figures/<fig>-<kind>.json its summary for the README table (experiments.report)
    <results_dir>/<name>/figures/multirun-<stamp>/<job>/...   the same per job of a Hydra -m sweep

A row is ``{"experiment", "run_id", "index", "point", "metrics", "machine", "config"}``: the sweep
point, what was measured at it, where (:func:`~experiments.harness.machine.machine_info`) and under
which full config, so a row can be read on its own. Metrics whose names end in ``_s``, ``_ms`` or
``_per_s`` are timings; everything else a measurement returns should be deterministic for a seed
(:func:`strip_timings` drops timings, e.g. to compare a Ray run with a single-process run).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

TIMING_SUFFIXES = ("_s", "_ms", "_per_s")


@dataclass
class RunResult:
    """What one experiment run produced: its rows (in sweep order) and the files it wrote."""

    name: str
    run_id: str
    rows: list[dict]
    rows_path: Path
    figures: dict[str, Path] = field(default_factory=dict)  # figure name -> PNG path
    summaries: dict[str, dict] = field(default_factory=dict)  # figure name -> README summary

    @property
    def records(self) -> list[dict]:
        return records(self.rows)


def records(rows: list[dict]) -> list[dict]:
    """Flat ``{**point, **metrics}`` dicts: what figure functions and tests usually want."""
    return [{**row["point"], **row["metrics"]} for row in rows]


def is_timing(key: str) -> bool:
    return key.endswith(TIMING_SUFFIXES)


def strip_timings(row: dict) -> dict:
    """The row's point and its deterministic metrics (no timings, machine, config or run id)."""
    metrics = {k: v for k, v in row["metrics"].items() if not is_timing(k)}
    return {"index": row["index"], "point": row["point"], "metrics": metrics}


def experiment_dir(results_dir: str | Path, name: str) -> Path:
    return Path(results_dir) / name


def append_row(path: Path, row: dict) -> None:
    """Rows are appended as they arrive, so a run that fails halfway keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(_plain(row), allow_nan=False) + "\n")


def read_rows(path: str | Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def save_figure(fig, directory: Path, stem: str) -> Path:
    """Save a matplotlib figure as PNG (for the README) and PDF (for papers); return the PNG path."""
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    png = directory / f"{stem}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    fig.savefig(directory / f"{stem}.pdf", bbox_inches="tight")
    plt.close(fig)
    return png


def write_summary(directory: Path, stem: str, summary: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")


def _plain(value):
    """Plain JSON values: numpy/torch scalars become Python numbers, NaN and inf become null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"result value {value!r} of type {type(value).__name__} is not JSON-serialisable")
