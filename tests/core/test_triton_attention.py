"""The Triton attention kernels against the torch reference in :mod:`core.attention`.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set before the kernels
are defined) on tiny shapes; with CUDA the same tests run the compiled kernels on the GPU. Every
buffer a kernel writes is poisoned with NaN first, so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # read when @triton.jit runs, i.e. at import of the kernels

from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from core import attention  # noqa: E402
from core import triton_attention as ta  # noqa: E402
from core.attention import AttentionMetadata  # noqa: E402

if DEVICE == "cpu" and not isinstance(ta._prefill_kernel, InterpretedFunction):
    ta = importlib.reload(ta)  # imported earlier without the interpreter: redefine the kernels under it

TOL = 1e-4  # fp32 relative error


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Every output and workspace buffer starts as NaN, so an unwritten element cannot pass."""

    def poisoned(shape, dtype, device):
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(ta, "_empty", poisoned)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-6)).item()


def _assert_close(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor], tol: float = TOL):
    (out, lse), (ref_out, ref_lse) = got, want
    assert not out.isnan().any() and not lse.isnan().any(), "kernel left NaN (unwritten) elements"
    assert _rel_err(out, ref_out) < tol
    empty = ref_lse == float("-inf")
    assert torch.equal(lse == float("-inf"), empty), "rows with nothing to attend must have lse = -inf"
    assert (out[empty] == 0).all(), "rows with nothing to attend must have out = 0"
    assert _rel_err(lse[~empty], ref_lse[~empty]) < tol


class _Batch:
    """A KV pool holding a ragged batch: shuffled pages, positions with gaps, new tokens last."""

    def __init__(self, lens, page_size, num_kv_heads, group, head_dim=16, masks=None, seed=0,
                 dtype=torch.float32):  # fmt: skip
        gen = torch.Generator().manual_seed(seed)
        pages_per_seq = [max(1, -(-length // page_size)) for _, length in lens]
        num_pages = sum(pages_per_seq) + 2  # two pages nobody owns
        order = torch.randperm(num_pages, generator=gen).tolist()
        shape = (num_pages, page_size, num_kv_heads, head_dim)
        self.k_cache = torch.randn(shape, generator=gen).to(DEVICE, dtype)
        self.v_cache = torch.randn(shape, generator=gen).to(DEVICE, dtype)
        self.positions = torch.full((num_pages, page_size), -1, dtype=torch.long)
        tables, query_start, q_pos = [], [0], []
        for (n, length), count in zip(lens, pages_per_seq):
            table, order = order[:count], order[count:]
            # Positions rise by 1-3 per token: windows must follow positions, not context indices.
            pos = torch.cumsum(torch.randint(1, 4, (length,), generator=gen), 0)
            flat = self.positions[torch.tensor(table)].flatten()
            flat[:length] = pos
            self.positions[torch.tensor(table)] = flat.view(count, page_size)
            tables.append(table)
            query_start.append(query_start[-1] + n)
            q_pos.append(pos[length - n :])
        # Slots holding no context token (unowned pages, the tail of each last page) are NaN: a
        # kernel that reads one, even under a mask, turns its output NaN.
        unused = (self.positions < 0).flatten().to(DEVICE)
        for cache in (self.k_cache, self.v_cache):
            cache.view(-1, num_kv_heads, head_dim)[unused] = float("nan")
        self.positions = self.positions.to(DEVICE)
        num_tokens = query_start[-1]
        self.q = torch.randn((num_tokens, num_kv_heads * group, head_dim), generator=gen).to(DEVICE, dtype)
        self.meta = AttentionMetadata(
            query_start=query_start,
            block_tables=tables,
            context_lens=[length for _, length in lens],
            masks=[None if m is None else m.to(DEVICE) for m in (masks or [None] * len(lens))],
            query_positions=torch.cat(q_pos).to(DEVICE),
            slot_mapping=torch.zeros(num_tokens, dtype=torch.long, device=DEVICE),
        )
        self.scale = head_dim**-0.5

    def args(self):
        return self.q, self.k_cache, self.v_cache, self.positions, self.meta, self.scale

    def reference(self, sliding_window=None):
        return attention.paged_attention_torch(*self.args(), sliding_window)


def _random_masks(lens, seed, masked):
    """Random (n, L) masks for the sequences flagged in ``masked``; row 0 of each allows nothing."""
    gen = torch.Generator().manual_seed(seed + 1)
    masks = []
    for (n, length), use in zip(lens, masked):
        if not use:
            masks.append(None)
            continue
        m = torch.rand((n, length), generator=gen) < 0.5
        m[0] = False
        masks.append(m)
    return masks


# (new tokens, context length) per sequence: odd lengths, a single-token context, a chunk that
# starts mid-page, a sequence with no new tokens, and one long enough for several KV tiles.
PREFILL_LENS = [(5, 5), (1, 1), (7, 23), (0, 9), (19, 70)]


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("variant", ["causal", "sliding_window", "mask"])
def test_prefill_kernel_matches_torch_reference(page_size, group, variant):
    masks = (
        _random_masks(PREFILL_LENS, seed=group, masked=[True, False, True, False, True]) if variant == "mask" else None
    )
    batch = _Batch(PREFILL_LENS, page_size, num_kv_heads=2 if group < 4 else 1, group=group, masks=masks, seed=group)
    window = 9 if variant == "sliding_window" else None
    got = ta.paged_prefill(*batch.args(), sliding_window=window)
    _assert_close(got, batch.reference(window))


def test_prefill_kernel_applies_window_and_mask_together():
    lens = [(6, 30), (4, 4)]
    batch = _Batch(lens, page_size=16, num_kv_heads=1, group=2, masks=_random_masks(lens, 3, [True, False]), seed=3)
    _assert_close(ta.paged_prefill(*batch.args(), sliding_window=7), batch.reference(7))


def test_prefill_kernel_matches_reference_for_head_dim_not_power_of_two():
    batch = _Batch([(3, 11), (2, 2)], page_size=16, num_kv_heads=1, group=2, head_dim=24, seed=4)
    _assert_close(ta.paged_prefill(*batch.args()), batch.reference())


DECODE_LENS = [(1, 1), (1, 17), (1, 130), (1, 64)]


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("window", [None, 11])
def test_decode_kernel_matches_torch_reference(page_size, group, window):
    batch = _Batch(DECODE_LENS, page_size, num_kv_heads=2, group=group, seed=10 + group)
    assert batch.meta.is_decode
    _assert_close(ta.paged_decode(*batch.args(), sliding_window=window), batch.reference(window))


@pytest.mark.parametrize("num_splits", [1, 2, 3, 7])
def test_decode_kernel_splits_along_kv_merge_exactly(num_splits):
    # 7 splits of a 130-token context: the short sequences' late splits are empty (lse = -inf parts).
    batch = _Batch(DECODE_LENS, page_size=16, num_kv_heads=1, group=4, seed=20)
    got = ta.paged_decode(*batch.args(), sliding_window=None, num_splits=num_splits)
    _assert_close(got, batch.reference())


def test_decode_kernel_attends_to_shared_pages_of_forked_sequences():
    # Two sequences share a prefix page (a fork); each continues on its own page.
    batch = _Batch([(1, 20), (1, 20)], page_size=16, num_kv_heads=1, group=2, seed=21)
    batch.meta.block_tables[1][0] = batch.meta.block_tables[0][0]
    batch.meta.__dict__.pop("block_table_tensor", None)
    _assert_close(ta.paged_decode(*batch.args(), num_splits=2), batch.reference())


def test_backend_switch_dispatches_decode_and_prefill_to_triton():
    decode = _Batch(DECODE_LENS[:2], page_size=16, num_kv_heads=1, group=2, seed=30)
    prefill = _Batch(PREFILL_LENS[:3], page_size=16, num_kv_heads=1, group=2, seed=31)
    for batch in (decode, prefill):
        got = attention.paged_attention(*batch.args(), sliding_window=5, backend="triton")
        _assert_close(got, batch.reference(5))


def test_merge_kernel_matches_torch_merge_including_empty_parts():
    gen = torch.Generator().manual_seed(40)
    outs = [torch.randn((5, 3, 24), generator=gen).to(DEVICE) for _ in range(3)]
    lses = [torch.randn((5, 3), generator=gen).to(DEVICE) * 4 for _ in range(3)]
    lses[1][0] = float("-inf")  # token 0: part 1 attended nothing
    outs[1][0] = 0.0
    for part in range(3):  # token 1, head 2: no part attended anything
        lses[part][1, 2] = float("-inf")
        outs[part][1, 2] = 0.0
    _assert_close(ta.merge_attention_states(outs, lses), attention.merge_attention_states_torch(outs, lses))


@pytest.mark.parametrize("num_parts", [2, 3, 4])
def test_attention_over_kv_parts_merged_equals_attention_over_whole(num_parts):
    # Split each sequence's context into arbitrary disjoint subsets (not ranges), attend to each
    # subset with the prefill kernel's custom mask, merge, and compare with causal attention.
    lens = [(4, 13), (1, 40), (6, 6)]
    whole = _Batch(lens, page_size=16, num_kv_heads=1, group=2, seed=50 + num_parts)
    gen = torch.Generator().manual_seed(num_parts)
    owner = [torch.randint(0, num_parts, (length,), generator=gen) for _, length in lens]
    outs, lses = [], []
    for part in range(num_parts):
        masks = []
        for (n, length), own in zip(lens, owner):
            causal = torch.arange(length)[None, :] <= torch.arange(length - n, length)[:, None]
            masks.append(causal & (own == part)[None, :])
        whole.meta.masks = [m.to(DEVICE) for m in masks]
        whole.meta.cache.clear()  # a new mask set is a new forward
        whole.meta.__dict__.pop("is_decode", None)
        out, lse = ta.paged_prefill(*whole.args())
        outs.append(out)
        lses.append(lse)
    whole.meta.masks = [None] * len(lens)
    whole.meta.__dict__.pop("is_decode", None)
    _assert_close(ta.merge_attention_states(outs, lses), whole.reference())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_kernels_match_reference_within_half_precision(dtype):
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("Triton 3.9's interpreter computes tl.dot on bf16 from raw bits; bf16 is checked on CUDA")
    # Probabilities are rounded to the half type before the P @ V dot, as in FlashAttention.
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    batch = _Batch(PREFILL_LENS[:3], page_size=16, num_kv_heads=1, group=2, seed=60, dtype=dtype)
    _assert_close(ta.paged_prefill(*batch.args(), sliding_window=6), batch.reference(6), tol=tol)
    decode = _Batch(DECODE_LENS, page_size=16, num_kv_heads=1, group=2, seed=61, dtype=dtype)
    _assert_close(ta.paged_decode(*decode.args(), num_splits=3), decode.reference(), tol=tol)


def test_context_longer_than_its_pages_is_rejected():
    batch = _Batch([(1, 10)], page_size=16, num_kv_heads=1, group=1)
    batch.meta.context_lens[0] = 17
    with pytest.raises(ta.TritonAttentionError, match="context_len 17 exceeds its 1 pages"):
        ta.paged_decode(*batch.args())


def test_mismatched_heads_are_rejected():
    batch = _Batch([(2, 4)], page_size=16, num_kv_heads=2, group=1)
    q = batch.q[:, :1]  # 1 query head over 2 KV heads
    with pytest.raises(ta.TritonAttentionError, match="multiple of KV heads"):
        ta.paged_prefill(q, *batch.args()[1:])


def test_mask_of_wrong_shape_is_rejected():
    batch = _Batch([(2, 4)], page_size=16, num_kv_heads=1, group=1, masks=[torch.ones(2, 3, dtype=torch.bool)])
    with pytest.raises(ta.TritonAttentionError, match=r"mask shape \(2, 3\), expected \(2, 4\)"):
        ta.paged_prefill(*batch.args())


@pytest.fixture
def gemma3(tiny_gemma3):
    """The session's tiny Gemma 3 (its attention backend restored afterwards: it is shared), or on
    CUDA a copy of it on the GPU, where the compiled kernels need their tensors."""
    if DEVICE == "cuda":
        from core.loader import load_model
        from core.testing import tiny_checkpoint

        yield load_model(str(tiny_checkpoint("gemma3")), device="cuda")
        return
    backend = tiny_gemma3.model.attention_backend
    yield tiny_gemma3
    tiny_gemma3.model.attention_backend = backend


def _forward_steps(model, backend: str, prompts: list[list[int]], chunk: int):
    """Chunked prefill of ``prompts`` then a decode step; logits and lse of every step."""
    from core.sequence import KVSequence

    model.attention_backend = backend
    pool = model.new_kv_pool(num_pages=64, page_size=4)
    seqs = [KVSequence(pool) for _ in prompts]
    results = []
    steps = [[p[s : s + chunk] for p in prompts] for s in range(0, max(map(len, prompts)), chunk)]
    steps.append([[7] for _ in prompts])
    for step in steps:
        live = [(seq, ids) for seq, ids in zip(seqs, step) if ids]
        entries = [seq.entry(token_ids=ids, logits_at=list(range(len(ids))), return_lse=True) for seq, ids in live]
        results.extend((o.logits, o.lse) for o in model.forward(pool, entries))
    return results


def test_model_logits_and_lse_with_triton_backend_match_torch_backend_on_tiny_gemma3(gemma3):
    # Tiny Gemma 3: sliding-window (8) and global layers, 2 query heads per KV head, page size 4.
    model = gemma3.model
    prompts = [list(range(3, 16)), list(range(40, 45)), [5]]  # 13 tokens > the window of 8
    want = _forward_steps(model, "torch", prompts, chunk=7)
    got = _forward_steps(model, "triton", prompts, chunk=7)
    for (logits, lse), (ref_logits, ref_lse) in zip(got, want):
        assert _rel_err(logits, ref_logits) < TOL
        assert _rel_err(lse, ref_lse) < TOL


def test_engine_with_triton_backend_gives_torch_backend_greedy_tokens_on_tiny_gemma3(gemma3):
    from core.config import EngineConfig
    from core.engine import Engine
    from core.sampling import SamplingParams

    loaded = gemma3
    prompts = ["Hello, Triton", "paged KV!"]  # byte-level: 14 and 10 tokens, prefilled in chunks of 8
    tokens = {}
    for backend in ("torch", "triton"):
        config = EngineConfig(page_size=4, num_pages=64, prefill_chunk_size=8, attention_backend=backend)
        engine = Engine(loaded.model, loaded.tokenizer, config)
        tokens[backend] = [o.token_ids for o in engine.generate(prompts, SamplingParams(max_new_tokens=3))]
    assert tokens["triton"] == tokens["torch"]


def test_cpu_tensors_without_the_interpreter_are_rejected(monkeypatch):
    monkeypatch.setattr(ta, "_interpreting", lambda: False)
    meta = AttentionMetadata(
        [0, 1], [[0]], [1], [None], torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    )
    cache = torch.zeros(1, 4, 1, 16)
    with pytest.raises(ta.TritonAttentionError, match="tensors on cpu: it runs on CUDA"):
        ta.paged_attention(torch.zeros(1, 1, 16), cache, cache, torch.zeros(1, 4, dtype=torch.long), meta, 0.25)


# Compiled in a fresh process: this one defined Triton's own library functions under the interpreter.
_COMPILE_SCRIPT = """
import json, torch
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from core import triton_attention as ta

def build(kernel, tiles, dtype):
    dt = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    constexprs = dict(tiles.constexprs, **({"PAGE_SIZE": 16} if "PAGE_SIZE" in kernel.arg_names else {}))
    types = {"q_ptr": "*" + dt, "k_ptr": "*" + dt, "v_ptr": "*" + dt, "mask_ptr": "*u8", "sm_scale_log2": "fp32"}
    types |= {n: "*i64" for n in ("pos_ptr", "q_pos_ptr", "mask_off_ptr")}
    types |= {n: "*i32" for n in ("work_seq_ptr", "work_first_ptr", "query_start_ptr", "context_len_ptr",
                                  "block_table_ptr")}
    sig = {a: "constexpr" if a in constexprs else types.get(a, "*fp32" if a.endswith("_ptr") else "i32")
           for a in kernel.arg_names}
    return compile(ASTSource(kernel, sig, constexprs), target=GPUTarget("cuda", 90, 32), options=tiles.launch)

merge = ta.Tiles(dict(HEAD_DIM=32, BLOCK_H=4, BLOCK_D=32), dict(num_warps=4))
cases = {  # the tile functions' choices, on head dims small enough to compile quickly
    "prefill, mask + window, bf16": (ta._prefill_kernel, ta.prefill_tiles(32, 2, torch.bfloat16, True, True), torch.bfloat16),
    "prefill, causal, fp32": (ta._prefill_kernel, ta.prefill_tiles(16, 1, torch.float32, False, False), torch.float32),
    "decode, window, bf16": (ta._decode_kernel, ta.decode_tiles(32, 4, torch.bfloat16, True), torch.bfloat16),
    "merge, fp32": (ta._merge_kernel, merge, torch.float32),
}
built = [case for case, args in cases.items() if build(*args).asm["cubin"]]
print(json.dumps(built))
"""


@pytest.mark.slow
def test_kernels_compile_to_hopper_code_without_a_gpu():
    # The interpreter runs the kernels as Python and cannot catch what only the compiler rejects
    # (types changing across loop iterations, layouts): compile every branch for sm_90 offline, on
    # small tiles to keep it quick (bench/attention.py compiles the real ones on a GPU).
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9 warns when it is unset
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    built = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(built) == 4, f"only {built} produced an sm_90 binary"
