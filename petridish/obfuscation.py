"""Prompt Obfuscation (PO): hide the private words among decoys that are just as likely.

From the paper's earlier versions and its public prototype. SPD keeps the prompt's KV away from
the service, but the *outputs* still pass through it and can reveal the prompt ("the capital of
Uganda is Kampala"). PO marks sensitive spans in the prompt (``<redacted>Uganda</redacted>``)
and, inside the user process:

1. **Greedy quantised sampling** (:func:`sample_decoys`): for each redacted span of m tokens,
   decoys are grown token by token. At step i the true token's probability p_i (given the true
   text so far) falls into a bucket; a decoy may only be extended by tokens whose probability
   (given the decoy so far) falls into the same bucket. ``prob_dist="abs"`` uses buckets of width
   ``epsilon`` (floor(p / epsilon)); ``"rel"`` accepts |p / p_i - 1| <= epsilon. Each step keeps at
   most gamma candidates, chosen at random. So every decoy is, token by token, as probable as the
   secret, and the service cannot single out the true prompt by its likelihood.
2. **Virtual prompts** (:func:`plan_virtual_prompts`): gamma prompts, the true one at a row only the
   client knows, each with one candidate per span.
3. **One masked buffer** (:func:`obfuscated_buffer`): the shared beginning is stored once and each
   virtual prompt's remainder once, with a tree mask, so all gamma prompts prefill in one forward
   pass and each row's KV equals that of its prompt alone; the gamma rows then decode as one batch.

The service sees gamma equally plausible conversations. Unlike the prototype, where the text after
a span is shared and conditioned on the true span only, each virtual prompt here is exactly the
model run on that prompt, so decoy rows are indistinguishable from real runs by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from core.kv_cache import KVPool
from core.sequence import KVSequence
from petridish.messages import PromptRequest
from petridish.vault import PrivateBuffer, PromptTooLongError

_SPAN = re.compile(r"<redacted>(.*?)</redacted>", re.DOTALL)
PROB_DISTS = ("abs", "rel")


class ObfuscationError(ValueError):
    """The prompt or the obfuscation settings cannot produce virtual prompts."""


@dataclass(frozen=True)
class ObfuscationConfig:
    gamma: int = 4  # number of virtual prompts, the true one included
    epsilon: float = 0.1
    prob_dist: str = "abs"
    temperature: float = 1.0
    seed: int = 0
    true_row: int = 0  # the client's secret: which virtual prompt is the real one

    def __post_init__(self) -> None:
        if self.prob_dist not in PROB_DISTS:
            raise ObfuscationError(f"prob_dist {self.prob_dist!r} is not one of {PROB_DISTS}")
        if not 0 <= self.true_row < self.gamma:
            raise ObfuscationError(f"true_row {self.true_row} is outside the {self.gamma} virtual prompts")
        if self.epsilon <= 0:
            raise ObfuscationError(f"epsilon must be > 0, got {self.epsilon}")


def split_redacted(prompt: str) -> list[tuple[str, bool]]:
    """``"a <redacted>b</redacted> c"`` -> [("a ", False), ("b", True), (" c", False)]."""
    parts, last = [], 0
    for m in _SPAN.finditer(prompt):
        if m.start() > last:
            parts.append((prompt[last : m.start()], False))
        parts.append((m.group(1), True))
        last = m.end()
    if last < len(prompt):
        parts.append((prompt[last:], False))
    if "<redacted>" in prompt.replace("</redacted>", "") and not any(r for _, r in parts):
        raise ObfuscationError("unbalanced <redacted> tag in the prompt")
    return parts


def same_bucket(probs: torch.Tensor, p_true: float, cfg: ObfuscationConfig) -> torch.Tensor:
    """Boolean (V,): which tokens' probabilities are in the true token's quantised bucket."""
    if cfg.prob_dist == "abs":
        return torch.floor(probs / cfg.epsilon) == torch.floor(torch.tensor(p_true) / cfg.epsilon)
    return (probs / p_true - 1).abs() <= cfg.epsilon


def sample_decoys(
    model, pool: KVPool, context: list[int], span: list[int], cfg: ObfuscationConfig, gen: torch.Generator
) -> list[list[int]]:
    """Up to gamma - 1 decoys for ``span`` (same length, same probability buckets), given ``context``."""
    base = KVSequence(pool)
    (out,) = model.forward(pool, [base.entry(token_ids=context, logits_at=(-1,))])
    true_seq, true_logits = base.fork(), out.logits[-1]
    # Each candidate: (sequence holding its KV, logits for its next token, its tokens so far).
    cands: list[tuple[KVSequence, torch.Tensor, list[int]]] = [(base, true_logits, [])]
    try:
        for i, target in enumerate(span):
            p_true = float(torch.softmax(true_logits / cfg.temperature, -1)[target])
            grown = []
            for seq, logits, toks in cands:
                ok = same_bucket(torch.softmax(logits / cfg.temperature, -1), p_true, cfg).nonzero().view(-1)
                picks = ok[torch.randperm(len(ok), generator=gen)[: cfg.gamma]]
                grown += [(seq, [*toks, int(t)]) for t in picks]
            order = torch.randperm(len(grown), generator=gen)[: cfg.gamma].tolist()
            grown = [grown[j] for j in order]
            if i == len(span) - 1 or not grown:
                return _unique_decoys(grown, span, cfg.gamma - 1)
            # Advance every kept candidate and the true text by one token, in one batch.
            seqs = [parent.fork() for parent, _ in grown]
            entries = [s.entry(token_ids=[toks[-1]], logits_at=(-1,)) for s, (_, toks) in zip(seqs, grown)]
            entries.append(true_seq.entry(token_ids=[target], logits_at=(-1,)))
            outs = model.forward(pool, entries)
            for seq, _, _ in cands:
                seq.release()
            cands = [(s, o.logits[-1], toks) for s, o, (_, toks) in zip(seqs, outs, grown)]
            true_logits = outs[-1].logits[-1]
        return []
    finally:
        for seq, _, _ in cands:
            seq.release()
        true_seq.release()


def _unique_decoys(grown: list[tuple[KVSequence, list[int]]], span: list[int], limit: int) -> list[list[int]]:
    out: list[list[int]] = []
    for _, toks in grown:
        if toks != span and toks not in out:
            out.append(toks)
    return out[:limit]


@dataclass
class VirtualPrompts:
    """Token ids of every virtual prompt: ``shared`` then ``rows[r]``; ``rows[true_row]`` is real."""

    shared: list[int]
    rows: list[list[int]]
    public_prefix_len: int

    def ids(self, row: int) -> list[int]:
        return self.shared + self.rows[row]


def plan_virtual_prompts(model, tokenizer, pool: KVPool, request: PromptRequest) -> VirtualPrompts:
    cfg: ObfuscationConfig = request.obfuscation
    prefix = tokenizer.encode(request.public_prefix) if request.public_prefix else []
    parts = split_redacted(request.prompt)
    if not any(redacted for _, redacted in parts):
        raise ObfuscationError("obfuscation was requested but the prompt has no <redacted>...</redacted> span")
    # The public prefix, or just the special tokens that open a sequence (BOS), comes first.
    lead = prefix or tokenizer.encode("", add_special_tokens=True)
    # Token ids per part, tokenized part by part so that spans have fixed token boundaries.
    ids = [tokenizer.encode(text, add_special_tokens=False) for text, _ in parts]
    gen = torch.Generator().manual_seed(cfg.seed)
    candidates: list[list[list[int]]] = []  # per part: candidate token lists, index 0 = the truth
    context = list(lead)
    if not context:
        raise ObfuscationError("the tokenizer adds no BOS and there is no public prefix to condition decoys on")
    for (_, redacted), part in zip(parts, ids):
        if redacted and part:
            candidates.append([part, *sample_decoys(model, pool, context, part, cfg, gen)])
        else:
            candidates.append([part])
        context += part
    gamma = min(len(c) for c in candidates if len(c) > 1) if any(len(c) > 1 for c in candidates) else 1
    if gamma < 2:
        raise ObfuscationError("no decoy falls into the secret's probability bucket; raise epsilon")
    gamma = min(gamma, cfg.gamma)
    true_row = min(cfg.true_row, gamma - 1)
    # Row r takes decoy choice[r] of every span; the true row takes the truth (index 0).
    choice = [(r - true_row) % gamma for r in range(gamma)]
    split = next(i for i, c in enumerate(candidates) if len(c) > 1)
    shared = lead + [t for part in ids[:split] for t in part]
    rows = [[t for c in candidates[split:] for t in c[choice[r] % len(c)]] for r in range(gamma)]
    return VirtualPrompts(shared, rows, len(prefix))


def obfuscated_buffer(model, tokenizer, pool: KVPool, request: PromptRequest) -> PrivateBuffer:
    """All virtual prompts in one masked buffer: the shared beginning once, then each row's rest."""
    vp = plan_virtual_prompts(model, tokenizer, pool, request)
    s = len(vp.shared)
    total = s + sum(len(r) for r in vp.rows)
    if total > model.config.max_position_embeddings * 4:
        raise PromptTooLongError(f"{len(vp.rows)} virtual prompts need {total} buffer tokens")
    ids, pos = list(vp.shared), list(range(s))
    mask = torch.zeros(total, total, dtype=torch.bool)
    mask[:s, :s] = torch.ones(s, s, dtype=torch.bool).tril()
    row_masks = torch.zeros(len(vp.rows), total, dtype=torch.bool)
    last, nxt = [], []
    for r, row in enumerate(vp.rows):
        a, n = len(ids), len(row)
        ids += row
        pos += range(s, s + n)
        mask[a : a + n, :s] = True
        mask[a : a + n, a : a + n] = torch.ones(n, n, dtype=torch.bool).tril()
        row_masks[r, vp.public_prefix_len : s] = True
        row_masks[r, a : a + n] = True
        last.append(a + n - 1)
        nxt.append(s + n)
    return PrivateBuffer(
        token_ids=torch.tensor(ids, dtype=torch.long),
        positions=torch.tensor(pos, dtype=torch.long),
        mask=mask,
        row_masks=row_masks,
        last_index=last,
        next_positions=nxt,
        public_prefix_len=vp.public_prefix_len,
    )
