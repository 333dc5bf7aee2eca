"""Running sweep points: as Ray tasks on long-lived workers, or all in this process.

Each worker is a :class:`PointWorker`: it imports the experiment, builds one
:class:`~experiments.harness.context.WorkerContext` (so weights load once per worker) and runs the
points it is given, seeding torch with ``seed + index`` before each so results do not depend on
which worker ran a point or in what order. With ``ray.enabled=false`` one PointWorker runs in this
process, through the same code, so the two modes give the same rows.

Ray is started on demand (``ray.init(num_cpus=..., include_dashboard=False)``) or joined at
``ray.address``; a worker asks for ``cpus_per_worker`` CPUs and, when the engine runs on CUDA, one
GPU (``gpus_per_worker``). Timed points should run one at a time (``ray.num_workers=1``, the
default) so they do not compete for the same cores.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.harness.context import WorkerContext
from experiments.harness.machine import machine_info


class PointFailedError(RuntimeError):
    """A sweep point's measurement raised; the message names the point."""


class PointWorker:
    def __init__(self, experiment, cfg: dict, num_threads: int | None = None):
        """``experiment``: an Experiment, or its name (a Ray worker imports experiments.<name>)."""
        import torch

        if num_threads:
            # Ray sets OMP_NUM_THREADS for a worker but torch may already have read it; be explicit.
            torch.set_num_threads(max(1, int(num_threads)))
        self._experiment = load_experiment(experiment) if isinstance(experiment, str) else experiment
        self._cfg = OmegaConf.create(cfg)
        self._ctx = WorkerContext(self._cfg)

    def run(self, index: int, point: dict) -> tuple[int, list[dict], dict]:
        """Measure one point; return (index, list of metric dicts, machine info)."""
        import torch

        torch.manual_seed(int(self._cfg.seed) + index)
        try:
            out = self._experiment.measure_fn(self._ctx, point, self._cfg)
        except Exception as e:
            raise PointFailedError(f"{self._experiment.name}: point {index} {point} failed: {e!r}") from e
        metrics = out if isinstance(out, list) else [out]
        for m in metrics:
            if not isinstance(m, dict):
                raise PointFailedError(
                    f"{self._experiment.name}: measure returned {type(m).__name__} for point {index}; "
                    "it must return a dict of metrics or a list of them"
                )
        return index, metrics, {**machine_info(), "load_avg_1m": _load_average()}


def run_points(experiment, cfg: DictConfig, points: list[dict]) -> Iterator[tuple[int, list[dict], dict]]:
    """Yield (index, metrics list, machine) per point as each finishes (any order under Ray)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    if not cfg.ray.enabled:
        worker = PointWorker(experiment, plain, num_threads=None)
        for index, point in enumerate(points):
            yield worker.run(index, point)
        return
    yield from _run_on_ray(cfg, plain, points)  # workers import experiments.<cfg.name> themselves


def _run_on_ray(cfg: DictConfig, plain: dict, points: list[dict]) -> Iterator[tuple[int, list[dict], dict]]:
    import ray
    from ray.util import ActorPool

    _ensure_ray(cfg.ray)
    num_workers = min(cfg.ray.num_workers, len(points))
    cpus, gpus = worker_resources(cfg)
    remote_worker = ray.remote(num_cpus=cpus, num_gpus=gpus)(PointWorker)
    actors = [remote_worker.remote(cfg.name, plain, cpus) for _ in range(num_workers)]
    pool = ActorPool(actors)
    try:
        for index, point in enumerate(points):
            pool.submit(lambda actor, job: actor.run.remote(*job), (index, point))
        while pool.has_next():
            try:
                yield pool.get_next_unordered()
            except ray.exceptions.RayTaskError as e:  # the measurement raised: its message names the point
                cause = e.as_instanceof_cause()
                raise PointFailedError(str(cause).strip().splitlines()[-1]) from e
            except ray.exceptions.RayError as e:  # the worker itself died (out of memory, killed, node lost)
                first_line = str(e).strip().splitlines()[0]
                raise PointFailedError(
                    f"{cfg.name}: a Ray worker died while running points ({type(e).__name__}: {first_line}); "
                    "rows measured so far are kept. Free memory, lower ray.num_workers, or use ray.enabled=false"
                ) from e
    finally:
        for actor in actors:  # free the workers' models (GPU memory) for the next run
            ray.kill(actor)


def worker_resources(cfg: DictConfig) -> tuple[float, float]:
    """(CPUs, GPUs) each Ray worker asks for."""
    r = cfg.ray
    if r.cpus_per_worker:
        cpus = r.cpus_per_worker
    elif r.address is None:
        cpus = max(1, (r.num_cpus or os.cpu_count() or 1) // r.num_workers)
    else:
        cpus = 1
    gpus = r.gpus_per_worker
    if gpus is None:
        gpus = 1 if str(cfg.engine.device).startswith("cuda") else 0
    return cpus, gpus


def _ensure_ray(ray_cfg: DictConfig) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return  # joined earlier in this process (a Hydra -m sweep, a test session): reuse it
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if ray_cfg.runtime_env is not None:
        kwargs["runtime_env"] = OmegaConf.to_container(ray_cfg.runtime_env, resolve=True)
    if ray_cfg.address is None:
        kwargs["num_cpus"] = ray_cfg.num_cpus or os.cpu_count()
    else:
        kwargs["address"] = ray_cfg.address
    ray.init(**kwargs)


def _load_average() -> float | None:
    # Other processes on the machine distort timings; each row records how busy it was.
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def load_experiment(name: str):
    module = importlib.import_module(f"experiments.{name}")
    experiment = getattr(module, "EXPERIMENT", None)
    if experiment is None:
        raise ImportError(f"experiments/{name}.py defines no EXPERIMENT = Experiment({name!r})")
    return experiment
