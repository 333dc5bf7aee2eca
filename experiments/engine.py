"""The core engine benchmark: our paged engine against transformers ``generate`` on the same weights.

Not a paper: this is the baseline every paper's numbers stand on. Two measurements, each for both
systems on identical prompts (token ids), greedy decoding, the same dtype, device and threads:

* prefill (``fig_prefill_throughput``): time to the first token of one prompt of N tokens, as
  prompt tokens per second;
* decode (``fig_decode_throughput``): B prompts decoded together for T tokens; decode time runs
  from the moment every sequence has its first token to the end, measured the same way for both
  systems (our request metrics; a transformers streamer), and throughput is ``B * (T - 1) / decode time``.

Every decode row also keeps the generated token ids, so the figure reports whether our greedy
tokens equal transformers' (a correctness check that rides along with the timing).

    python -m experiments.engine                              # profile=ci on the CPU
    python -m experiments.engine profile=paper engine=gpu     # the full sweep on a GPU
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from omegaconf import DictConfig

from experiments.harness import ConfigError, Experiment, FigureResult, WorkerContext
from experiments.harness.context import model_path

EXPERIMENT = Experiment("engine", "our paged engine vs transformers generate")
SYSTEMS = ("ours", "transformers")


@EXPERIMENT.validate
def validate(cfg: DictConfig) -> None:
    unknown = set(cfg.sweep.systems) - set(SYSTEMS)
    if unknown:
        raise ConfigError(f"sweep.systems has {sorted(unknown)}; expected a subset of {list(SYSTEMS)}")
    sizes = [*cfg.sweep.prefill_lens, *cfg.sweep.decode_batch_sizes, cfg.sweep.decode_prompt_len]
    if any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ConfigError(f"sweep sizes must be positive integers, got {sizes}")
    if cfg.sweep.decode_new_tokens < 2:
        raise ConfigError(f"sweep.decode_new_tokens={cfg.sweep.decode_new_tokens} must be >= 2 to time decoding")


@EXPERIMENT.points
def points(cfg: DictConfig) -> list[dict]:
    # System-major order: one system's model is warm for all its points before the other's loads.
    s = cfg.sweep
    return [
        *(
            {"phase": "prefill", "system": system, "prompt_len": n, "batch_size": 1}
            for system in s.systems
            for n in s.prefill_lens
        ),
        *(
            {
                "phase": "decode",
                "system": system,
                "prompt_len": s.decode_prompt_len,
                "batch_size": b,
                "new_tokens": s.decode_new_tokens,
            }
            for system in s.systems
            for b in s.decode_batch_sizes
        ),
    ]


@EXPERIMENT.measure
def measure(ctx: WorkerContext, point: dict, cfg: DictConfig) -> dict:
    prompts = _prompts(ctx, point["batch_size"], point["prompt_len"])
    generate = _ours(ctx) if point["system"] == "ours" else _transformers(ctx)
    if point["phase"] == "prefill":
        ttft_s, _, out = _timed(lambda: generate(prompts, 1), cfg.profile, cfg.engine.device)
        return {"ttft_s": ttft_s, "prefill_tokens_per_s": point["prompt_len"] / ttft_s, "first_token": out[0][0]}
    ttft_s, decode_s, out = _timed(lambda: generate(prompts, point["new_tokens"]), cfg.profile, cfg.engine.device)
    decoded = point["batch_size"] * (point["new_tokens"] - 1)
    return {
        "ttft_s": ttft_s,
        "decode_s": decode_s,
        "decode_tokens_per_s": decoded / decode_s,
        "tpot_s": decode_s / (point["new_tokens"] - 1),
        "output_token_ids": out,
    }


@EXPERIMENT.figure(paper="transformers baseline (DESIGN.md, 2-core CPU): TTFT 1.19 s at 512 tokens, 6.28 s at 2048")
def fig_prefill_throughput(records: list[dict], cfg: DictConfig) -> FigureResult:
    rows = [r for r in records if r["phase"] == "prefill"]
    fig = _bar_chart(rows, "prompt_len", "prefill_tokens_per_s", "prompt tokens", "prefill tokens/s")
    return FigureResult(fig, _speedups(rows, "prompt_len", "prefill_tokens_per_s", "prefill {} tok"))


@EXPERIMENT.figure(paper="transformers baseline (DESIGN.md, 2-core CPU): 7.0 tok/s at batch 1, 23.4 tok/s at batch 8")
def fig_decode_throughput(records: list[dict], cfg: DictConfig) -> FigureResult:
    rows = [r for r in records if r["phase"] == "decode"]
    fig = _bar_chart(rows, "batch_size", "decode_tokens_per_s", "batch size", "decode tokens/s")
    ours = _speedups(rows, "batch_size", "decode_tokens_per_s", "decode batch {}")
    return FigureResult(fig, f"{ours}; {_greedy_agreement(rows)}")


# -- the two systems behind one call -----------------------------------------------------------------
# generate(prompts, n) -> (generated token ids per prompt, perf_counter time when every prompt had
# its first token). The caller times the call; the timestamp splits it into TTFT and decode time.
Generate = Callable[[list[list[int]], int], tuple[list[list[int]], float]]


def _ours(ctx: WorkerContext) -> Generate:
    from core.sampling import SamplingParams

    engine = ctx.engine()

    def generate(prompts: list[list[int]], n: int) -> tuple[list[list[int]], float]:
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=n, ignore_eos=True))
        return [o.token_ids for o in outs], max(o.metrics.first_token_s for o in outs)

    return generate


def _transformers(ctx: WorkerContext) -> Generate:
    import torch

    hf = ctx.cache(
        {"transformers": model_path(ctx.cfg.model), "dtype": ctx.cfg.engine.dtype, "device": ctx.cfg.engine.device},
        lambda: _load_transformers(ctx.cfg),
    )
    device = ctx.cfg.engine.device

    @torch.inference_mode()
    def generate(prompts: list[list[int]], n: int) -> tuple[list[list[int]], float]:
        ids = torch.tensor(prompts, device=device)  # equal lengths: no padding, nothing to mask
        clock = _FirstTokenClock(device)
        out = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
            streamer=clock,
        )
        return out[:, ids.shape[1] :].tolist(), clock.first_token_s

    return generate


class _FirstTokenClock:
    """A transformers streamer that only notes when the first generated tokens arrive.

    ``generate`` calls ``put`` once with the prompt, then once per step with the new tokens.
    """

    def __init__(self, device: str):
        self._device, self._calls, self.first_token_s = device, 0, float("nan")

    def put(self, value) -> None:
        self._calls += 1
        if self._calls == 2:
            _sync(self._device)
            self.first_token_s = time.perf_counter()

    def end(self) -> None:
        pass


def _load_transformers(cfg: DictConfig):
    """transformers' own implementation of the same weights (the GGUF is dequantized like ours)."""
    import torch
    from transformers import AutoModelForCausalLM

    from core.loader import resolve_source

    path = resolve_source(model_path(cfg.model))  # the default model's name becomes its GGUF file
    dtype = getattr(torch, cfg.engine.dtype)
    if path.suffix == ".gguf":
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    else:
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    hf.generation_config.top_k, hf.generation_config.top_p = None, None  # greedy: no sampling knobs
    return hf.to(cfg.engine.device).eval()


# -- prompts and timing -----------------------------------------------------------------------------
_TEXT = (
    "A serving engine keeps the keys and values of every token it has seen in fixed-size pages, "
    "so that many requests can share one pool of memory without fragmenting it. Each step gathers "
    "the running requests into one batch: new prompts contribute chunks of their tokens, requests "
    "that are already decoding contribute one token each, and the attention kernel reads every "
    "request's pages through its own page table. When the pool runs out, the newest request is "
    "paused and its pages are freed; it resumes later by recomputing what it had. The time to the "
    "first token grows with the prompt, while the time per output token grows with the batch."
)


def _prompts(ctx: WorkerContext, batch_size: int, prompt_len: int) -> list[list[int]]:
    """``batch_size`` different prompts of exactly ``prompt_len`` tokens of English text."""
    tokenizer = ctx.model().tokenizer
    prompts, text = [], _TEXT.split(" ")
    for b in range(batch_size):
        words = text[b % len(text) :] + text[: b % len(text)]  # rotate so the prompts of a batch differ
        ids = tokenizer.encode(" ".join(words))
        while len(ids) < prompt_len:
            ids += tokenizer.encode(" " + " ".join(words), add_special_tokens=False)
        prompts.append(ids[:prompt_len])
    return prompts


def _timed(
    fn: Callable[[], tuple[list[list[int]], float]], profile: DictConfig, device: str = "cpu"
) -> tuple[float, float, list[list[int]]]:
    """Median (TTFT, decode time) of ``profile.repeats`` runs after ``profile.warmup`` untimed ones."""
    for _ in range(profile.warmup):
        fn()
    ttfts, decodes, out = [], [], []
    for _ in range(max(1, profile.repeats)):
        _sync(device)
        start = time.perf_counter()
        out, first_token_s = fn()
        _sync(device)
        end = time.perf_counter()
        ttfts.append(first_token_s - start)
        decodes.append(end - first_token_s)
    return statistics.median(ttfts), statistics.median(decodes), out


def _sync(device: str) -> None:
    # CUDA runs asynchronously: wait for queued kernels before reading the clock.
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


# -- figures ------------------------------------------------------------------------------------------
def _bar_chart(rows: list[dict], x_key: str, y_key: str, x_label: str, y_label: str):
    import matplotlib.pyplot as plt

    xs = sorted({r[x_key] for r in rows})
    systems = [s for s in SYSTEMS if any(r["system"] == s for r in rows)]
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, system in enumerate(systems):
        by_x = {r[x_key]: r[y_key] for r in rows if r["system"] == system}
        ax.bar([j + i * width for j in range(len(xs))], [by_x.get(x, 0.0) for x in xs], width, label=system)
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(xs))], [str(x) for x in xs])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend()
    fig.tight_layout()
    return fig


def _speedups(rows: list[dict], x_key: str, y_key: str, label: str) -> str:
    parts = []
    for x in sorted({r[x_key] for r in rows}):
        by_system = {r["system"]: r[y_key] for r in rows if r[x_key] == x}
        ours, theirs = by_system.get("ours"), by_system.get("transformers")
        if ours is None:
            continue
        text = f"{label.format(x)}: {ours:.1f} tok/s"
        if theirs:
            text += f" vs transformers {theirs:.1f} ({ours / theirs:.2f}x)"
        parts.append(text)
    return "; ".join(parts)


def _greedy_agreement(rows: list[dict]) -> str:
    """How many decoded sequences are token-for-token identical between the two systems."""
    same = total = 0
    for b in sorted({r["batch_size"] for r in rows}):
        by_system = {r["system"]: r["output_token_ids"] for r in rows if r["batch_size"] == b}
        if len(by_system) == 2:
            pairs = list(zip(by_system["ours"], by_system["transformers"]))
            same += sum(a == t for a, t in pairs)
            total += len(pairs)
    return f"greedy tokens identical to transformers in {same}/{total} sequences" if total else "no baseline"


if __name__ == "__main__":
    EXPERIMENT.main()
