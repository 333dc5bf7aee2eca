import pytest

from asynclm.bfcl import (
    CATEGORIES,
    BFCLDataError,
    _multi_turn_docs,
    _parse_call,
    ast_match,
    load_multi_turn_chains,
    load_tasks,
    multi_step_parallel_tasks,
    multi_step_tasks,
)
from asynclm.protocol import FunctionCall


def test_every_ground_truth_call_list_passes_the_ast_check():
    sizes = {"parallel": 200, "live_parallel": 16, "parallel_multiple": 200}
    for category in CATEGORIES:
        tasks = load_tasks(category)
        assert len(tasks) == sizes[category]
        for t in tasks:
            assert ast_match(t.ground_truth_calls(), t.possible_answer), t.task_id


def test_ast_check_rejects_wrong_value_missing_argument_and_extra_call():
    task = load_tasks("parallel", limit=1)[0]  # spotify.play x2
    good = task.ground_truth_calls()
    assert ast_match(list(reversed(good)), task.possible_answer)  # order free
    wrong = [FunctionCall(0, good[0].name, {**good[0].arguments, "duration": 99}), good[1]]
    missing = [FunctionCall(0, good[0].name, {"artist": good[0].arguments["artist"]}), good[1]]
    assert not ast_match(wrong, task.possible_answer)
    assert not ast_match(missing, task.possible_answer)
    assert not ast_match([*good, good[0]], task.possible_answer)
    assert not ast_match([good[0], good[0]], task.possible_answer)


def test_multi_step_tasks_chain_steps_with_one_dependency_per_call():
    base = load_tasks("parallel_multiple", limit=9)
    (task,) = multi_step_tasks(base, steps=3, count=1, seed=1)
    sizes = [len(b.possible_answer) for b in base[:3]]
    deps = task.dependencies()
    assert len(deps) == sum(sizes)
    assert all(d == () for d in deps[: sizes[0]])
    for i in range(sizes[0], len(deps)):
        (d,) = deps[i]
        assert d < i


def test_multi_turn_chains_are_first_turns_with_each_call_depending_on_the_one_before():
    chains = load_multi_turn_chains(max_calls=5)
    assert 150 < len(chains) < 200  # multi_turn_base has 200 samples; 2 first turns have 6-7 calls
    first = next(c for c in chains if c.task_id == "multi_turn_base_0")
    calls = first.ground_truth_calls()
    # BFCL's answer: cd(folder='document'), mkdir(dir_name='temp'), mv(source=..., destination='temp')
    assert [c.name for c in calls] == ["cd", "mkdir", "mv"]
    assert calls[2].arguments == {"source": "final_report.pdf", "destination": "temp"}
    assert first.dependencies() == ((), (0,), (1,))
    assert {f["name"] for f in first.functions} == {"cd", "mkdir", "mv"}
    assert all(1 <= len(c.possible_answer) <= 5 for c in chains)


def test_positional_arguments_take_the_documented_parameter_names():
    docs = _multi_turn_docs()
    assert _parse_call("sort('final_report.pdf')", docs, "t") == ("sort", {"file_name": "final_report.pdf"})
    with pytest.raises(BFCLDataError, match="no function doc"):
        _parse_call("nosuch(1)", docs, "t")


def test_multi_step_parallel_tasks_put_independent_chains_side_by_side():
    chains = load_multi_turn_chains()
    tasks = multi_step_parallel_tasks(chains, count=4, per_task=3, seed=5)
    assert tasks == multi_step_parallel_tasks(chains, count=4, per_task=3, seed=5)  # seeded
    by_id = {c.task_id: c for c in chains}
    for task in tasks:
        parts = [by_id[f"multi_turn_base_{k}"] for k in task.task_id.split("[")[1].rstrip("]").split("+")]
        assert len({p.task_id for p in parts}) == 3
        expected, offset = [], 0
        for p in parts:
            expected += [tuple(d + offset for d in dep) for dep in p.dependencies()]
            offset += len(p.possible_answer)
        assert task.dependencies() == tuple(expected)
        assert ast_match(task.ground_truth_calls(), task.possible_answer)
