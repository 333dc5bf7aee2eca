"""Running an experiment from a test: the paper engineers' CI reproduction checks use this.

    from experiments.harness.testing import run_experiment

    def test_cached_prompt_is_faster_than_recompute(tmp_path):
        result = run_experiment("prompt_cache", ["sweep.lengths=[256,512]"], tmp_path)
        ours = {r["system"]: r["ttft_s"] for r in result.records if r["length"] == 512}
        assert ours["cached"] < ours["baseline"]

Defaults for tests: ``profile=ci``, ``ray.enabled=false`` (no Ray start), ``wandb.mode=disabled``
and results under ``tmp_path``; any of these can be overridden by the ``overrides`` given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from experiments.harness.config import compose_config
from experiments.harness.experiment import run
from experiments.harness.results import RunResult
from experiments.harness.runner import load_experiment

TEST_DEFAULTS = ("profile=ci", "ray.enabled=false", "wandb.mode=disabled")


def run_experiment(name: str, overrides: Sequence[str] = (), results_dir: str | Path | None = None) -> RunResult:
    """Compose `experiments.<name>` at profile=ci with ``overrides``, run it, and return its rows."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    defaults = [d for d in TEST_DEFAULTS if d.split("=", 1)[0] not in given]
    if results_dir is not None and "results_dir" not in given:
        defaults.append(f"results_dir={results_dir}")
    cfg = compose_config(name, [*defaults, *overrides])
    return run(load_experiment(name), cfg, command=_command(name, overrides))


def _command(name: str, overrides: Sequence[str]) -> str:
    return " ".join([f"python -m experiments.{name}", "profile=ci", *overrides])
