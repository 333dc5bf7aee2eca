"""Tree-of-thought reasoning: branches that share the question's KV, expanded in parallel.

Arguments: question [branches=3] [depth=2] [thought_tokens=12] [seed=0]. The question is
prefilled once; each level forks every kept branch ``branches`` ways (forks share the prefix
pages, so the question is never recomputed), decodes all children in lockstep (one forward
call per token for the whole level), scores each thought by its mean log-probability, and keeps
the best ``branches``. A final answer is decoded from the best leaf. Returns the answer text and
the number of contexts explored.
"""

import math
import random

from inferlet import Context, detokenize, model_info, next_dists, sample, send


def _expand(parents, branches, thought_tokens, rng, eos):
    children = []
    for score, ctx, path in parents:
        for j in range(branches):
            child = ctx if j == 0 else ctx.fork()
            children.append([score, child, path, [], 0.0])
    for _ in range(thought_tokens):
        live = [c for c in children if not c[3] or c[3][-1] not in eos]
        if not live:
            break
        dists = next_dists([c[1] for c in live], k=16, temperature=1.0)
        for c, d in zip(live, dists):
            tok = sample(d, rng)
            c[4] += math.log(max(d.probs[d.ids.index(tok)], 1e-30))
            c[3].append(tok)
            if tok not in eos:
                c[1].fill_tokens([tok])
    return [(c[4] / max(1, len(c[3])), c[1], [*c[2], c[3]]) for c in children]


def main(args):
    question = args[0] if args else "What is 2 + 3?"
    branches = int(args[1]) if len(args) > 1 else 3
    depth = int(args[2]) if len(args) > 2 else 2
    thought_tokens = int(args[3]) if len(args) > 3 else 12
    rng = random.Random(int(args[4]) if len(args) > 4 else 0)
    eos = set(model_info().eos_token_ids)
    root = Context()
    root.fill("Question: " + question + "\nLet's think step by step.\n")
    frontier, explored = [(0.0, root, [])], 1
    for level in range(depth):
        scored = _expand(frontier, branches, thought_tokens, rng, eos)
        explored += len(scored)
        scored.sort(key=lambda s: -s[0])
        frontier = scored[:branches]
        for _, ctx, _ in scored[branches:]:
            ctx.release()
        send(f"level {level}: best score {frontier[0][0]:.3f}")
        for _, ctx, _ in frontier:
            ctx.fill("\n")
    best = frontier[0][1]
    for _, ctx, _ in frontier[1:]:
        ctx.release()
    best.fill("Answer:")
    answer = best.generate(thought_tokens)
    best.release()
    return detokenize(answer) + f"\nexplored={explored}"
