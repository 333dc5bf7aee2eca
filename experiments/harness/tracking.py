"""One wandb run per experiment run, offline unless asked otherwise, and never blocking on the network.

``wandb.mode=offline`` (the default, or ``WANDB_MODE``) writes the run under
``<results_dir>/<name>/wandb/`` for a later ``wandb sync``. ``online`` logs live; if wandb cannot
reach its server within ``wandb.init_timeout_s`` the run continues offline with a warning.
``disabled`` turns logging off. Rows are logged as they arrive, figures and a table at the end.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, cfg: DictConfig, run_id: str, directory: Path):
        self.run = None
        mode = cfg.wandb.mode
        if mode == "disabled":
            return
        directory.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            self.run = _init(cfg, run_id, directory, mode)
        except Exception as e:  # wandb raises many types for network trouble; none should stop a sweep
            if mode != "online":
                log.warning("wandb: could not start an offline run (%s); continuing without wandb", e)
                return
            log.warning("wandb: online run failed to start (%s); logging offline instead", e)
            self.run = _init(cfg, run_id, directory, "offline")

    @property
    def path(self) -> str | None:
        return self.run.dir if self.run is not None else None

    def log_row(self, index: int, point: dict, metrics: dict) -> None:
        if self.run is None:
            return
        numbers = {k: v for k, v in {**point, **metrics}.items() if isinstance(v, int | float)}
        self.run.log({"point": index, **numbers})

    def log_figure(self, name: str, png: Path, summary: dict) -> None:
        if self.run is None:
            return
        import wandb

        self.run.log({f"figures/{name}": wandb.Image(str(png))})
        self.run.summary[f"{name}/ours"] = summary["ours"]

    def finish(self, records: list[dict]) -> None:
        if self.run is None:
            return
        import wandb

        if records:
            columns = sorted({k for r in records for k in r})
            table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in records])
            self.run.log({"rows": table})
        self.run.finish()


def _init(cfg: DictConfig, run_id: str, directory: Path, mode: str):
    import wandb

    settings = wandb.Settings(
        init_timeout=float(cfg.wandb.init_timeout_s),
        finish_timeout=float(cfg.wandb.init_timeout_s),
        login_timeout=float(cfg.wandb.init_timeout_s),  # an interactive login prompt must not wait forever
        silent=True,
        x_disable_stats=True,  # the system-metrics sampler would share the cores being measured
        console="off",
    )
    return wandb.init(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=cfg.name,
        job_type=cfg.profile.name,
        name=f"{cfg.name}-{run_id}",
        config=OmegaConf.to_container(cfg, resolve=True),
        dir=str(directory),
        mode=mode,
        settings=settings,
        reinit="create_new",
    )
