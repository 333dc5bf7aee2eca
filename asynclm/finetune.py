"""The paper's fine-tuning recipe as a LoRA fine-tune in plain torch, on CML traces built from BFCL.

Traces (:func:`simulate_trace`) follow the paper's data recipe:

* a call dependency graph per task (BFCL parallel tasks: none; multi-step tasks: one parent per call);
* simulated execution times per call (uniform 1 ms - 1 s) and per-token generation times (5-30 ms);
* the model emits ready calls in longest-processing-time (LPT) order; each result is inserted as an
  interrupt at the first point after it completes on the simulated timeline where the token monitor
  would allow it (never inside a call); when no call is ready and results are pending, a trap;
* the answer once every result is in.

Only the model's own tokens carry loss (calls, traps, answer); injected interrupts and the ids the
monitor forces are context. Training updates LoRA adapters on the attention projections plus the
embedding rows of the five CML tags (repurposed tokens start untrained; with tied embeddings those
rows are also the LM-head rows that let the model emit the tags). The forward pass is the engine's
own paged forward (gradients flow through the KV writes), so what is trained is what is served.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from asynclm.bfcl import BFCLTask
from asynclm.functions import REAL_IMPLEMENTATIONS, simulated_result
from asynclm.prompt import build_prompt
from asynclm.protocol import TRAP_SEGMENTS, FunctionCall, Interrupt, Segment, Tag
from asynclm.vocab import CMLVocab
from core.models.base import PagedCausalLM
from core.sequence import KVSequence

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class AdapterError(RuntimeError):
    """An adapter file does not fit the model it is loaded into."""


@dataclass(frozen=True)
class TraceConfig:
    exec_s: tuple[float, float] = (0.001, 1.0)
    token_s: tuple[float, float] = (0.005, 0.030)
    answer: str = "All requested calls have completed."


# -- traces ---------------------------------------------------------------------------------------
def simulate_trace(task: BFCLTask, vocab: CMLVocab, rng: random.Random, cfg: TraceConfig) -> list[tuple[Segment, bool]]:
    """The assistant side of one trace as (segment, trained) pairs on a simulated timeline."""
    calls = task.ground_truth_calls()
    deps = task.dependencies()
    exec_s = [rng.uniform(*cfg.exec_s) for _ in calls]
    per_token = rng.uniform(*cfg.token_s)
    out: list[tuple[Segment, bool]] = []
    t, emitted, running, delivered = 0.0, [], [], set()  # running: (finish time, gt index, call id)

    def deliver(now: float) -> None:
        for item in sorted(r for r in running if r[0] <= now):
            running.remove(item)
            _, j, call_id = item
            delivered.add(j)
            out.extend((seg, False) for seg in Interrupt(call_id, _result(calls[j])).segments())

    while True:
        deliver(t)
        ready = [j for j in range(len(calls)) if j not in emitted and all(d in delivered for d in deps[j])]
        if ready:
            j = max(ready, key=lambda i: (exec_s[i], -i))  # LPT
            call = FunctionCall(len(emitted), calls[j].name, calls[j].arguments)
            emitted.append(j)
            out += [(Tag.CALL, True), (str(call.call_id), False), (Tag.HEAD, False), (call.body(), True),
                    (Tag.END, True)]
            t += per_token * (len(vocab.encode([call.body()])) + 2)
            running.append((t + exec_s[j], j, call.call_id))
        elif running:
            out += [(TRAP_SEGMENTS[0], True), (TRAP_SEGMENTS[1], False)]
            t = max(t, min(r[0] for r in running))
        else:
            out.append((cfg.answer, True))
            return out


def _result(call: FunctionCall):
    impl = REAL_IMPLEMENTATIONS.get(call.name)
    if impl is None:
        return simulated_result(call.name, call.arguments)
    try:
        value = impl(**call.arguments)
        json.dumps(value)
        return value
    except Exception as e:  # the trace then teaches the model to read an error interrupt
        return {"error": f"{type(e).__name__}: {e}"}


@dataclass
class TrainingExample:
    input_ids: list[int]
    loss_mask: list[bool]  # True where the token is the model's own (predicted from the one before)


def build_example(vocab: CMLVocab, tokenizer, task: BFCLTask, rng: random.Random, cfg: TraceConfig,
                  eos_token_id: int, with_docs: bool = True) -> TrainingExample:
    ids = build_prompt(vocab, tokenizer, task, with_docs=with_docs)
    mask = [False] * len(ids)
    for seg, trained in simulate_trace(task, vocab, rng, cfg):
        seg_ids = vocab.encode([seg])
        ids += seg_ids
        mask += [trained] * len(seg_ids)
    ids.append(eos_token_id)
    mask.append(True)
    return TrainingExample(ids, mask)


# -- LoRA -------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * B(A(x))`` with the base frozen; B starts at zero (an exact no-op)."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0):
        super().__init__()
        self.base, self.r, self.scaling = base, r, alpha / r
        self.lora_a = nn.Parameter(torch.empty(r, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scaling


def apply_lora(model: PagedCausalLM, r: int = 8, alpha: float = 16.0) -> list[nn.Parameter]:
    """Freeze the model, wrap the attention projections with LoRA; return the new parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for layer in model.layers:
        attn = layer.self_attn
        for name in LORA_TARGETS:
            base = getattr(attn, name)
            if isinstance(base, LoRALinear):
                raise AdapterError(f"{name} of a layer already has a LoRA adapter")
            wrapped = LoRALinear(base, r, alpha)
            setattr(attn, name, wrapped)
            params += [wrapped.lora_a, wrapped.lora_b]
    return params


class TagRowsEmbedding(nn.Module):
    """The frozen embedding with the CML tag rows replaced by a small trainable ``(5, hidden)`` matrix.

    ``weight`` is the effective matrix, so tied LM heads (``model.lm_head_weight()``) see the trained
    rows too. Training touches 5 x hidden numbers instead of the whole vocab x hidden matrix (262k rows
    on Gemma, whose optimizer state alone would be ~1.3 GB).
    """

    def __init__(self, base: nn.Embedding, rows: list[int]):
        super().__init__()
        self.base = base
        self.register_buffer("rows", torch.tensor(rows), persistent=False)
        self.tag_weight = nn.Parameter(base.weight.detach()[rows].clone())

    @property
    def weight(self) -> torch.Tensor:
        if self.tag_weight.requires_grad and torch.is_grad_enabled():  # training: a differentiable copy
            return self.base.weight.index_put((self.rows,), self.tag_weight)
        return self.base.weight  # serving: the rows were written in place by freeze()

    @torch.no_grad()
    def freeze(self) -> None:
        """Write the trained rows into the base matrix and stop training them (no per-call copy)."""
        self.base.weight[self.rows] = self.tag_weight.to(self.base.weight)
        self.tag_weight.requires_grad_(False)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(token_ids, self.weight)


def train_tag_rows(model: PagedCausalLM, vocab: CMLVocab) -> nn.Parameter:
    """Swap in a :class:`TagRowsEmbedding` (once) and return its trainable rows."""
    if not isinstance(model.embed_tokens, TagRowsEmbedding):
        model.embed_tokens.weight.requires_grad_(False)
        model.embed_tokens = TagRowsEmbedding(model.embed_tokens, list(vocab.tag_ids.values()))
    return model.embed_tokens.tag_weight


def example_loss(model: PagedCausalLM, ex: TrainingExample, page_size: int = 16) -> torch.Tensor:
    """Next-token cross-entropy on the model's own tokens, through the engine's paged forward."""
    n = len(ex.input_ids)
    targets = [i for i in range(1, n) if ex.loss_mask[i]]
    if not targets:
        raise ValueError("training example has no trained tokens")
    pool = model.new_kv_pool(n // page_size + 2, page_size)
    seq = KVSequence(pool)
    ids = torch.tensor(ex.input_ids)
    (out,) = model.forward_with_grad(pool, [seq.entry(token_ids=ids, logits_at=[i - 1 for i in targets])])
    return nn.functional.cross_entropy(out.logits, ids[targets].to(out.logits.device))


def finetune(model: PagedCausalLM, vocab: CMLVocab, examples: list[TrainingExample], steps: int,
             lr: float = 1e-3, r: int = 8, seed: int = 0) -> list[float]:
    """LoRA + tag-row fine-tune for ``steps`` examples (batch 1, cycling); returns the losses."""
    torch.manual_seed(seed)
    params = apply_lora(model, r)
    tag_rows = train_tag_rows(model, vocab)
    opt = torch.optim.AdamW([{"params": params}, {"params": [tag_rows], "weight_decay": 0.0}], lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        loss = example_loss(model, examples[step % len(examples)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    model.embed_tokens.freeze()
    return losses


def save_adapter(model: PagedCausalLM, vocab: CMLVocab, path: str | Path) -> None:
    """Write the LoRA tensors and the tag rows (a few MB) to ``path``."""
    state = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    state["tag_rows.ids"] = torch.tensor(list(vocab.tag_ids.values()))
    state["tag_rows.weight"] = model.embed_tokens.weight.detach()[state["tag_rows.ids"]].clone()
    torch.save(state, path)


def load_adapter(model: PagedCausalLM, path: str | Path, r: int = 8) -> None:
    """Wrap ``model`` with LoRA and tag rows and load an adapter written by :func:`save_adapter`."""
    state = torch.load(path, map_location="cpu")
    apply_lora(model, r)
    missing = [k for k in model.state_dict() if "lora_" in k and k not in state]
    if missing:
        raise AdapterError(f"{path}: adapter lacks {len(missing)} LoRA tensors, e.g. {missing[0]}")
    model.load_state_dict({k: v for k, v in state.items() if "lora_" in k}, strict=False)
    rows = [int(i) for i in state["tag_rows.ids"]]
    model.embed_tokens.weight.requires_grad_(False)
    model.embed_tokens = TagRowsEmbedding(model.embed_tokens, rows)
    with torch.no_grad():
        model.embed_tokens.tag_weight.copy_(state["tag_rows.weight"])
    model.embed_tokens.freeze()

def main(argv: list[str] | None = None) -> None:
    """``python -m asynclm.finetune --steps 200 --out adapter.pt [--model gemma3-270m] [--device cuda]``."""
    import argparse

    from asynclm.bfcl import load_tasks, multi_step_tasks
    from core.loader import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--train-tasks", type=int, default=150, help="per category; the rest is held out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    loaded = load_model(args.model, device=args.device)
    vocab = CMLVocab.for_tokenizer(loaded.tokenizer)
    rng = random.Random(args.seed)
    tasks = [*load_tasks("parallel")[: args.train_tasks], *load_tasks("parallel_multiple")[: args.train_tasks]]
    tasks += multi_step_tasks(load_tasks("parallel_multiple")[: args.train_tasks], 2, args.train_tasks // 3, args.seed)
    rng.shuffle(tasks)
    eos = loaded.tokenizer.eos_token_ids[0]
    examples = [build_example(vocab, loaded.tokenizer, t, rng, TraceConfig(), eos) for t in tasks]
    losses = finetune(loaded.model, vocab, examples, args.steps, args.lr, args.rank, args.seed)
    save_adapter(loaded.model, vocab, args.out)
    k = max(1, len(losses) // 10)
    print(f"loss {sum(losses[:k]) / k:.3f} -> {sum(losses[-k:]) / k:.3f} over {len(losses)} steps; adapter -> {args.out}")


if __name__ == "__main__":
    main()
