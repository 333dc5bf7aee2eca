"""The Symphony experiment at profile=ci on a tiny model: the paper's claims hold on its rows.

Token counts are deterministic, so the claims are asserted on them (not on timings): a chat LIP
computes only each turn's new tokens, a forking tree search computes fewer tokens than stateless
requests, batching packs concurrent LIPs, constrained JSON always parses; and greedy LIPs produce
exactly the tokens prompt serving produces.
"""

import pytest

from experiments.harness.testing import run_experiment

TINY = (
    "model=tiny-random",
    "model.family=llama",
    "sweeps.ci.turns=2",
    "sweeps.ci.reply_tokens=3",
    "sweeps.ci.tree.depth=2",
    "sweeps.ci.tree.step_tokens=2",
    "sweeps.ci.agent.steps=1",
    "sweeps.ci.agent.think_tokens=4",
    "sweeps.ci.agent.answer_tokens=3",
    "sweeps.ci.batch_lips=[4]",
    "sweeps.ci.batch_tokens=3",
    "sweeps.ci.json_prompts=1",
    "sweeps.ci.json_tokens=8",
    "workload.tool_latency_s=0.01",
    "workload.rtt_s=0.01",
    "server.num_pages=256",
    "engine.page_size=4",
    "engine.num_pages=256",
)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return run_experiment("symphony", TINY, tmp_path_factory.mktemp("symphony")).records


def _by(records, workload):
    return {r["system"]: r for r in records if r["workload"] == workload}


def test_multiturn_lip_computes_only_new_tokens_and_replies_like_prompt_serving(records):
    turns = {
        s: sorted((r for r in records if r["workload"] == "multiturn" and r["system"] == s), key=lambda r: r["turn"])
        for s in ("symphony", "prompt")
    }
    assert [r["reply"] for r in turns["symphony"]] == [r["reply"] for r in turns["prompt"]]
    # Turn 2: prompt serving re-encodes the whole history, the LIP appends only the new message.
    assert turns["symphony"][1]["tokens_computed"] < turns["prompt"][1]["tokens_computed"]
    assert turns["prompt"][1]["tokens_computed"] > turns["prompt"][0]["tokens_computed"]


def test_tree_search_forks_compute_fewer_tokens_and_find_the_same_branch(records):
    by = _by(records, "tree_search")
    assert by["symphony"]["tokens_computed"] < by["prompt"]["tokens_computed"]
    assert by["symphony"]["best"] == by["prompt"]["best"]


def test_agent_lip_computes_fewer_tokens_with_the_same_tool_calls(records):
    by = _by(records, "agent")
    assert by["symphony"]["tokens_computed"] < by["prompt"]["tokens_computed"]
    assert by["symphony"]["calls"] == by["prompt"]["calls"] and by["symphony"]["answer"] == by["prompt"]["answer"]


def test_batch_scheduler_packs_concurrent_lips(records):
    rows = {(r["system"], r["lips"]): r for r in records if r["workload"] == "batch_fill"}
    assert rows[("batched", 4)]["mean_decode_batch_size"] == 4
    assert rows[("serial", 4)]["max_batch_size"] == 1
    assert rows[("batched", 4)]["forwards"] < rows[("serial", 4)]["forwards"]


def test_constrained_json_lip_is_always_valid(records):
    assert all(r["valid"] for r in records if r["workload"] == "json" and r["system"] == "symphony")
