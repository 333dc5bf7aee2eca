"""An experiment: its sweep points, how to measure one point, and its figures; and how it is run.

An experiment module declares ``EXPERIMENT = Experiment("<name>")`` and registers three kinds of
functions on it (see ``experiments/__init__.py`` for a complete example):

* ``@EXPERIMENT.points``: ``(cfg) -> list[dict]``, the sweep (plain JSON values), computed before
  any work starts so a bad sweep fails at once;
* ``@EXPERIMENT.measure``: ``(ctx, point, cfg) -> dict | list[dict]`` of metrics, run in a worker;
* ``@EXPERIMENT.figure(paper="...")``: ``(records, cfg) -> FigureResult``, one per paper figure
  or table, named after it; ``records`` are the flat ``{**point, **metrics}`` dicts.

:func:`run` does the rest in order: validate, plan the points, start wandb, run the points
(Ray or in-process) with a progress bar while appending rows to jsonl, then draw and save figures.
"""

from __future__ import annotations

import datetime as _dt
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments.harness import results as _results
from experiments.harness.config import CONF_DIR, ConfigError, validate_config
from experiments.harness.machine import device_kind, device_label, machine_info
from experiments.harness.runner import run_points
from experiments.harness.tracking import Tracker


class FigureFailedError(RuntimeError):
    """A figure function raised; the message names it and how to redraw without measuring again."""


@dataclass
class FigureResult:
    """A drawn figure and a one-line statement of our number for the README (e.g. "3.1x faster")."""

    figure: object  # matplotlib.figure.Figure
    ours: str


@dataclass
class _Figure:
    fn: Callable[[list[dict], DictConfig], FigureResult]
    paper: str


class Experiment:
    def __init__(self, name: str, description: str = ""):
        self.name = name
        self.description = description
        self.points_fn: Callable[[DictConfig], list[dict]] | None = None
        self.measure_fn: Callable | None = None
        self.validate_fn: Callable[[DictConfig], None] | None = None
        self.figures: dict[str, _Figure] = {}

    # -- registration (decorators) ---------------------------------------------------------
    def points(self, fn):
        self.points_fn = fn
        return fn

    def measure(self, fn):
        self.measure_fn = fn
        return fn

    def validate(self, fn):
        """Optional ``(cfg) -> None`` check of experiment-specific settings; raise ConfigError."""
        self.validate_fn = fn
        return fn

    def figure(self, paper: str):
        """Register a figure function; ``paper`` states the paper's number for the README table."""

        def register(fn):
            self.figures[fn.__name__] = _Figure(fn, paper)
            return fn

        return register

    # -- running -----------------------------------------------------------------------------
    def plan(self, cfg: DictConfig) -> list[dict]:
        """Validate the config and return the sweep points; raises ConfigError before any work."""
        if self.points_fn is None or self.measure_fn is None:
            raise ConfigError(f"experiment {self.name!r} registers no @points or no @measure function")
        validate_config(cfg)
        if self.validate_fn is not None:
            self.validate_fn(cfg)
        points = self.points_fn(cfg)
        if not points:
            raise ConfigError(f"{self.name}: the sweep is empty for profile={cfg.profile.name} ({cfg.sweep})")
        for point in points:
            _check_point(self.name, point)
        return points

    def main(self) -> None:
        """The command line: `python -m experiments.<name> [overrides]` (Hydra: --help, -m, --cfg job)."""
        import hydra

        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=self.name)(self._hydra_task)()

    def _hydra_task(self, cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        command = _command(self.name, hydra_cfg.overrides.task)
        # A -m sweep's jobs would overwrite each other's figures: each job gets its own folder,
        # which the README report does not read (it lists single runs only).
        subdir = None
        if hydra_cfg.mode == RunMode.MULTIRUN:
            subdir = f"multirun-{Path(hydra_cfg.sweep.dir).name}/{hydra_cfg.job.num}"
        try:
            result = run(self, cfg, command=command, figures_subdir=subdir)
        except ConfigError as e:
            sys.exit(f"config error: {e}")
        print(f"{self.name}: {len(result.rows)} rows -> {result.rows_path}")
        for name, summary in result.summaries.items():
            print(f"  {name}: {summary['ours']}  [{result.figures[name]}]")


def run(
    experiment: Experiment, cfg: DictConfig, command: str | None = None, figures_subdir: str | None = None
) -> _results.RunResult:
    """Run every point of ``experiment`` under ``cfg`` and write rows, figures and a wandb run.

    ``figures_subdir``: write figures to ``figures/<figures_subdir>/`` instead of ``figures/``.
    """
    from tqdm import tqdm

    if cfg.get("replot"):
        return replot(experiment, cfg.replot, figures_subdir)
    points = experiment.plan(cfg)  # everything that can be checked is checked before any work
    OmegaConf.resolve(cfg)
    # Unique even for runs started in the same second (a fast -m sweep): a short random suffix.
    stamp = f"{_dt.datetime.now(_dt.UTC):%Y%m%d-%H%M%S}"
    run_id = f"{stamp}-{cfg.profile.name}-{device_kind(cfg.engine.device)}-{uuid.uuid4().hex[:4]}"
    out_dir = _results.experiment_dir(cfg.results_dir, experiment.name)
    rows_path = out_dir / f"rows-{run_id}.jsonl"
    config = OmegaConf.to_container(cfg, resolve=True)
    command = command or _command(experiment.name, [])
    tracker = Tracker(cfg, run_id, out_dir)
    rows: list[dict] = []
    try:
        with tqdm(total=len(points), desc=experiment.name, unit="point", dynamic_ncols=True) as bar:
            for index, metrics_list, machine in run_points(experiment, cfg, points):
                for metrics in metrics_list:
                    row = {
                        "experiment": experiment.name,
                        "run_id": run_id,
                        "index": index,
                        "point": points[index],
                        "metrics": metrics,
                        "machine": machine,
                        "config": config,
                        "command": command,
                    }
                    _results.append_row(rows_path, row)
                    tracker.log_row(index, points[index], metrics)
                    rows.append(row)
                bar.update(1)
        rows.sort(key=lambda r: r["index"])  # stable: a point's own rows keep their order
        result = _results.RunResult(experiment.name, run_id, rows, rows_path)
        _draw_figures(experiment, cfg, result, tracker, command, out_dir / "figures" / (figures_subdir or ""))
    finally:
        tracker.finish(_results.records(rows))
    return result


def replot(experiment: Experiment, rows_path: str | Path, figures_subdir: str | None = None) -> _results.RunResult:
    """Redraw the figures of an earlier run from its rows, without measuring anything again.

    ``python -m experiments.<name> replot=results/<name>/rows-<run id>.jsonl``: for changing a
    figure after a long sweep. The figures get the earlier run's config, device and command.
    """
    path = Path(rows_path)
    if not path.is_file():
        raise ConfigError(f"replot={str(rows_path)!r}: no such rows file")
    rows = _results.read_rows(path)
    if not rows or any(r.get("experiment") != experiment.name for r in rows):
        raise ConfigError(f"replot={str(rows_path)!r} holds no rows of experiment {experiment.name!r}")
    cfg = OmegaConf.create(rows[0]["config"])
    result = _results.RunResult(experiment.name, rows[0]["run_id"], rows, path)
    tracker = Tracker(OmegaConf.merge(cfg, {"wandb": {"mode": "disabled"}}), result.run_id, path.parent)
    command = rows[0].get("command") or _command(experiment.name, [])
    fig_dir = path.parent / "figures" / (figures_subdir or "")
    _draw_figures(experiment, cfg, result, tracker, command, fig_dir)
    return result


def _draw_figures(
    experiment: Experiment, cfg: DictConfig, result: _results.RunResult, tracker: Tracker, command: str, fig_dir: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # figures are files; never open a window (or need a display)
    kind = device_kind(cfg.engine.device)
    machine = result.rows[0]["machine"] if result.rows else machine_info()
    loads = [r["machine"].get("load_avg_1m") for r in result.rows if r["machine"].get("load_avg_1m") is not None]
    failed = []
    for name, spec in experiment.figures.items():
        try:
            drawn = spec.fn(result.records, cfg)
        except Exception as e:  # one broken figure must not cost the others (or the rows)
            failed.append(f"{name}: {e!r}")
            continue
        stem = f"{name}-{kind}"
        png = _results.save_figure(drawn.figure, fig_dir, stem)
        summary = {
            "experiment": experiment.name,
            "figure": name,
            "paper": spec.paper,
            "ours": drawn.ours,
            "device": device_label(machine, str(cfg.engine.device)),
            "device_kind": kind,
            "max_load_avg_1m": max(loads, default=None),
            "cpu_cores": machine.get("cpu_cores"),
            "profile": cfg.profile.name,
            "model": cfg.model.name,
            "command": command,
            "run_id": result.run_id,
            "rows": str(result.rows_path),
            "png": str(png),
        }
        _results.write_summary(fig_dir, stem, summary)
        tracker.log_figure(name, png, summary)
        result.figures[name] = png
        result.summaries[name] = summary
    if failed:
        raise FigureFailedError(
            f"{experiment.name}: {len(failed)} figure(s) failed ({'; '.join(failed)}); the rows are kept: "
            f"fix the figure code and run `python -m experiments.{experiment.name} replot={result.rows_path}`"
        )


def _command(name: str, overrides: Sequence[str]) -> str:
    return " ".join(["python -m experiments." + name, *overrides])


def _check_point(name: str, point: dict) -> None:
    import json

    if not isinstance(point, dict):
        raise ConfigError(f"{name}: sweep points must be dicts, got {point!r}")
    try:
        json.dumps(point, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: sweep point {point!r} is not plain JSON ({e})") from e
