"""Bad settings fail at once, with a message naming the key, before any model loads or file is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from experiments.harness import ConfigError, compose_config
from experiments.harness.runner import load_experiment

REPO = Path(__file__).resolve().parents[2]


def _plan(*overrides: str):
    return load_experiment("engine").plan(compose_config("engine", ["model=tiny-random", *overrides]))


def test_default_config_is_valid():
    points = load_experiment("engine").plan(compose_config("engine"))
    assert {p["prompt_len"] for p in points if p["phase"] == "prefill"} == {512, 2048}


def test_unknown_key_is_rejected_by_compose():
    with pytest.raises(ConfigCompositionException, match=r"engine\.page_sise"):
        compose_config("engine", ["engine.page_sise=8"])


def test_unknown_group_option_is_rejected_by_compose():
    with pytest.raises(ConfigCompositionException, match="profile"):
        compose_config("engine", ["profile=huge"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.source=/no/such/model", "model.source='/no/such/model': no such file"),
        (f"model.source={__file__}", "not a .gguf file"),
        ("model.family=gpt2", "model.family='gpt2'"),
        ("engine.dtype=float8", "engine.dtype='float8'"),
        ("engine.attention_backend=flash", "engine.attention_backend='flash'"),
        ("engine.page_size=0", "engine.page_size=0"),
        ("engine.device=tpu", "engine.device='tpu'"),
        ("wandb.mode=sometimes", "wandb.mode='sometimes'"),
        ("ray.num_workers=64", "Ray would wait forever"),
        ("ray.gpus_per_worker=1", "ray.gpus_per_worker=1 but engine.device='cpu'"),
        ("sweep.systems=[ours,vllm]", "sweep.systems has ['vllm']"),
        ("sweep.decode_new_tokens=1", "sweep.decode_new_tokens=1"),
        ("sweep.prefill_lens=[0]", "positive"),
    ],
)
def test_bad_setting_raises_config_error_naming_it(override, message):
    with pytest.raises(ConfigError, match=_escape(message)):
        _plan(override)


def test_empty_sweep_is_rejected():
    with pytest.raises(ConfigError, match="the sweep is empty"):
        _plan("sweep.prefill_lens=[]", "sweep.decode_batch_sizes=[]")


def test_folder_without_config_json_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"folder without config\.json"):
        _plan(f"model.source={tmp_path}")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.source=/no/such/model", "config error: model.source='/no/such/model': no such file or folder"),
        ("engine.page_sise=8", "Could not override 'engine.page_sise'"),
    ],
)
def test_command_line_fails_fast_and_writes_nothing(tmp_path, override, message):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.engine", override, f"results_dir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout
    # Hydra may create its own run folder; no rows, figures or wandb run may exist.
    assert not list(tmp_path.glob("engine/rows-*")) and not (tmp_path / "engine" / "wandb").exists()


def _escape(text: str) -> str:
    import re

    return re.escape(text)
