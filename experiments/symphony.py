"""Symphony ("Serve Programs, Not Prompts", HotOS 2025): its claims, measured against prompt serving.

The paper is a vision paper with no evaluation figures, so each figure here measures one claim on
the same model and forward primitive, LIPs on a Symphony server vs plain prompt serving (every
request resends its whole context; nothing is kept between requests):

* ``fig_multiturn``: a chat LIP keeps its KV file between turns, so each turn computes only its
  new tokens; prompt serving (``core.engine.Engine.generate``) re-encodes the whole history.
* ``fig_tree_search``: a tree search LIP forks KV files copy-on-write; prompt serving sends every
  branch as its own request carrying the full prefix.
* ``fig_agent``: an agent LIP runs its tools on the server and appends the results in place; the
  prompt-serving client runs the tool, pays a network round trip, and resends the context.
* ``fig_batch_fill``: the two-level scheduler packs many LIPs' predicts into one forward (mean
  batch size and throughput against a server that runs one predict per forward).
* ``table_json``: a LIP constrains decoding to a JSON object; prompt serving can only ask for it.

Greedy decoding everywhere, so the LIPs' tokens must equal prompt serving's; each figure reports
that agreement next to the numbers.

    python -m experiments.symphony                          # profile=ci on the CPU
    python -m experiments.symphony profile=paper engine=gpu
"""

from __future__ import annotations

import json
import re
import statistics
import time

from omegaconf import DictConfig

from experiments.harness import ConfigError, Experiment, FigureResult, WorkerContext

EXPERIMENT = Experiment("symphony", "LIPs on a KV file system vs prompt serving")
WORKLOADS = ("multiturn", "tree_search", "agent", "batch_fill", "json")
SYSTEMS = ("symphony", "prompt")
JSON_INSTRUCTION = ' Answer with one JSON object with keys "name" (string), "age" (integer), "city" (string).\n'


@EXPERIMENT.validate
def validate(cfg: DictConfig) -> None:
    unknown = set(cfg.sweep.workloads) - set(WORKLOADS)
    if unknown:
        raise ConfigError(f"sweep.workloads has {sorted(unknown)}; expected a subset of {list(WORKLOADS)}")
    if cfg.sweep.turns > len(cfg.workload.messages):
        raise ConfigError(f"sweep.turns={cfg.sweep.turns} but workload.messages has {len(cfg.workload.messages)}")
    if cfg.sweep.json_prompts > len(cfg.workload.json_prompts):
        raise ConfigError(f"sweep.json_prompts={cfg.sweep.json_prompts} > {len(cfg.workload.json_prompts)} prompts")
    if any(n < 1 for n in cfg.sweep.batch_lips):
        raise ConfigError(f"sweep.batch_lips must be positive, got {list(cfg.sweep.batch_lips)}")


@EXPERIMENT.points
def points(cfg: DictConfig) -> list[dict]:
    out = []
    for w in cfg.sweep.workloads:
        if w == "batch_fill":
            out += [
                {"workload": w, "system": mode, "lips": n}
                for mode in ("batched", "serial")
                for n in cfg.sweep.batch_lips
            ]
        else:
            out.append({"workload": w})  # both systems, interleaved, so load drift hits them alike
    return out


@EXPERIMENT.measure
def measure(ctx: WorkerContext, point: dict, cfg: DictConfig) -> dict | list[dict]:
    workload = point["workload"]
    if workload == "batch_fill":
        return _batch_fill(ctx, cfg, point["lips"], serial=point["system"] == "serial")
    if workload == "multiturn":
        return _multiturn(ctx, cfg)
    if workload == "json":
        return _json(ctx, cfg)
    ours, theirs = {"tree_search": (_tree_symphony, _tree_prompt), "agent": (_agent_symphony, _agent_prompt)}[workload]
    return [{"system": "symphony", **ours(ctx, cfg)}, {"system": "prompt", **theirs(ctx, cfg)}]


# -- the two systems ---------------------------------------------------------------------------------
def _server(ctx: WorkerContext, cfg: DictConfig, **overrides):
    """A fresh Symphony server on the worker's cached model (its own KV pool and file system)."""
    from symphony import LIPBudget, Symphony, SymphonyConfig

    loaded = ctx.model()
    settings = {
        "num_pages": cfg.server.num_pages,
        "page_size": cfg.engine.page_size,
        "max_batch_size": cfg.engine.max_batch_size,
        "max_batch_tokens": cfg.server.max_batch_tokens,
        "budget": LIPBudget(max_slice_s=cfg.server.slice_s, max_cpu_s=10 * cfg.server.slice_s),
    }
    config = SymphonyConfig(**{**settings, **overrides})
    loaded.model.attention_backend = cfg.engine.attention_backend
    return Symphony(loaded.model, loaded.tokenizer, config, model_id=cfg.model.name)


def _run_lip(server, name: str, args: dict) -> tuple[object, float]:
    from symphony.lips import lip_path

    t0 = time.perf_counter()
    proc = server.run_program(lip_path(name), args, user="bench")
    if proc.error is not None:
        raise RuntimeError(f"LIP {name} failed:\n{proc.error_text}")
    return proc, time.perf_counter() - t0


def _encode(ctx: WorkerContext, text: str) -> list[int]:
    return ctx.model().tokenizer.encode(text, add_special_tokens=False)


def _bos(ctx: WorkerContext) -> list[int]:
    bos = ctx.model().tokenizer.bos_token_id
    return [bos] if bos is not None else []


def _generate(ctx: WorkerContext, prompt: list[int], max_new: int, stop: tuple[int, ...] = ()) -> list[int]:
    """Prompt serving: one request to the engine with the full context; greedy."""
    from core.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=max_new, stop_token_ids=stop)
    return list(ctx.engine().generate([prompt], params)[0].token_ids)


# -- multi-turn chat ---------------------------------------------------------------------------------
def _multiturn(ctx: WorkerContext, cfg: DictConfig) -> list[dict]:
    """Each turn runs on the chat LIP and then through prompt serving, turn by turn."""
    from symphony.lips import lip_path
    from symphony.lips.chat import TURN

    eos = set(ctx.model().tokenizer.eos_token_ids)
    server = _server(ctx, cfg)
    rows = []
    try:
        pid = server.submit(
            lip_path("chat"), {"max_new_tokens": cfg.sweep.reply_tokens, "system": cfg.workload.system}, user="bench"
        )
        server.run()
        proc = server.process(pid)
        # Prompt serving's client keeps the history itself, in the chat LIP's token layout
        # (tokenized piece by piece the same way), and resends all of it every turn.
        history = _bos(ctx) + _encode(ctx, TURN.format(role="user", content=cfg.workload.system))
        for turn, message in enumerate(cfg.workload.messages[: cfg.sweep.turns]):
            before, t0 = proc.stats["predicted_tokens"], time.perf_counter()
            server.send(pid, message)
            server.run()
            reply = server.receive(pid)[0]["tokens"]
            rows.append(
                {
                    "system": "symphony",
                    "turn": turn,
                    "latency_s": time.perf_counter() - t0,
                    "tokens_computed": proc.stats["predicted_tokens"] - before,
                    "reply": reply,
                }
            )

            history += _encode(ctx, TURN.format(role="user", content=message) + "<start_of_turn>model\n")
            t0 = time.perf_counter()
            reply = _generate(ctx, history, cfg.sweep.reply_tokens)
            rows.append(
                {
                    "system": "prompt",
                    "turn": turn,
                    "latency_s": time.perf_counter() - t0,
                    "tokens_computed": len(history) + len(reply) - 1,
                    "reply": reply,
                }
            )
            history += reply
            if reply[-1] not in eos:
                history += _encode(ctx, "<end_of_turn>")
            history += _encode(ctx, "\n")
        server.send(pid, None)
        server.run()
        return rows
    finally:
        server.close()


# -- tree search -------------------------------------------------------------------------------------
def _tree_args(cfg: DictConfig) -> dict:
    t = cfg.sweep.tree
    return {
        "prompt": cfg.workload.tree_prompt,
        "depth": t.depth,
        "branch": t.branch,
        "width": t.width,
        "step_tokens": t.step_tokens,
    }


def _tree_symphony(ctx: WorkerContext, cfg: DictConfig) -> dict:
    server = _server(ctx, cfg)
    try:
        proc, latency = _run_lip(server, "tree_search", _tree_args(cfg))
        return {
            "latency_s": latency,
            "tokens_computed": proc.stats["predicted_tokens"],
            "best": proc.result["tokens"],
            "forwards": server.batcher.stats.forwards,
        }
    finally:
        server.close()


def _tree_prompt(ctx: WorkerContext, cfg: DictConfig) -> dict:
    """The same search with stateless requests: each child is one request carrying its full prefix."""
    args, t0 = _tree_args(cfg), time.perf_counter()
    prompt = _bos(ctx) + _encode(ctx, args["prompt"])
    (root,), computed, forwards = _stateless_generate(ctx, [prompt], 1)
    frontier = [([], [], root["dists"][0])]
    for _ in range(args["depth"]):
        children = [([*toks, tok], [*lps, lp]) for toks, lps, d in frontier for tok, lp in _top_k(d, args["branch"])]
        outs, c, f = _stateless_generate(ctx, [prompt + toks for toks, _ in children], args["step_tokens"])
        computed, forwards = computed + c, forwards + f
        scored = []
        for (toks, lps), out in zip(children, outs):
            toks, lps = toks + out["tokens"][:-1], lps + out["logprobs"][:-1]  # the last step only branches
            scored.append((toks, lps, out["dists"][-1]))
        scored.sort(key=lambda n: sum(n[1]) / len(n[1]), reverse=True)
        frontier = scored[: args["width"]]
    return {
        "latency_s": time.perf_counter() - t0,
        "tokens_computed": computed,
        "best": frontier[0][0],
        "forwards": forwards,
    }


def _top_k(logits, k: int) -> list[tuple[int, float]]:
    import torch

    lp = torch.log_softmax(logits.float(), -1)
    vals, ids = lp.topk(k)
    return [(int(i), float(v)) for i, v in zip(ids, vals)]


def _stateless_generate(ctx: WorkerContext, prompts: list[list[int]], steps: int):
    """Prompt serving with logprobs: prefill each prompt in a fresh sequence, then ``steps - 1``
    greedy decode steps, all prompts batched together; every KV page is dropped afterwards.

    Returns per prompt ``{"tokens", "logprobs", "dists"}`` (the greedy token after each step, its
    log-probability, and the logits it came from), the tokens computed and the forwards run.
    """
    import torch

    from core.sequence import KVSequence

    model = ctx.model().model
    pool = ctx.cache(
        {"stateless_pool": ctx.cfg.server.num_pages},
        lambda: model.new_kv_pool(ctx.cfg.server.num_pages, ctx.cfg.engine.page_size),
    )
    seqs = [KVSequence(pool) for _ in prompts]
    outs = [{"tokens": [], "logprobs": [], "dists": []} for _ in prompts]
    feed, computed, forwards = [list(p) for p in prompts], 0, 0
    try:
        for _ in range(steps):
            logits = [o.logits[-1] for o in model.forward(pool, [s.entry(token_ids=f) for s, f in zip(seqs, feed)])]
            computed, forwards = computed + sum(len(f) for f in feed), forwards + 1
            for out, lg in zip(outs, logits):
                token = int(lg.argmax())
                out["tokens"].append(token)
                out["logprobs"].append(float(torch.log_softmax(lg.float(), -1)[token]))
                out["dists"].append(lg)
            feed = [[o["tokens"][-1]] for o in outs]
    finally:
        for s in seqs:
            s.release()
    return outs, computed, forwards


# -- agent with tools --------------------------------------------------------------------------------
def _agent_args(cfg: DictConfig) -> dict:
    a = cfg.sweep.agent
    return {
        "question": cfg.workload.agent_question,
        "steps": a.steps,
        "think_tokens": a.think_tokens,
        "answer_tokens": a.answer_tokens,
        "plan": list(cfg.workload.agent_plan),
        "tool_latency_s": cfg.workload.tool_latency_s,
    }


def _agent_symphony(ctx: WorkerContext, cfg: DictConfig) -> dict:
    server = _server(ctx, cfg)
    try:
        time.sleep(cfg.workload.rtt_s)  # one round trip: submit the LIP, get its answer
        proc, latency = _run_lip(server, "agent", _agent_args(cfg))
        return {
            "latency_s": latency + cfg.workload.rtt_s,
            "tokens_computed": proc.stats["predicted_tokens"],
            "calls": [c["key"] for c in proc.result["calls"]],
            "answer": proc.result["answer"],
        }
    finally:
        server.close()


def _agent_prompt(ctx: WorkerContext, cfg: DictConfig) -> dict:
    from symphony.lips.agent import TOOL_DOC, lookup, parse_call

    args, tok = _agent_args(cfg), ctx.model().tokenizer
    newline = tuple(_encode(ctx, "\n"))
    t0, computed, calls = time.perf_counter(), 0, []
    history = _bos(ctx) + _encode(ctx, TOOL_DOC + f"Question: {args['question']}\nThought:")
    for i in range(args["steps"]):
        time.sleep(cfg.workload.rtt_s)  # each request is a client <-> server round trip
        thought = _generate(ctx, history, args["think_tokens"], stop=newline)
        computed += len(history) + len(thought) - 1
        history += thought
        key = parse_call(tok.decode(thought)) or args["plan"][i % len(args["plan"])]
        observation = lookup(key, args["tool_latency_s"])  # the client runs the tool
        calls.append(key)
        history += _encode(ctx, f"\nAction: lookup({key})\nObservation: {observation}\nThought:")
    history += _encode(ctx, "\nAnswer:")
    time.sleep(cfg.workload.rtt_s)
    answer = _generate(ctx, history, args["answer_tokens"])
    computed += len(history) + len(answer) - 1
    return {
        "latency_s": time.perf_counter() - t0,
        "tokens_computed": computed,
        "calls": calls,
        "answer": tok.decode(answer),
    }


# -- batch fill under many LIPs ----------------------------------------------------------------------
async def _decode_lip(lip):
    """A LIP that decodes ``tokens`` greedy tokens after a short prompt of its own."""
    fd = lip.create(f"{lip.home}/decode-{lip.pid}")
    dist = await lip.predict(fd, lip.tokenize(lip.args["prompt"], add_special_tokens=True))
    for _ in range(lip.args["tokens"] - 1):
        dist = await lip.predict(fd, [lip.sample(dist)])
    lip.unlink(f"{lip.home}/decode-{lip.pid}")


def _batch_fill(ctx: WorkerContext, cfg: DictConfig, lips: int, serial: bool) -> dict:
    server = _server(ctx, cfg, **({"max_batch_size": 1} if serial else {}))
    try:
        words = cfg.workload.tree_prompt.split()
        for i in range(lips):
            server.submit(
                _decode_lip,
                {
                    "prompt": " ".join(words[i % len(words) :] + words[: i % len(words)]),
                    "tokens": cfg.sweep.batch_tokens,
                },
                user="bench",
            )
        t0 = time.perf_counter()
        server.run()
        wall = time.perf_counter() - t0
        failed = [p.error_text for p in server.processes.values() if p.error is not None]
        if failed:
            raise RuntimeError(f"batch-fill LIPs failed: {failed[0]}")
        stats = server.batcher.stats
        decode_sizes = stats.batch_sizes[1:] if not serial else stats.batch_sizes
        return {
            "wall_s": wall,
            "forwards": stats.forwards,
            "mean_batch_size": stats.mean_batch_size(),
            "mean_decode_batch_size": statistics.mean(decode_sizes) if decode_sizes else 0.0,
            "max_batch_size": max(stats.batch_sizes),
            "tokens_per_s": lips * cfg.sweep.batch_tokens / wall,
        }
    finally:
        server.close()


# -- constrained JSON --------------------------------------------------------------------------------
def _json(ctx: WorkerContext, cfg: DictConfig) -> list[dict]:
    """Each prompt through the constrained-JSON LIP, then as a plain request asking for JSON."""
    server, tok, rows = _server(ctx, cfg), ctx.model().tokenizer, []
    try:
        server.vocab_strings()  # built once per server; not part of any request's latency
        for prompt in cfg.workload.json_prompts[: cfg.sweep.json_prompts]:
            proc, latency = _run_lip(server, "json_decode", {"prompt": prompt + JSON_INSTRUCTION})
            text = proc.result["text"]
            rows.append(
                {
                    "system": "symphony",
                    "prompt": prompt,
                    "latency_s": latency,
                    "tokens_computed": proc.stats["predicted_tokens"],
                    "valid": _valid_person(text),
                    "text": text,
                }
            )
            ids = _bos(ctx) + _encode(ctx, prompt + JSON_INSTRUCTION)
            t0 = time.perf_counter()
            out = _generate(ctx, ids, cfg.sweep.json_tokens)
            text = tok.decode(out, skip_special_tokens=True)
            rows.append(
                {
                    "system": "prompt",
                    "prompt": prompt,
                    "latency_s": time.perf_counter() - t0,
                    "tokens_computed": len(ids) + len(out) - 1,
                    "valid": _valid_person(text),
                    "text": text,
                }
            )
        return rows
    finally:
        server.close()


def _valid_person(text: str) -> bool:
    """Does ``text`` hold a JSON object with a string name, an integer age and a string city?"""
    m = re.search(r"\{.*?\}", text, re.S)
    try:
        value = json.loads(m.group(0)) if m else None
    except json.JSONDecodeError:
        return False
    return (
        isinstance(value, dict)
        and isinstance(value.get("name"), str)
        and type(value.get("age")) is int
        and isinstance(value.get("city"), str)
    )


# -- figures -----------------------------------------------------------------------------------------
_CLAIM = "vision paper, no numbers; claim: "


@EXPERIMENT.figure(paper=_CLAIM + "a LIP keeps its KV between turns, so turns stop re-encoding the history")
def fig_multiturn(records: list[dict], cfg: DictConfig) -> FigureResult:
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["workload"] == "multiturn"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for system in SYSTEMS:
        mine = sorted((r for r in rows if r["system"] == system), key=lambda r: r["turn"])
        axes[0].plot([r["turn"] + 1 for r in mine], [r["tokens_computed"] for r in mine], "o-", label=system)
        axes[1].plot([r["turn"] + 1 for r in mine], [r["latency_s"] for r in mine], "o-", label=system)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set(xlabel="turn", ylabel="tokens computed", title="tokens run through the model")
    axes[1].set(xlabel="turn", ylabel="latency (s)", title="turn latency")
    axes[0].legend()
    fig.tight_layout()
    by = {s: sorted((r for r in rows if r["system"] == s), key=lambda r: r["turn"]) for s in SYSTEMS}
    last_s, last_p = by["symphony"][-1], by["prompt"][-1]
    same = sum(a["reply"] == b["reply"] for a, b in zip(by["symphony"], by["prompt"]))
    ours = (
        f"turn {last_s['turn'] + 1}: {last_s['tokens_computed']} vs {last_p['tokens_computed']} tokens computed "
        f"({last_p['tokens_computed'] / last_s['tokens_computed']:.1f}x fewer), latency {last_s['latency_s']:.2f} "
        f"vs {last_p['latency_s']:.2f} s; total {sum(r['tokens_computed'] for r in by['symphony'])} vs "
        f"{sum(r['tokens_computed'] for r in by['prompt'])} tokens; replies identical {same}/{len(by['prompt'])}"
    )
    return FigureResult(fig, ours)


def _two_bars(rows: list[dict], title: str):
    import matplotlib.pyplot as plt

    by = {r["system"]: r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    for ax, key, label in ((axes[0], "tokens_computed", "tokens computed"), (axes[1], "latency_s", "latency (s)")):
        ax.bar(list(SYSTEMS), [by[s][key] for s in SYSTEMS], color=["tab:blue", "tab:orange"])
        ax.set_ylabel(label)
    fig.suptitle(title)
    fig.tight_layout()
    return fig, by


@EXPERIMENT.figure(paper=_CLAIM + "forking KV files shares the prefix among branches of a search")
def fig_tree_search(records: list[dict], cfg: DictConfig) -> FigureResult:
    fig, by = _two_bars([r for r in records if r["workload"] == "tree_search"], "tree search")
    s, p = by["symphony"], by["prompt"]
    ours = (
        f"{s['tokens_computed']} vs {p['tokens_computed']} tokens computed "
        f"({p['tokens_computed'] / s['tokens_computed']:.1f}x fewer), latency {s['latency_s']:.2f} vs "
        f"{p['latency_s']:.2f} s ({p['latency_s'] / s['latency_s']:.2f}x); same best branch: {s['best'] == p['best']}"
    )
    return FigureResult(fig, ours)


@EXPERIMENT.figure(paper=_CLAIM + "tools run server-side: no round trips, no re-encoding after each call")
def fig_agent(records: list[dict], cfg: DictConfig) -> FigureResult:
    fig, by = _two_bars([r for r in records if r["workload"] == "agent"], "agent with tools")
    s, p = by["symphony"], by["prompt"]
    ours = (
        f"latency {s['latency_s']:.2f} vs {p['latency_s']:.2f} s ({p['latency_s'] / s['latency_s']:.2f}x), "
        f"{s['tokens_computed']} vs {p['tokens_computed']} tokens computed; same answer: {s['answer'] == p['answer']}"
    )
    return FigureResult(fig, ours)


@EXPERIMENT.figure(paper=_CLAIM + "two-level scheduling keeps the accelerator's batches full under many LIPs")
def fig_batch_fill(records: list[dict], cfg: DictConfig) -> FigureResult:
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["workload"] == "batch_fill"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for mode in ("batched", "serial"):
        mine = sorted((r for r in rows if r["system"] == mode), key=lambda r: r["lips"])
        axes[0].plot([r["lips"] for r in mine], [r["mean_decode_batch_size"] for r in mine], "o-", label=mode)
        axes[1].plot([r["lips"] for r in mine], [r["tokens_per_s"] for r in mine], "o-", label=mode)
    lips = sorted({r["lips"] for r in rows})
    axes[0].set(xlabel="concurrent LIPs", ylabel="mean batch size (decode)", xscale="log", yscale="log")
    axes[1].set(xlabel="concurrent LIPs", ylabel="tokens / s", xscale="log")
    for ax in axes:  # plain integer ticks at the measured LIP counts
        ax.set_xticks(lips, [str(n) for n in lips])
        ax.minorticks_off()
    axes[0].set_yticks(lips, [str(n) for n in lips])
    axes[0].legend()
    fig.tight_layout()
    top = max(r["lips"] for r in rows)
    b = next(r for r in rows if r["system"] == "batched" and r["lips"] == top)
    s = next(r for r in rows if r["system"] == "serial" and r["lips"] == top)
    ours = (
        f"{top} LIPs: mean decode batch {b['mean_decode_batch_size']:.1f} (max batch {cfg.engine.max_batch_size}), "
        f"{b['tokens_per_s']:.1f} vs {s['tokens_per_s']:.1f} tok/s one-predict-per-forward "
        f"({b['tokens_per_s'] / s['tokens_per_s']:.2f}x)"
    )
    return FigureResult(fig, ours)


@EXPERIMENT.figure(paper=_CLAIM + "LIPs customise decoding (constrained JSON), which prompt serving cannot")
def table_json(records: list[dict], cfg: DictConfig) -> FigureResult:
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["workload"] == "json"]
    stats = {}
    for system in SYSTEMS:
        mine = [r for r in rows if r["system"] == system]
        stats[system] = (
            sum(r["valid"] for r in mine),
            len(mine),
            statistics.mean(r["latency_s"] for r in mine),
            statistics.mean(r["tokens_computed"] for r in mine),
        )
    fig, ax = plt.subplots(figsize=(6, 1.6))
    ax.axis("off")
    cells = [[s, f"{v}/{n}", f"{lat:.2f}", f"{tok:.0f}"] for s, (v, n, lat, tok) in stats.items()]
    ax.table(cellText=cells, colLabels=["system", "valid JSON", "latency (s)", "tokens computed"], loc="center")
    fig.tight_layout()
    ours = "; ".join(f"{s}: {v}/{n} valid, {lat:.2f} s" for s, (v, n, lat, _) in stats.items())
    return FigureResult(fig, ours)


if __name__ == "__main__":
    EXPERIMENT.main()
