"""Faulty LIPs are stopped and cleaned up without affecting the others."""

import asyncio
import time

import torch
from _symphony_helpers import make_kernel, reference_logits

from symphony import BudgetExceeded, InvalidSyscall, LIPBudget, ProcessState, ToolError


async def good(lip):
    fd = lip.create(lip.home + "/good")
    d = None
    for t in [5, 6, 7, 8, 9, 10]:
        d = await lip.predict(fd, [t])
    return d.logits


async def raises(lip):
    fd = lip.create(lip.home + "/half")
    await lip.append(fd, [1, 2, 3, 4, 5])
    lip.fork(fd)
    raise ValueError("bug in the LIP")


async def spins(lip):
    fd = lip.fork(lip.create(lip.home + "/spin"))
    await lip.append(fd, [1, 2, 3])
    while True:
        pass


async def spins_and_swallows(lip):
    await lip.sched_yield()
    while True:
        try:
            while True:
                pass
        except BaseException:  # a hostile LIP that tries to survive the interrupt
            continue


async def yields_forever(lip):
    while True:
        await lip.sched_yield()


async def awaits_asyncio(lip):
    await asyncio.sleep(0)


def _assert_good_result(kernel, proc):
    assert proc.state is ProcessState.EXITED, proc.error_text
    ref = reference_logits(kernel.model, [5, 6, 7, 8, 9, 10])
    torch.testing.assert_close(proc.result, ref, rtol=1e-4, atol=1e-4)


def test_raising_and_looping_lips_are_stopped_and_cleaned_up_without_affecting_others(tiny_llama):
    kernel = make_kernel(tiny_llama, budget=LIPBudget(max_slice_s=0.3, max_syscalls=200))
    try:
        free = kernel.kvfs.pool.allocator.num_free
        pids = {
            name: kernel.submit(fn, user=name)
            for name, fn in [
                ("good", good),
                ("raises", raises),
                ("spins", spins),
                ("swallows", spins_and_swallows),
                ("yields", yields_forever),
                ("asyncio", awaits_asyncio),
                ("good2", good),
            ]
        }
        t0 = time.monotonic()
        kernel.run()
        assert time.monotonic() - t0 < 60
        procs = {name: kernel.process(pid) for name, pid in pids.items()}
        _assert_good_result(kernel, procs["good"])
        _assert_good_result(kernel, procs["good2"])
        assert isinstance(procs["raises"].error, ValueError)
        assert "bug in the LIP" in procs["raises"].error_text
        for name in ("spins", "swallows", "yields"):
            assert procs[name].state is ProcessState.FAILED
            assert isinstance(procs[name].error, BudgetExceeded), (name, procs[name].error)
        assert isinstance(procs["asyncio"].error, InvalidSyscall)
        # Cleanup: descriptors closed, anonymous forks freed; only the named files keep pages.
        assert all(not p.fds for p in procs.values())
        kept = sum(f.num_pages for f in kernel.kvfs.files.values())
        assert kernel.kvfs.pool.allocator.num_free == free - kept
        assert kernel.kvfs.lookup("root", "/home/raises/half").token_ids == [1, 2, 3, 4, 5]
    finally:
        kernel.close()


def test_token_budget_stops_a_lip(llama_kernel):
    async def greedy(lip):
        fd = lip.create(lip.home + "/big")
        await lip.append(fd, list(range(3, 60)))

    proc = llama_kernel.run_program(greedy, budget=LIPBudget(max_tokens=10))
    assert isinstance(proc.error, BudgetExceeded)
    assert llama_kernel.batcher.stats.forwards == 0  # stopped before the model ran


def test_tool_runs_server_side_and_its_errors_reach_the_lip(llama_kernel):
    def add(a, b):
        return a + b

    def broken():
        raise OSError("disk on fire")

    def slow():
        time.sleep(2.0)

    async def main(lip):
        got = [await lip.call_tool(add, 2, 3)]
        try:
            await lip.call_tool(broken)
        except ToolError as e:
            got.append(str(e))
        try:
            await lip.call_tool(slow, timeout_s=0.1)
        except ToolError as e:
            got.append("timeout" if "timed out" in str(e) else str(e))
        return got

    proc = llama_kernel.run_program(main)
    assert proc.result == [5, "tool raised OSError: disk on fire", "timeout"], proc.error_text


def test_syscalls_from_a_tool_thread_are_refused(llama_kernel):
    async def main(lip):
        try:
            await lip.call_tool(lambda: lip.tokenize("x"))
        except ToolError as e:
            return type(e.__cause__).__name__

    assert llama_kernel.run_program(main).result == "InvalidSyscall"


def test_blocked_lip_gets_no_time_slices_until_its_message_arrives(llama_kernel):
    async def echo(lip):
        n = 0
        while (msg := await lip.receive()) is not None:
            n += 1
            lip.send(msg.upper())
        return n

    pid = llama_kernel.submit(echo)
    llama_kernel.run()
    proc = llama_kernel.process(pid)
    slices = proc.stats["slices"]
    for _ in range(3):
        llama_kernel.run()  # nothing to do: the LIP is blocked in receive
    assert proc.stats["slices"] == slices and proc.state is ProcessState.BLOCKED
    llama_kernel.send(pid, "hi")
    llama_kernel.run()
    assert llama_kernel.receive(pid) == ["HI"] and proc.stats["slices"] == slices + 1
    llama_kernel.send(pid, None)
    llama_kernel.run()
    assert proc.result == 1


def test_kill_cancels_queued_predicts_and_closes_files(llama_kernel):
    async def victim(lip):
        fd = lip.fork(lip.create(lip.home + "/v"))
        await lip.predict(fd, [1, 2, 3])

    pid = llama_kernel.submit(victim)
    llama_kernel._run_slice(llama_kernel._ready.popleft())  # run it up to its predict
    assert llama_kernel.batcher.has_work()
    llama_kernel.kill(pid)
    assert not llama_kernel.batcher.has_work()
    assert llama_kernel.process(pid).state is ProcessState.FAILED and not llama_kernel.process(pid).fds


def test_lip_files_load_with_dataclasses_and_broken_files_fail_at_submit(llama_kernel, tmp_path):
    import pytest

    from symphony import LIPError

    good_file = tmp_path / "lip_ok.py"
    good_file.write_text(
        "from dataclasses import dataclass\n\n@dataclass\nclass Note:\n    text: str\n\n"
        "async def main(lip):\n    return Note(lip.detokenize(lip.tokenize('hi'))).text\n"
    )
    assert llama_kernel.run_program(good_file).result == "hi"
    broken = tmp_path / "lip_broken.py"
    broken.write_text("async def main(lip):\n    return (\n")
    with pytest.raises(LIPError, match="failed to load"):
        llama_kernel.submit(broken)
    with pytest.raises(LIPError, match="main must be"):
        llama_kernel.submit(lambda lip: None)
