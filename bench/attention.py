"""GPU benchmark of the Triton paged-attention kernels (:mod:`core.triton_attention`).

For each workload it times our kernel and ``torch.nn.functional.scaled_dot_product_attention``
(flash, or the best fused backend that accepts GQA) on the same work, and checks both agree first:

* decode: one query per sequence over a paged context (pages shuffled, as after a while of
  serving); SDPA gets the same K/V dense and contiguous, its best case. Decode reads every K/V
  byte once, so we report its achieved bandwidth as a fraction of the measured device-to-device
  copy bandwidth (``dst.copy_(src)``, read + write bytes). Goal: >= 80% at 8k+ context;
* prefill: a batch of fresh prompts, causal (SDPA ``is_causal=True`` on dense tensors). Goal:
  within 1.5x of SDPA;
* merge: combining two partial attention states against the torch reference merge.

Metadata (block tables on the device, the prefill work list) is built once per forward and shared
by every layer, so it is built before timing, as in the engine.

Run on a machine with CUDA::

    python bench/attention.py                       # Llama-8B-like heads (32 q / 8 kv, dim 128), bf16
    python bench/attention.py --preset gemma3-270m  # 4 q / 1 kv heads, dim 256
    python bench/attention.py --json results/bench_attention.json
    python bench/attention.py --sm90-resources      # no GPU needed: registers/spills of the sm_90 builds

Without CUDA it exits with a message: the kernels' correctness is tested on the CPU by
``tests/core/test_triton_attention.py`` under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = {
    "llama-8b": dict(num_heads=32, num_kv_heads=8, head_dim=128),
    "gemma3-270m": dict(num_heads=4, num_kv_heads=1, head_dim=256),
    "qwen2-7b": dict(num_heads=28, num_kv_heads=4, head_dim=128),
}


@dataclass
class Row:
    kernel: str
    shape: str
    ours_ms: float
    sdpa_ms: float | None
    sdpa_backend: str
    ratio: float | None  # ours / sdpa (< 1 = faster than SDPA)
    bandwidth_gbs: float | None = None
    bandwidth_fraction: float | None = None  # of the device-to-device copy bandwidth
    max_abs_err: float | None = None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="llama-8b", help="head configuration")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--decode-batch", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--decode-context", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--prefill-batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--prefill-len", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--merge-tokens", type=int, nargs="+", default=[64, 4096])
    p.add_argument("--max-kv-gib", type=float, default=16.0, help="skip decode shapes whose K/V exceed this")
    p.add_argument("--copy-gib", type=float, default=1.0, help="buffer size for the copy-bandwidth probe")
    p.add_argument("--rep-ms", type=int, default=200, help="triton.testing.do_bench repetition time per timing")
    p.add_argument("--json", type=Path, help="also write the rows (and device facts) to this JSON file")
    p.add_argument(
        "--sm90-resources",
        action="store_true",
        help="no GPU needed: compile the kernels this preset uses for sm_90 and print registers,\n"
        "spilled bytes and shared memory (what the tile sizes were chosen by)",
    )
    return p.parse_args(argv)


def _time_ms(fn: Callable[[], object], rep_ms: int) -> float:
    """Median time of ``fn`` in ms; do_bench flushes L2 between runs so bandwidth is not flattered."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


def copy_bandwidth_gbs(gib: float, rep_ms: int) -> float:
    """Device-to-device copy bandwidth in GB/s, counting the bytes read and the bytes written."""
    n = int(gib * 2**30) // 4
    src = torch.empty(n, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), rep_ms)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def _sdpa(q, k, v, causal: bool) -> tuple[Callable[[], torch.Tensor], str]:
    """The fastest fused SDPA backend that runs this shape with GQA (flash first)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ]
    for name, backend in backends:

        def run(backend=backend):
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

        try:
            run()
        except RuntimeError:
            continue
        return run, name
    raise RuntimeError(f"no fused SDPA backend accepts q {tuple(q.shape)}, k {tuple(k.shape)}")


def _paged_pool(num_seqs: int, context: int, cfg: dict, page_size: int, dtype: torch.dtype, seed: int = 0):
    """Dense K/V (B, KVH, L, D) and the same tokens in a shuffled paged pool, with metadata parts."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    kvh, d = cfg["num_kv_heads"], cfg["head_dim"]
    k = torch.randn((num_seqs, kvh, context, d), generator=gen, device="cuda", dtype=dtype)
    v = torch.randn((num_seqs, kvh, context, d), generator=gen, device="cuda", dtype=dtype)
    pages_per_seq = -(-context // page_size)
    num_pages = num_seqs * pages_per_seq
    order = torch.randperm(num_pages, device="cuda", generator=gen)
    tables = order.view(num_seqs, pages_per_seq)
    k_cache = torch.zeros((num_pages, page_size, kvh, d), device="cuda", dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    pad = pages_per_seq * page_size - context
    for src, cache in ((k, k_cache), (v, v_cache)):
        paged = torch.nn.functional.pad(src.transpose(1, 2), (0, 0, 0, 0, 0, pad))  # (B, L', KVH, D)
        cache[tables.flatten()] = paged.reshape(num_pages, page_size, kvh, d)
    positions = torch.full((num_pages, page_size), -1, dtype=torch.long, device="cuda")
    positions[tables.flatten()] = (
        torch.arange(pages_per_seq * page_size, device="cuda")
        .view(1, pages_per_seq, page_size)
        .expand(num_seqs, -1, -1)
        .reshape(num_pages, page_size)
    )
    return k, v, k_cache, v_cache, positions, tables.tolist()


def _meta(num_new: list[int], contexts: list[int], tables: list[list[int]]):
    from core.attention import AttentionMetadata

    starts = [0]
    for n in num_new:
        starts.append(starts[-1] + n)
    q_pos = torch.cat([torch.arange(c - n, c) for n, c in zip(num_new, contexts)]).cuda()
    return AttentionMetadata(starts, tables, contexts, [None] * len(contexts), q_pos, torch.zeros_like(q_pos))


def _decode_row(args, cfg, dtype, copy_gbs, b: int, ctx: int) -> Row:
    from core import triton_attention as ta

    h, d = cfg["num_heads"], cfg["head_dim"]
    kv_bytes = 2 * b * ctx * cfg["num_kv_heads"] * d * (torch.finfo(dtype).bits // 8)
    k, v, k_cache, v_cache, positions, tables = _paged_pool(b, ctx, cfg, args.page_size, dtype)
    q = torch.randn((b, h, d), device="cuda", dtype=dtype)
    meta = _meta([1] * b, [ctx] * b, tables)
    ours = lambda: ta.paged_decode(q, k_cache, v_cache, positions, meta, d**-0.5)
    sdpa, name = _sdpa(q.unsqueeze(2), k, v, causal=False)
    err = (ours()[0].float() - sdpa().squeeze(2).float()).abs().max().item()
    t_ours, t_sdpa = _time_ms(ours, args.rep_ms), _time_ms(sdpa, args.rep_ms)
    gbs = kv_bytes / (t_ours * 1e-3) / 1e9
    return Row("decode", f"B={b} L={ctx}", t_ours, t_sdpa, name, t_ours / t_sdpa, gbs, gbs / copy_gbs, err)


def bench_decode(args, cfg, dtype, copy_gbs) -> list[Row]:
    elem = torch.finfo(dtype).bits // 8
    return [
        _decode_row(args, cfg, dtype, copy_gbs, b, ctx)
        for b in args.decode_batch
        for ctx in args.decode_context
        if 2 * b * ctx * cfg["num_kv_heads"] * cfg["head_dim"] * elem <= args.max_kv_gib * 2**30
    ]


def _prefill_row(args, cfg, dtype, b: int, n: int) -> Row:
    from core import triton_attention as ta

    h, d = cfg["num_heads"], cfg["head_dim"]
    k, v, k_cache, v_cache, positions, tables = _paged_pool(b, n, cfg, args.page_size, dtype, seed=1)
    q = torch.randn((b, h, n, d), device="cuda", dtype=dtype)
    q_flat = q.transpose(1, 2).reshape(b * n, h, d).contiguous()  # the engine's (T, H, D) layout
    meta = _meta([n] * b, [n] * b, tables)
    ours = lambda: ta.paged_prefill(q_flat, k_cache, v_cache, positions, meta, d**-0.5)
    sdpa, name = _sdpa(q, k, v, causal=True)
    want = sdpa().transpose(1, 2).reshape(b * n, h, d)
    err = (ours()[0].float() - want.float()).abs().max().item()
    t_ours, t_sdpa = _time_ms(ours, args.rep_ms), _time_ms(sdpa, args.rep_ms)
    return Row("prefill", f"B={b} n={n}", t_ours, t_sdpa, name, t_ours / t_sdpa, max_abs_err=err)


def bench_prefill(args, cfg, dtype) -> list[Row]:
    return [_prefill_row(args, cfg, dtype, b, n) for b in args.prefill_batch for n in args.prefill_len]


def bench_merge(args, cfg, dtype, copy_gbs) -> list[Row]:
    from core import triton_attention as ta
    from core.attention import merge_attention_states_torch

    rows = []
    h, d = cfg["num_heads"], cfg["head_dim"]
    elem = torch.finfo(dtype).bits // 8
    for t in args.merge_tokens:
        outs = [torch.randn((t, h, d), device="cuda", dtype=dtype) for _ in range(2)]
        lses = [torch.randn((t, h), device="cuda") for _ in range(2)]
        ours = lambda: ta.merge_attention_states(outs, lses)  # noqa: B023
        ref = lambda: merge_attention_states_torch(outs, lses)  # noqa: B023
        err = (ours()[0].float() - ref()[0].float()).abs().max().item()
        t_ours, t_ref = _time_ms(ours, args.rep_ms), _time_ms(ref, args.rep_ms)
        moved = 3 * t * h * d * elem + 3 * t * h * 4  # two parts in, one out
        gbs = moved / (t_ours * 1e-3) / 1e9
        rows.append(
            Row("merge(2)", f"T={t}", t_ours, t_ref, "torch reference", t_ours / t_ref, gbs, gbs / copy_gbs, err)
        )
    return rows


# Arguments Triton's launcher would see as 16-divisible (pointers from torch are 16-byte aligned);
# the rest depend on the batch (block-table width, lse strides, lengths).
_NOT_DIVISIBLE = {"stride_bt", "stride_lt", "stride_lh", "stride_ls", "stride_lp", "stride_mt", "stride_mh"}


def sm90_resources(args) -> str:
    """Compile each kernel configuration this preset uses for sm_90 and read its resource usage."""
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    from core import triton_attention as ta

    cfg = PRESETS[args.preset]
    dtype = getattr(torch, args.dtype)
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    group = cfg["num_heads"] // cfg["num_kv_heads"]
    types = {name: f"*{dt}" for name in ("q_ptr", "k_ptr", "v_ptr", "out_ptr")}
    types |= {name: "*i64" for name in ("pos_ptr", "q_pos_ptr", "mask_off_ptr")}
    types |= {"lse_ptr": "*fp32", "mask_ptr": "*u8", "parts_out_ptr": "*fp32", "parts_lse_ptr": "*fp32"}
    types |= {"sm_scale_log2": "fp32"}
    cases = [
        (f"prefill {name}", ta._prefill_kernel, ta.prefill_tiles(cfg["head_dim"], group, dtype, mask, window), {})
        for name, mask, window in [("causal", False, False), ("window", False, True), ("mask+window", True, True)]
    ] + [
        (
            f"decode {name}",
            ta._decode_kernel,
            ta.decode_tiles(cfg["head_dim"], group, dtype, window),
            {"out_ptr": "*fp32"},
        )
        for name, window in [("plain", False), ("window", True)]
    ]
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    lines = [f"sm_90 builds for {args.preset} ({args.dtype}, page size {args.page_size})", "",
             "| kernel | tiles | warps x stages | registers | spilled bytes | shared memory |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, kernel, tiles, extra in cases:
        constexprs = dict(tiles.constexprs, PAGE_SIZE=args.page_size)
        signature = {
            a: "constexpr" if a in constexprs else extra.get(a, types.get(a, "*i32" if a.endswith("_ptr") else "i32"))
            for a in kernel.arg_names
        }
        divisible = {
            (i,): [["tt.divisibility", 16]]
            for i, a in enumerate(kernel.arg_names)
            if signature[a].startswith("*") or (a.startswith("stride") and a not in _NOT_DIVISIBLE)
        }
        built = compile(ASTSource(kernel, signature, constexprs, divisible), target=GPUTarget("cuda", 90, 32),
                        options=tiles.launch)  # fmt: skip
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(built.asm["cubin"])
            f.flush()
            usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True)
        fields = dict(x.split(":", 1) for x in next(row for row in usage.stdout.splitlines() if "REG:" in row).split())
        shape = ", ".join(f"{k}={v}" for k, v in tiles.constexprs.items() if k.startswith("BLOCK") or k == "GROUP_PAD")
        lines.append(f"| {name} | {shape} | {tiles.launch['num_warps']} x {tiles.launch['num_stages']} | "
                     f"{fields['REG']} | {fields['STACK']} | {built.metadata.shared} |")  # fmt: skip
    return "\n".join(lines)


def _markdown(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| kernel | shape | ours (ms) | baseline (ms) | baseline | ours/baseline | GB/s | of copy BW | max abs err |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    fmt = lambda x, spec: "" if x is None else format(x, spec)
    for r in rows:
        lines.append(
            f"| {r.kernel} | {r.shape} | {r.ours_ms:.3f} | {fmt(r.sdpa_ms, '.3f')} | {r.sdpa_backend} | "
            f"{fmt(r.ratio, '.2f')} | {fmt(r.bandwidth_gbs, '.0f')} | {fmt(r.bandwidth_fraction, '.0%')} | "
            f"{fmt(r.max_abs_err, '.1e')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.sm90_resources:
        print(sm90_resources(args))
        return 0
    if not torch.cuda.is_available():
        print(
            "bench/attention.py needs a CUDA GPU (torch.cuda.is_available() is False on this machine).\n"
            "The Triton kernels' correctness is tested on the CPU instead:\n"
            "  TRITON_INTERPRET=1 python -m pytest -q tests/core/test_triton_attention.py\n"
            "and `python bench/attention.py --sm90-resources` reports their sm_90 register and memory use.",
            file=sys.stderr,
        )
        return 2
    import triton

    cfg = PRESETS[args.preset]
    dtype = getattr(torch, args.dtype)
    device = torch.cuda.get_device_name()
    copy_gbs = copy_bandwidth_gbs(args.copy_gib, args.rep_ms)
    rows = (
        bench_decode(args, cfg, dtype, copy_gbs)
        + bench_prefill(args, cfg, dtype)
        + bench_merge(args, cfg, dtype, copy_gbs)
    )
    header = (
        f"Attention kernels on {device} ({args.preset}: {cfg['num_heads']} q heads, {cfg['num_kv_heads']} kv heads, "
        f"head dim {cfg['head_dim']}; {args.dtype}; page size {args.page_size}; torch {torch.__version__}, "
        f"triton {triton.__version__}). Device-to-device copy bandwidth: {copy_gbs:.0f} GB/s."
    )
    print(_markdown(rows, header))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        facts = dict(device=device, preset=args.preset, dtype=args.dtype, page_size=args.page_size,
                     copy_bandwidth_gbs=copy_gbs, torch=torch.__version__, triton=triton.__version__)  # fmt: skip
        args.json.write_text(json.dumps(dict(facts, rows=[asdict(r) for r in rows]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
