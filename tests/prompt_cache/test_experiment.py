"""`python -m experiments.prompt_cache` at a tiny size: every figure is drawn from real rows."""

from __future__ import annotations

import pytest

from experiments.harness.testing import run_experiment


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    overrides = ["model=tiny-random", "sweeps.ci.lengths=[64]", "sweeps.ci.workloads=[]",
                 "sweeps.ci.new_tokens=3", "cache.page_size=4", "cache.num_pages=128", "profile.warmup=0"]
    return run_experiment("prompt_cache", overrides, tmp_path_factory.mktemp("results"))


def test_every_paper_figure_and_table_is_drawn(result):
    assert set(result.figures) == {
        "fig3_fig4_ttft_by_workload", "fig5_ttft_by_length", "table1_accuracy", "table2_memory_per_token",
        "fig6_code_generation", "fig7_personalization", "fig8_parameterized"}
    assert all(path.exists() for path in result.figures.values())


def test_cached_systems_compute_only_the_new_tokens(result):
    rows = [r for r in result.records if r["kind"] == "length"]
    by_system = {r["system"]: r for r in rows}
    assert set(by_system) == {"baseline", "cached-device", "cached-host"}
    base, cached = by_system["baseline"], by_system["cached-device"]
    assert cached["cached_tokens"] >= 64 and cached["computed_tokens"] < base["computed_tokens"]
    assert cached["cached_tokens"] + cached["computed_tokens"] == base["prompt_tokens"]
    assert by_system["cached-host"]["output_token_ids"] == cached["output_token_ids"]  # same KV, copied


def test_memory_table_matches_the_papers_llama_number(result):
    llama = next(r for r in result.records if r.get("model") == "Llama2-7B (fp16)")
    assert llama["bytes_per_token"] == 2**19  # 0.50 MB per token, as the paper's Table 2


def test_rouge_l_is_the_lcs_f1():
    from experiments.prompt_cache import _rouge_l

    assert _rouge_l([1, 2, 3, 4], [1, 3, 4]) == 2 * 3 / 7
    assert _rouge_l([1, 2], [3]) == 0.0 and _rouge_l([], []) == 1.0
