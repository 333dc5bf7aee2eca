"""The sandbox: a misbehaving inferlet is stopped with a clear error, its resources are freed,
and an inferlet running beside it finishes with the right answer."""

import pytest

from pie.errors import InferletKilled, InferletMemoryExceeded, InferletTimeout

PROMPT, N = "The sandbox keeps", 12


@pytest.fixture(scope="module")
def expected(greedy):
    return greedy(PROMPT, N)


def parse_ids(result: str) -> list[int]:
    return [int(t) for t in result.split("\n", 1)[0].split(",") if t]


def _run_beside(runtime, probe_args, expected):
    good = runtime.launch("text_completion", [PROMPT, str(N)])
    bad = runtime.launch("sandbox_probe", probe_args)
    with pytest.raises(Exception) as info:
        bad.wait(120)
    assert parse_ids(good.wait(120)) == expected
    return info.value


def test_runaway_loop_is_stopped_while_another_inferlet_runs(runtime, expected):
    free = runtime.pool.allocator.num_free
    err = _run_beside(runtime, ["loop"], expected)
    assert isinstance(err, InferletTimeout)
    assert "time slice" in str(err) and "sandbox_probe" in str(err)
    assert runtime.pool.allocator.num_free == free


def test_memory_hog_is_terminated_while_another_inferlet_runs(runtime, expected):
    err = _run_beside(runtime, ["oom"], expected)
    assert isinstance(err, InferletMemoryExceeded)
    assert "memory limit" in str(err)


def test_touching_another_inferlets_page_is_an_error_for_the_toucher_only(runtime, expected):
    holder = runtime.launch("sandbox_probe", ["leak", "3"])
    assert holder.outbox.get(timeout=120).startswith("holding")
    # The holder's pages are virtual ids 0..2 in *its* table; physically they are pool pages.
    physical = holder.table.physical([0, 1, 2])
    thief = runtime.launch("sandbox_probe", ["steal", str(physical[0])])
    good = runtime.launch("text_completion", [PROMPT, str(N)])
    assert thief.wait(120).startswith("refused: ") and "not owned" in thief.wait()
    assert parse_ids(good.wait(120)) == expected
    assert holder.table.physical([0, 1, 2]) == physical  # untouched
    holder.send("bye")
    assert holder.wait(60) == "done"


def test_killed_inferlet_releases_its_pages(runtime):
    free = runtime.pool.allocator.num_free
    holder = runtime.launch("sandbox_probe", ["leak", "5"])
    holder.outbox.get(timeout=120)
    assert runtime.pool.allocator.num_free == free - 5
    holder.kill("test")
    with pytest.raises(InferletKilled, match="test"):
        holder.wait(60)
    assert runtime.pool.allocator.num_free == free


def test_messages_round_trip_between_client_and_inferlet(runtime):
    inf = runtime.launch("sandbox_probe", ["wait"])
    assert inf.outbox.get(timeout=120) == "ready"
    inf.send("ping")
    assert inf.wait(60) == "echo: ping"


@pytest.mark.parametrize("policy", ["evict_newest", "error"])
def test_on_page_contention_the_newest_inferlet_is_evicted_for_an_older_one(runtime_factory, policy):
    rt = runtime_factory(num_pages=8, on_contention=policy)
    try:
        older = rt.launch("sandbox_probe", ["alloc_after", "6"])
        assert older.outbox.get(timeout=120) == "ready"
        newer = rt.launch("sandbox_probe", ["leak", "6"])
        assert newer.outbox.get(timeout=120).startswith("holding")
        older.send("go")
        if policy == "evict_newest":
            assert older.wait(120) == "got 6"
            with pytest.raises(InferletKilled, match="evicted"):
                newer.wait(60)
        else:
            with pytest.raises(Exception, match="out of KV pages"):
                older.wait(120)
            newer.send("bye")
            assert newer.wait(60) == "done"
    finally:
        rt.shutdown()
    assert rt.pool.allocator.num_free == 8
