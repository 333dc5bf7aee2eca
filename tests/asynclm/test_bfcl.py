from asynclm.bfcl import CATEGORIES, ast_match, load_tasks, multi_step_tasks
from asynclm.protocol import FunctionCall


def test_every_ground_truth_call_list_passes_the_ast_check():
    for category in CATEGORIES:
        tasks = load_tasks(category)
        assert len(tasks) == 200
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
