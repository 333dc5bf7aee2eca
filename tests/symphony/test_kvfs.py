"""KVFS against references: forks and restores give the logits of plain full recompute."""

import pytest
import torch
from _symphony_helpers import make_kernel, reference_logits

from symphony import KVFS, FileNotFound, PermissionDenied
from symphony.kvfs import DISK, HOST, SHARED_READ_ONLY


def test_fork_divergent_appends_match_from_scratch_logits(kernel):
    async def main(lip):
        fd = lip.create(lip.home + "/root")
        await lip.append(fd, [5, 6, 7, 8, 9, 10])  # 6 tokens: the fork shares a half-full page
        a, b = lip.fork(fd), lip.fork(fd)
        da, db = await lip.gather(lip.predict(a, [11, 12, 13]), lip.predict(b, [40]))
        dr = await lip.predict(fd, [99, 98])
        return [(lip.read(x)[0], d.logits) for x, d in ((a, da), (b, db), (fd, dr))]

    proc = kernel.run_program(main, user="alice")
    assert proc.error is None, proc.error_text
    seqs = [ids for ids, _ in proc.result]
    assert seqs == [[5, 6, 7, 8, 9, 10, 11, 12, 13], [5, 6, 7, 8, 9, 10, 40], [5, 6, 7, 8, 9, 10, 99, 98]]
    for ids, logits in proc.result:
        torch.testing.assert_close(logits, reference_logits(kernel.model, ids), rtol=1e-4, atol=1e-4)


def test_explicit_positions_are_kept_and_match_reference(kernel):
    async def main(lip):
        fd = lip.create(lip.home + "/gap")
        d = await lip.predict(fd, [3, 4, 5], positions=[10, 11, 20])
        return lip.read(fd), d.logits

    proc = kernel.run_program(main)
    (ids, pos), logits = proc.result
    assert pos == [10, 11, 20]
    torch.testing.assert_close(logits, reference_logits(kernel.model, ids, pos), rtol=1e-4, atol=1e-4)


def test_lip_cannot_open_another_users_private_file(llama_kernel):
    async def owner(lip):
        fd = lip.create("/home/alice/secret")
        await lip.append(fd, [1, 2, 3])

    async def intruder(lip):
        for path, mode in [("/home/alice/secret", "r"), ("/shared/../home/alice/secret", "r")]:
            try:
                lip.open(path, mode)
            except Exception as e:
                lip.send(type(e).__name__)

    assert llama_kernel.run_program(owner, user="alice").error is None
    pid = llama_kernel.submit(intruder, user="mallory")
    llama_kernel.run()
    assert llama_kernel.receive(pid) == ["PermissionDenied", "KVFSError"]


def test_shared_read_only_file_can_be_forked_but_not_written(llama_kernel):
    async def publisher(lip):
        fd = lip.create("/shared/system", mode=SHARED_READ_ONLY)
        await lip.append(fd, [7, 8, 9, 10, 11])

    async def reader(lip):
        with pytest.raises(PermissionDenied):
            lip.open("/shared/system", "rw")
        with pytest.raises(PermissionDenied):
            lip.unlink("/shared/system")
        fd = lip.open("/shared/system")
        mine = lip.fork(fd, lip.home + "/mine")
        d = await lip.predict(mine, [12])
        return lip.read(mine)[0], lip.read(fd)[0], d.logits

    assert llama_kernel.run_program(publisher, user="alice").error is None
    proc = llama_kernel.run_program(reader, user="bob")
    assert proc.error is None, proc.error_text
    mine, shared, logits = proc.result
    assert shared == [7, 8, 9, 10, 11] and mine == [*shared, 12]
    torch.testing.assert_close(logits, reference_logits(llama_kernel.model, mine), rtol=1e-4, atol=1e-4)


def test_files_persist_across_lip_runs_and_anonymous_forks_are_freed(llama_kernel):
    pool = llama_kernel.kvfs.pool
    free_before = pool.allocator.num_free

    async def first(lip):
        fd = lip.create(lip.home + "/notes")
        await lip.append(fd, list(range(3, 13)))
        lip.fork(fd)  # anonymous: gone when the LIP exits
        tmp = lip.fork(fd)
        await lip.append(tmp, [1, 2, 3, 4, 5])  # private pages of the fork

    async def second(lip):
        fd = lip.open(lip.home + "/notes", "rw")
        return lip.read(fd)[0]

    llama_kernel.run_program(first, user="carol")
    assert pool.allocator.num_free == free_before - 3  # 10 tokens in pages of 4
    assert llama_kernel.run_program(second, user="carol").result == list(range(3, 13))
    llama_kernel.kvfs.unlink("carol", "/home/carol/notes")
    assert pool.allocator.num_free == free_before


def test_link_gives_a_second_name_and_unlink_keeps_the_other(llama_kernel):
    kvfs = llama_kernel.kvfs
    f = kvfs.create("dave", kvfs.home("dave") + "/a")
    kvfs.link("dave", "/home/dave/a", "/home/dave/b")
    kvfs.unlink("dave", "/home/dave/a")
    assert kvfs.lookup("dave", "/home/dave/b") is f
    with pytest.raises(FileNotFound):
        kvfs.lookup("dave", "/home/dave/a")


def _predict_after(kernel, path: str, tokens: list[int]) -> torch.Tensor:
    async def main(lip):
        fd = lip.fork(lip.open(path))
        return (await lip.predict(fd, tokens)).logits

    proc = kernel.run_program(main, user="root")
    assert proc.error is None, proc.error_text
    return proc.result


def test_save_restore_gives_identical_logits(tiny, tmp_path):
    k1, k2 = make_kernel(tiny), make_kernel(tiny, num_pages=64)
    try:

        async def writer(lip):
            fd = lip.create("/shared/doc", mode=SHARED_READ_ONLY)
            await lip.append(fd, list(range(20, 33)), positions=list(range(5, 18)))

        k1.run_program(writer, user="erin")
        k1.kvfs.save(k1.kvfs.lookup("root", "/shared/doc"), tmp_path / "doc.kv")
        f = k2.kvfs.restore(tmp_path / "doc.kv", "erin", "/shared/doc")
        assert (f.token_ids, f.positions, f.owner) == (list(range(20, 33)), list(range(5, 18)), "erin")
        assert torch.equal(_predict_after(k1, "/shared/doc", [50, 51]), _predict_after(k2, "/shared/doc", [50, 51]))
    finally:
        k1.close()
        k2.close()


def test_save_tree_and_load_tree_round_trip(llama_kernel, tiny_llama, tmp_path):
    async def writer(lip):
        fd = lip.create(lip.home + "/chat")
        await lip.append(fd, [4, 5, 6, 7, 8])

    llama_kernel.run_program(writer, user="frank")
    assert llama_kernel.kvfs.save_tree(tmp_path) == 1
    k2 = make_kernel(tiny_llama)
    try:
        assert k2.kvfs.load_tree(tmp_path) == 1
        f = k2.kvfs.lookup("frank", "/home/frank/chat")
        assert f.owner == "frank" and f.token_ids == [4, 5, 6, 7, 8]
        with pytest.raises(PermissionDenied):
            k2.kvfs.lookup("grace", "/home/frank/chat")
        assert torch.equal(
            _predict_after(llama_kernel, "/home/frank/chat", [9]), _predict_after(k2, "/home/frank/chat", [9])
        )
    finally:
        k2.close()


@pytest.mark.parametrize("where", [HOST, DISK])
def test_swapped_out_file_comes_back_with_identical_logits(llama_kernel, where):
    async def writer(lip):
        fd = lip.create("/shared/cold", mode=SHARED_READ_ONLY)
        await lip.append(fd, list(range(30, 41)))

    llama_kernel.run_program(writer, user="heidi")
    before = _predict_after(llama_kernel, "/shared/cold", [60])
    f = llama_kernel.kvfs.lookup("root", "/shared/cold")
    free = llama_kernel.kvfs.pool.allocator.num_free
    llama_kernel.kvfs.swap_out(f, where)
    assert f.residency == where and llama_kernel.kvfs.pool.allocator.num_free == free + 3
    assert torch.equal(_predict_after(llama_kernel, "/shared/cold", [60]), before)
    assert f.residency == "device"


def test_pool_pressure_swaps_idle_files_out_instead_of_failing(tiny_llama):
    kernel = make_kernel(tiny_llama, num_pages=12, host_capacity_pages=2)  # 48 slots
    try:

        async def fill(lip):
            fd = lip.create(lip.home + f"/f{lip.args['i']}")
            return (await lip.predict(fd, list(range(3, 3 + 14)))).logits  # 4 pages each

        results = [kernel.run_program(fill, {"i": i}, user="ivan") for i in range(5)]
        assert all(p.error is None for p in results), [p.error_text for p in results]
        kvfs: KVFS = kernel.kvfs
        assert kvfs.stats["swap_out_host"] >= 2 and kvfs.stats["swap_out_disk"] >= 1
        for i in range(5):  # every file still answers like full recompute
            logits = _predict_after(kernel, f"/home/ivan/f{i}", [20])
            ref = reference_logits(kernel.model, [*range(3, 17), 20])
            torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)
    finally:
        kernel.close()


def test_truncate_then_append_matches_reference_and_read_only_fd_cannot_predict(llama_kernel):
    from symphony import BadFileDescriptor

    async def main(lip):
        fd = lip.create(lip.home + "/t", mode=SHARED_READ_ONLY)
        await lip.append(fd, [5, 6, 7, 8, 9, 10, 11])
        twin = lip.fork(fd)  # shares the pages that truncate will cut into
        lip.truncate(fd, 3)
        d = await lip.predict(fd, [40, 41])
        ro = lip.open(lip.home + "/t", "r")
        try:
            lip.predict(ro, [1])
        except BadFileDescriptor:
            lip.send("read-only")
        dt = await lip.predict(twin, [12])  # the twin's pages survived the truncate and the write
        return lip.read(fd)[0], d.logits, lip.read(twin)[0], dt.logits

    pid = llama_kernel.submit(main, user="judy")
    llama_kernel.run()
    proc = llama_kernel.process(pid)
    assert proc.error is None, proc.error_text
    ids, logits, twin, twin_logits = proc.result
    assert ids == [5, 6, 7, 40, 41] and twin == [5, 6, 7, 8, 9, 10, 11, 12]
    torch.testing.assert_close(logits, reference_logits(llama_kernel.model, ids), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(twin_logits, reference_logits(llama_kernel.model, twin), rtol=1e-4, atol=1e-4)
    assert llama_kernel.receive(pid) == ["read-only"]
