"""Petridish's evaluation: what Secure Partitioned Decoding costs, against its two baselines.

Every system serves the same private prompts on the same model and engine code:

* ``no_protection``: one process, every prompt in one batch (``petridish.NoProtection``);
* ``spd``: one service process batching everyone, one user process per user holding the prompt's
  KV, per-layer partial attention over shared memory (``petridish.Petridish``);
* ``full_isolation``: one process with a full model per user, unbatched (``petridish.FullIsolation``).

Latency is the time per output token (TPOT) averaged over users; throughput is all users' output
tokens over the wall time of the batch. User processes are started once per model and reused, so
process start-up is not in any timing (as in a long-running service).

    fig4_latency_vs_users       TPOT normalised to no protection vs number of users
    fig5_latency_vs_model_size  TPOT vs model size (random Llamas of growing size, then the real model)
    fig6_latency_vs_length      TPOT vs private-prompt length and vs output length
    fig7_overhead_breakdown     per-layer time split (Q projection, send Q, KV projection, attention +
                                merge, receive, MLP) for queries sent early (before K/V) or late
    throughput_and_memory       tokens/s and memory vs users

    python -m experiments.petridish                      # profile=ci, Gemma 3 270M on the CPU
    python -m experiments.petridish profile=paper engine=gpu
"""

from __future__ import annotations

import atexit
import re
import statistics
import time

from omegaconf import DictConfig

from experiments.harness import ConfigError, Experiment, FigureResult, WorkerContext

EXPERIMENT = Experiment("petridish", "Petridish: Secure Partitioned Decoding vs no protection / full isolation")
SYSTEMS = ("no_protection", "spd", "full_isolation")
LABELS = {"no_protection": "No protection", "spd": "SPD (Petridish)", "full_isolation": "Full isolation"}
FIGURE_GROUPS = ("users", "model", "input", "output", "breakdown")  # what a point measures
COMPONENTS = ("q_proj", "send_q", "kv_proj", "attention_merge", "receive", "o_proj", "mlp")
_RANDOM = re.compile(r"random-llama-h(\d+)-l(\d+)$")
_TEXT = ("Patient record. Name: Jane Roe. Date of birth: 1961-04-12. Diagnosis: type 2 diabetes, "
         "hypertension. Medications: metformin 500 mg twice daily, lisinopril 10 mg. Notes: reports "
         "fatigue and blurred vision; HbA1c 8.1 percent; referred to ophthalmology. ")


@EXPERIMENT.validate
def validate(cfg: DictConfig) -> None:
    s = cfg.sweep
    if not s.users or min(s.users) < 1:
        raise ConfigError(f"sweep.users must be positive integers, got {list(s.users)}")
    if set(s.send_points) - {"early", "late"}:
        raise ConfigError(f"sweep.send_points must be a subset of [early, late], got {list(s.send_points)}")
    for m in s.models:
        if m != "default" and not _RANDOM.match(m):
            raise ConfigError(f"sweep.models entry {m!r}: use 'default' or random-llama-h<hidden>-l<layers>")
    if set(s.figures) - set(FIGURE_GROUPS) or not s.figures:
        raise ConfigError(f"sweep.figures must be a non-empty subset of {list(FIGURE_GROUPS)}, got {list(s.figures)}")
    if cfg.workload.users > max(s.users):
        raise ConfigError(f"workload.users={cfg.workload.users} exceeds max(sweep.users)={max(s.users)}")


@EXPERIMENT.points
def points(cfg: DictConfig) -> list[dict]:
    s = cfg.sweep
    pts = [{"figure": "users", "users": n} for n in s.users]
    pts += [{"figure": "model", "model": m} for m in s.models]
    pts += [{"figure": "input", "input": n} for n in s.input_lengths]
    pts += [{"figure": "output", "output": n} for n in s.output_lengths]
    pts += [{"figure": "breakdown", "send_point": p} for p in s.send_points]
    return [p for p in pts if p["figure"] in s.figures]


@EXPERIMENT.measure
def measure(ctx: WorkerContext, point: dict, cfg: DictConfig) -> list[dict]:
    import torch

    # Every process gets the same number of torch threads: the service and no protection run in
    # this one, user processes and isolated instances in theirs. (On a busy machine, more OpenMP
    # threads than free cores spin and make the in-process systems look many times slower.)
    torch.set_num_threads(cfg.spd.service_threads)
    w = cfg.workload
    fig = point["figure"]
    model = point.get("model", "default")
    users = point.get("users", w.users)
    prompt_tokens = point.get("input", w.prompt_tokens)
    new_tokens = point.get("output", w.new_tokens)
    if fig == "breakdown":
        return [_breakdown(ctx, cfg, point["send_point"], users, prompt_tokens, new_tokens)]
    # Full isolation (a model per user) is measured against users only: RAM bounds it here.
    systems = SYSTEMS if fig == "users" else ("no_protection", "spd")
    if users > cfg.sweep.isolation_max_users:
        systems = tuple(s for s in systems if s != "full_isolation")
    return [_serve(ctx, cfg, s, model, users, prompt_tokens, new_tokens) for s in systems]


# -- systems ------------------------------------------------------------------------------------------
def _source(ctx: WorkerContext, cfg: DictConfig, model: str) -> str:
    if model == "default":
        from experiments.harness.context import model_path

        return model_path(cfg.model)
    hidden, layers = (int(x) for x in _RANDOM.match(model).groups())
    return ctx.cache({"random_llama": model}, lambda: _random_llama(hidden, layers))


def _random_llama(hidden: int, layers: int) -> str:
    """A random Llama checkpoint of the given width and depth (with the byte tokenizer of the tests)."""
    import tempfile

    import torch
    import transformers as tf

    from core.testing import tiny_tokenizer

    heads = max(hidden // 64, 1)
    config = tf.LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 4 // 3 * 2,
                            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(heads // 4, 1),
                            max_position_embeddings=8192, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    path = tempfile.mkdtemp(prefix=f"petridish-llama-h{hidden}-l{layers}-")
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def _petridish(ctx: WorkerContext, cfg: DictConfig, model: str):
    """One Petridish per model, its user processes started once: max(sweep.users) for the configured
    model (Fig 4), workload.users for the other sizes (Fig 5)."""
    from petridish import ModelSpec, Petridish, ServiceConfig, UserProcessConfig

    source = _source(ctx, cfg, model)
    e, s = cfg.engine, cfg.spd

    def build():
        spec = ModelSpec(source, dtype=e.dtype, device=str(e.device), attention_backend=e.attention_backend)
        pd = Petridish(
            spec, max(cfg.sweep.users) if model == "default" else cfg.workload.users,
            service_config=ServiceConfig(page_size=s.page_size, num_pages=s.num_pages, stall_timeout_s=s.stall_timeout_s),
            user_config=UserProcessConfig(num_threads=s.user_threads, num_pages=s.user_pages, page_size=s.page_size),
            share_weights=s.share_weights,
        )
        atexit.register(pd.close)  # the worker keeps it for every point; stop its processes at exit
        return pd

    return ctx.cache({"petridish": source, "engine": str(e.device)}, build)


def _prompts(tokenizer, users: int, tokens: int) -> list[str]:
    """``users`` different private prompts of about ``tokens`` tokens each."""
    out = []
    for u in range(users):
        ids = tokenizer.encode(f"[user {u}] " + _TEXT * (tokens // 8 + 2), add_special_tokens=False)[: tokens - 1]
        out.append(tokenizer.decode(ids))
    return out


def _serve(ctx, cfg, system: str, model: str, users: int, prompt_tokens: int, new_tokens: int) -> dict:
    from core.sampling import SamplingParams
    from petridish import FullIsolation, ModelSpec, NoProtection

    pd = _petridish(ctx, cfg, model)
    tok = pd.service.tokenizer
    prompts = _prompts(tok, users, prompt_tokens)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    memory = {}
    if system == "spd":
        run = lambda: pd.generate(prompts, params)
    elif system == "no_protection":
        baseline = NoProtection(pd.service.model, tok, cfg.spd.page_size, cfg.spd.num_pages)
        run = lambda: baseline.generate(prompts, params)
    else:
        spec = ModelSpec(pd.spec.source, dtype=cfg.engine.dtype, attention_backend=cfg.engine.attention_backend)
        iso = FullIsolation(spec, users, num_threads=cfg.spd.user_threads, num_pages=cfg.spd.user_pages)
        run = lambda: iso.generate(prompts, params)
    try:
        for _ in range(cfg.profile.warmup):
            run()
        reps = []
        for _ in range(max(1, cfg.profile.repeats)):
            t0 = time.perf_counter()
            results = run()
            reps.append((time.perf_counter() - t0, results))
            if system == "spd":
                memory = pd.memory_bytes(users)
            elif system == "full_isolation":
                memory = iso.memory_bytes()
            else:
                memory = {"total_bytes": _weights_bytes(pd.service.model) + _pool_bytes(baseline.pool)}
    finally:
        if system == "full_isolation":
            iso.close()
    wall, results = sorted(reps, key=lambda r: r[0])[len(reps) // 2]
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{system}: {errors[0]}")
    return {
        "system": system, "users": users, "model": model, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
        "params": sum(p.numel() for p in pd.service.model.parameters()),
        "tpot_s": statistics.mean(r.metrics.tpot_s for r in results),
        "ttft_s": statistics.mean(r.metrics.ttft_s for r in results),
        "wall_s": wall,
        "throughput_tok_per_s": users * new_tokens / wall,
        "output_token_ids": [r.token_ids for r in results],
        **memory,
    }


def _weights_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _pool_bytes(pool) -> int:
    return sum(t.numel() * t.element_size() for t in [*pool.k_cache, *pool.v_cache])


def _breakdown(ctx, cfg, send_point: str, users: int, prompt_tokens: int, new_tokens: int) -> dict:
    """Per decode step and layer, where the service's time goes, with queries sent early or late."""
    from dataclasses import replace

    from core.sampling import SamplingParams

    pd = _petridish(ctx, cfg, "default")
    service = pd.service
    prompts = _prompts(service.tokenizer, users, prompt_tokens)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    default_config = service.config
    service.config = replace(default_config, send_point=send_point)
    timer = _ModuleTimer(service.model)
    try:
        pd.generate(prompts, params)  # warm-up
        timer.reset()
        t0 = time.perf_counter()
        results = pd.generate(prompts, params)
        wall = time.perf_counter() - t0
    finally:
        timer.remove()
        service.config = default_config
    steps = max(new_tokens - 1, 1)  # decode steps the service ran (token 1 comes from prefill)
    per_step = {k: v / steps for k, v in timer.totals.items()}
    send = sum(r.metrics.send_s for r in results) / steps
    wait = sum(r.metrics.wait_s for r in results) / steps
    attn_rest = per_step["self_attn"] - per_step["q_proj"] - per_step["kv_proj"] - per_step["o_proj"] - send - wait
    return {
        "send_point": send_point, "users": users, "wall_s": wall,
        "tpot_s": statistics.mean(r.metrics.tpot_s for r in results),
        "q_proj_s": per_step["q_proj"], "send_q_s": send, "kv_proj_s": per_step["kv_proj"],
        "attention_merge_s": max(attn_rest, 0.0), "receive_s": wait, "o_proj_s": per_step["o_proj"],
        "mlp_s": per_step["mlp"],
    }


_MODULE_KINDS = {"self_attn": "self_attn", "q_proj": "q_proj", "k_proj": "kv_proj", "v_proj": "kv_proj",
                 "o_proj": "o_proj", "mlp": "mlp"}


class _ModuleTimer:
    """Wall time spent in each kind of submodule of the service's model, via forward hooks."""

    def __init__(self, model):
        self.totals: dict[str, float] = {}
        self._handles = []
        for name, module in model.named_modules():
            kind = _MODULE_KINDS.get(name.rsplit(".", 1)[-1])
            if kind and ".layers." in f".{name}":
                self._handles.append(module.register_forward_pre_hook(self._start))
                self._handles.append(module.register_forward_hook(self._stop(kind)))
        self.reset()

    def reset(self) -> None:
        self.totals = dict.fromkeys(("self_attn", "q_proj", "kv_proj", "o_proj", "mlp"), 0.0)

    def _start(self, module, args):
        module._petridish_t0 = time.perf_counter()

    def _stop(self, kind: str):
        def hook(module, args, out):
            self.totals[kind] += time.perf_counter() - module._petridish_t0

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


# -- figures ------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by(records: list[dict], figure: str) -> list[dict]:
    return [r for r in records if r.get("figure") == figure]


def _tpot(records: list[dict], system: str, key: str, value) -> float:
    return next(r["tpot_s"] for r in records if r["system"] == system and r[key] == value)


@EXPERIMENT.figure(paper="Fig 4: SPD latency near no protection for 1-32 users; ~5x better than full isolation")
def fig4_latency_vs_users(records: list[dict], cfg: DictConfig) -> FigureResult:
    recs = _by(records, "users")
    users = sorted({r["users"] for r in recs})
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for system in ("spd", "full_isolation"):
        xs = [n for n in users if _has(recs, system, n)]
        ys = [_tpot(recs, system, "users", n) / _tpot(recs, "no_protection", "users", n) for n in xs]
        ax.plot(xs, ys, marker="o", label=LABELS[system])
    ax.axhline(1.0, color="gray", ls="--", label=LABELS["no_protection"])
    ax.set(xlabel="users", ylabel="latency / no protection", title="Fig 4: normalised latency per token")
    ax.legend()
    n, m = users[-1], max(n for n in users if _has(recs, "full_isolation", n))
    spd = _tpot(recs, "spd", "users", n) / _tpot(recs, "no_protection", "users", n)
    iso = _tpot(recs, "full_isolation", "users", m) / _tpot(recs, "spd", "users", m)
    return FigureResult(fig, f"{n} users: SPD {spd:.2f}x no protection; {m} users: full isolation {iso:.2f}x SPD")


def _has(recs: list[dict], system: str, users: int) -> bool:
    return any(r["system"] == system and r["users"] == users for r in recs)


@EXPERIMENT.figure(paper="Fig 5: SPD's overhead over no protection shrinks as the model grows")
def fig5_latency_vs_model_size(records: list[dict], cfg: DictConfig) -> FigureResult:
    recs = _by(records, "model")
    models = sorted({r["model"] for r in recs}, key=lambda m: next(r["params"] for r in recs if r["model"] == m))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.27
    for i, system in enumerate(("no_protection", "spd")):
        ys = [_tpot(recs, system, "model", m) * 1e3 for m in models]
        ax.bar([x + (i - 0.5) * width for x in range(len(models))], ys, width, label=LABELS[system])
    params = [next(r["params"] for r in recs if r["model"] == m) / 1e6 for m in models]
    ax.set_xticks(range(len(models)), [f"{m}\n{p:.0f}M" for m, p in zip(models, params)], fontsize=7)
    ax.set(ylabel="ms per output token", title="Fig 5: latency vs model size")
    ax.legend(fontsize=7)
    ratios = [_tpot(recs, "spd", "model", m) / _tpot(recs, "no_protection", "model", m) for m in models]
    return FigureResult(fig, "SPD / no protection by size: " + ", ".join(f"{p:.0f}M {x:.2f}x" for p, x in zip(params, ratios)))


@EXPERIMENT.figure(paper="Fig 6: SPD's per-token latency tracks no protection across input and output lengths")
def fig6_latency_vs_length(records: list[dict], cfg: DictConfig) -> FigureResult:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    ours = []
    for ax, (figure, key, label) in zip(axes, [("input", "prompt_tokens", "private prompt tokens"),
                                               ("output", "new_tokens", "output tokens")]):
        recs = _by(records, figure)
        xs = sorted({r[key] for r in recs})
        for system in ("no_protection", "spd"):
            ax.plot(xs, [_tpot(recs, system, key, x) * 1e3 for x in xs], marker="o", label=LABELS[system])
        ax.set(xlabel=label, ylabel="ms per output token")
        ax.legend(fontsize=7)
        x = xs[-1]
        ours.append(f"{label} {x}: {_tpot(recs, 'spd', key, x) / _tpot(recs, 'no_protection', key, x):.2f}x")
    fig.suptitle("Fig 6: latency vs input and output length")
    return FigureResult(fig, "SPD / no protection at " + "; ".join(ours))


@EXPERIMENT.figure(paper="Fig 7: sending Q before the KV projection hides most of the communication")
def fig7_overhead_breakdown(records: list[dict], cfg: DictConfig) -> FigureResult:
    recs = sorted(_by(records, "breakdown"), key=lambda r: r["send_point"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottoms = [0.0] * len(recs)
    for comp in COMPONENTS:
        ys = [r[f"{comp}_s"] * 1e3 for r in recs]
        ax.bar([r["send_point"] for r in recs], ys, bottom=bottoms, label=comp)
        bottoms = [b + y for b, y in zip(bottoms, ys)]
    # The rest of a step: embedding, norms, the LM head (262k-wide for Gemma 3) and sampling.
    other = [max(r["tpot_s"] * 1e3 - b, 0.0) for r, b in zip(recs, bottoms)]
    ax.bar([r["send_point"] for r in recs], other, bottom=bottoms, label="other (LM head, sampling)", color="lightgray")
    ax.set(ylabel="ms per decode step", title="Fig 7: service time by component and send point")
    ax.legend(fontsize=7)
    by = {r["send_point"]: r for r in recs}
    if {"early", "late"} <= by.keys():
        ours = (f"receive wait early {by['early']['receive_s'] * 1e3:.1f} ms vs late {by['late']['receive_s'] * 1e3:.1f} ms"
                f" per step; TPOT early {by['early']['tpot_s'] * 1e3:.0f} ms vs late {by['late']['tpot_s'] * 1e3:.0f} ms")
    else:
        ours = ", ".join(f"{k}: receive {v['receive_s'] * 1e3:.1f} ms" for k, v in by.items())
    return FigureResult(fig, ours)


@EXPERIMENT.figure(paper="Throughput and memory: SPD batches like no protection and shares one copy of the weights")
def throughput_and_memory(records: list[dict], cfg: DictConfig) -> FigureResult:
    recs = _by(records, "users")
    users = sorted({r["users"] for r in recs})
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    get = lambda s, n, k: next(r[k] for r in recs if r["system"] == s and r["users"] == n)
    for system in SYSTEMS:
        xs = [n for n in users if _has(recs, system, n)]
        a.plot(xs, [get(system, n, "throughput_tok_per_s") for n in xs], marker="o", label=LABELS[system])
        b.plot(xs, [get(system, n, "total_bytes") / 2**30 for n in xs], marker="o", label=LABELS[system])
    a.set(xlabel="users", ylabel="output tokens / s")
    b.set(xlabel="users", ylabel="memory (GiB)")
    a.legend(fontsize=7)
    fig.suptitle("Throughput and memory vs users")
    n = max(n for n in users if _has(recs, "full_isolation", n))
    gain = get("spd", n, "throughput_tok_per_s") / get("full_isolation", n, "throughput_tok_per_s")
    mem = get("full_isolation", n, "total_bytes") / get("spd", n, "total_bytes")
    return FigureResult(fig, f"{n} users: SPD throughput {gain:.2f}x full isolation, {mem:.2f}x less memory")


if __name__ == "__main__":
    EXPERIMENT.main()
