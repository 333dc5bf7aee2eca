"""Result rows are plain JSON, and timings are told apart from deterministic metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from experiments.harness import read_rows, strip_timings
from experiments.harness.results import append_row


def test_rows_round_trip_as_plain_json(tmp_path):
    path = tmp_path / "rows.jsonl"
    row = {
        "index": 0,
        "point": {"n": np.int64(3)},
        "metrics": {"ttft_s": torch.tensor(0.5).item(), "x": np.float32(2.0), "bad": math.nan, "ids": (1, 2)},
    }
    append_row(path, row)
    append_row(path, {**row, "index": 1})
    rows = read_rows(path)
    assert rows[0] == {"index": 0, "point": {"n": 3}, "metrics": {"ttft_s": 0.5, "x": 2.0, "bad": None, "ids": [1, 2]}}
    assert [r["index"] for r in rows] == [0, 1]


def test_unserialisable_metric_is_rejected_with_its_value(tmp_path):
    with pytest.raises(TypeError, match="object"):
        append_row(tmp_path / "rows.jsonl", {"metrics": {"m": object()}})


def test_strip_timings_keeps_point_and_deterministic_metrics():
    row = {
        "index": 2,
        "point": {"n": 8},
        "machine": {},
        "config": {},
        "run_id": "x",
        "metrics": {"ttft_s": 1.0, "latency_ms": 2.0, "tokens_per_s": 3.0, "first_token": 7, "tokens": 4},
    }
    assert strip_timings(row) == {"index": 2, "point": {"n": 8}, "metrics": {"first_token": 7, "tokens": 4}}
