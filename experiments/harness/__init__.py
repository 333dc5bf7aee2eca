"""The experiments harness: Hydra config -> validated sweep -> Ray workers -> rows, figures, wandb.

config.py      compose a config (conf/), validate it before any work (ConfigError), list experiments
experiment.py  Experiment (points / measure / figure registration), run(), the Hydra entry point
runner.py      PointWorker; sweep points as Ray actor tasks, or in-process with ray.enabled=false
context.py     WorkerContext: models and engines built once per worker process
results.py     rows (jsonl), figures (PNG + PDF), README summaries, strip_timings
machine.py     where a number was measured (CPU model, cores, GPU, versions)
tracking.py    one wandb run per experiment run, offline by default
testing.py     run_experiment(name, overrides): run at profile=ci from a test and get the rows
"""

from experiments.harness.config import ConfigError, compose_config, list_experiments, validate_config
from experiments.harness.context import WorkerContext
from experiments.harness.experiment import Experiment, FigureFailedError, FigureResult, replot, run
from experiments.harness.results import RunResult, read_rows, records, strip_timings
from experiments.harness.runner import PointFailedError

__all__ = [
    "ConfigError",
    "Experiment",
    "FigureFailedError",
    "FigureResult",
    "PointFailedError",
    "RunResult",
    "WorkerContext",
    "compose_config",
    "list_experiments",
    "read_rows",
    "records",
    "replot",
    "run",
    "strip_timings",
    "validate_config",
]
