"""Two-level scheduling: many LIPs' predicts share forward batches and stay exact."""

import torch
from _symphony_helpers import make_kernel, reference_logits


async def decode(lip):
    """Greedy decoding from a per-LIP prompt; returns the tokens and the last distribution."""
    fd = lip.create(f"{lip.home}/d{lip.pid}")
    ids = [3 + lip.args["i"], 4, 5]
    d = await lip.predict(fd, ids)
    for _ in range(lip.args.get("steps", 4)):
        t = lip.sample(d)
        ids.append(t)
        d = await lip.predict(fd, [t])
    return ids, d.logits


def test_batch_level_scheduler_packs_all_lips_predicts_into_one_forward(tiny_llama):
    kernel = make_kernel(tiny_llama, max_batch_size=8)
    try:
        pids = [kernel.submit(decode, {"i": i}) for i in range(8)]
        kernel.run()
        stats = kernel.batcher.stats
        assert stats.forwards == 5 and stats.batch_sizes == [8] * 5
        for pid in pids:
            ids, logits = kernel.process(pid).result
            torch.testing.assert_close(logits, reference_logits(kernel.model, ids), rtol=1e-4, atol=1e-4)
    finally:
        kernel.close()


def test_max_batch_size_splits_the_ready_predicts(tiny_llama):
    kernel = make_kernel(tiny_llama, max_batch_size=3)
    try:
        for i in range(7):
            kernel.submit(decode, {"i": i, "steps": 0})
        kernel.run()
        assert kernel.batcher.stats.batch_sizes == [3, 3, 1]
    finally:
        kernel.close()


def test_long_predict_is_chunked_and_matches_unchunked_logits(tiny):
    kernel = make_kernel(tiny, max_batch_tokens=8)
    try:

        async def long(lip):
            fd = lip.create(lip.home + "/long")
            return await lip.predict_at(fd, list(range(3, 28)), at=[2, 10, -1])

        proc = kernel.run_program(long)
        assert proc.error is None, proc.error_text
        assert kernel.batcher.stats.batch_sizes == [1, 1, 1, 1]  # 25 tokens in chunks of 8
        ids = list(range(3, 28))
        for d, i in zip(proc.result, [2, 10, 24]):
            ref = reference_logits(kernel.model, ids[: i + 1])
            torch.testing.assert_close(d.logits, ref, rtol=1e-4, atol=1e-4)
    finally:
        kernel.close()


def test_two_predicts_on_one_shared_file_never_share_a_batch(tiny_llama):
    from symphony import SHARED_READ_WRITE

    kernel = make_kernel(tiny_llama)
    try:

        async def writer(lip):
            fd = lip.create("/shared/log", mode=SHARED_READ_WRITE, exist_ok=True)
            await lip.append(fd, [lip.args["t"]] * 3)

        for t in (10, 20):
            kernel.submit(writer, {"t": t}, user=f"u{t}")
        kernel.run()
        f = kernel.kvfs.lookup("root", "/shared/log")
        assert f.token_ids == [10, 10, 10, 20, 20, 20] and f.positions == list(range(6))
        assert kernel.batcher.stats.batch_sizes == [1, 1]
    finally:
        kernel.close()


def test_chunked_masked_predict_matches_one_unchunked_forward_with_the_same_mask(tiny_llama):
    from core.sequence import KVSequence

    ids = [5, 6, 7, 8, 9, 10, 11]
    mask = torch.ones(7, 9, dtype=torch.bool).tril(diagonal=2)  # causal over 2 earlier + 7 new tokens
    mask[4:, 4:6] = False  # a tree: the last three tokens are a branch that does not see tokens 2-3

    kernel = make_kernel(tiny_llama, max_batch_tokens=3)
    try:

        async def masked(lip):
            fd = lip.create(lip.home + "/m")
            await lip.append(fd, [3, 4])
            return await lip.predict_at(fd, ids, at=range(7), mask=mask)

        dists = kernel.run_program(masked).result
        assert kernel.batcher.stats.batch_sizes == [1, 1, 1, 1]  # [3, 4], then 7 tokens in chunks of 3
    finally:
        kernel.close()
    model = tiny_llama.model
    pool = model.new_kv_pool(16, 4)
    seq = KVSequence(pool)
    model.forward(pool, [seq.entry(token_ids=[3, 4], logits_at=None)])
    ref = model.forward(pool, [seq.entry(token_ids=ids, mask=mask, logits_at=list(range(7)))])[0].logits
    torch.testing.assert_close(torch.stack([d.logits for d in dists]), ref, rtol=1e-4, atol=1e-4)


def test_sample_respects_allowed_tokens_and_seeded_lips_are_reproducible(llama_kernel):
    async def main(lip):
        fd = lip.create(f"{lip.home}/s{lip.pid}")
        dist = await lip.predict(fd, [3, 4, 5])
        only = [lip.sample(dist, temperature=1.0, allowed=[7, 9]) for _ in range(20)]
        draws = [lip.sample(dist, temperature=1.0) for _ in range(20)]
        return set(only), draws, dist.argmax() == lip.sample(dist)

    a = llama_kernel.run_program(main, {"seed": 1}).result
    b = llama_kernel.run_program(main, {"seed": 1}).result
    assert a[0] <= {7, 9} and a[2]
    assert a[1] == b[1]
