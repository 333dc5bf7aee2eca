"""Ray and single-process runs give the same rows (timings aside). One Ray session for the module."""

from __future__ import annotations

import pytest

from experiments.harness import PointFailedError, strip_timings
from experiments.harness.testing import run_experiment

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    # Started here, not by the harness, so the module's runs share it (Ray takes seconds to start).
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def test_ray_and_single_process_give_the_same_rows(tmp_path, ray_session, tiny_engine_overrides):
    overrides = [*tiny_engine_overrides, "sweep.systems=[ours]"]  # transformers in a worker: see test_engine_*
    local = run_experiment("engine", [*overrides, "ray.enabled=false"], tmp_path / "local")
    on_ray = run_experiment("engine", [*overrides, "ray.enabled=true"], tmp_path / "ray")
    assert [strip_timings(r) for r in on_ray.rows] == [strip_timings(r) for r in local.rows]
    assert all(r["metrics"]["ttft_s"] > 0 for r in on_ray.rows)  # the timings are there, just not compared
    assert on_ray.rows[0]["config"]["ray"]["enabled"] is True


def test_failing_point_on_ray_names_the_point(tmp_path, ray_session, tiny_engine_overrides):
    # 600 prompt tokens do not fit the tiny model's 512 positions: the engine refuses the request.
    with pytest.raises(PointFailedError, match="'prompt_len': 600"):
        run_experiment(
            "engine",
            [*tiny_engine_overrides, "ray.enabled=true", "sweep.prefill_lens=[600]", "sweep.systems=[ours]"],
            tmp_path,
        )
