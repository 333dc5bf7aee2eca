"""Beam search: keep the ``beam_size`` most likely continuations, forking contexts as they grow.

Arguments: prompt [beam_size=3] [max_tokens=16]. Every step runs all beams in one forward call
(one batch); a beam that survives with several children is forked (full KV pages shared, only
the partial last page copied). Returns the best beam's token ids and text.
"""

import math

from inferlet import Context, detokenize, model_info, next_dists


def main(args):
    prompt = args[0] if args else "Hello"
    beam_size = int(args[1]) if len(args) > 1 else 3
    max_tokens = int(args[2]) if len(args) > 2 else 16
    eos = set(model_info().eos_token_ids)
    root = Context()
    root.fill(prompt)
    beams = [(0.0, root, [])]  # (log-probability, context, generated tokens)
    finished = []
    for _ in range(max_tokens):
        dists = next_dists([c for _, c, _ in beams], k=beam_size, temperature=1.0)
        candidates = []
        for b, ((score, _, _), d) in enumerate(zip(beams, dists)):
            for tok, p in zip(d.ids, d.probs):
                candidates.append((score + math.log(max(p, 1e-30)), b, tok))
        candidates.sort(key=lambda c: -c[0])
        chosen, used = [], {}
        for score, b, tok in candidates[:beam_size]:
            parent = beams[b][1]
            # The first child continues the parent's context; later ones fork its KV.
            ctx = parent.fork() if b in used else parent
            used[b] = True
            chosen.append((score, ctx, [*beams[b][2], tok]))
        for b, (_, ctx, _) in enumerate(beams):
            if b not in used:
                ctx.release()
        beams = []
        for score, ctx, toks in chosen:
            if toks[-1] in eos:
                finished.append((score, toks))
                ctx.release()
            else:
                ctx.fill_tokens([toks[-1]])
                beams.append((score, ctx, toks))
        if not beams:
            break
    finished += [(s, t) for s, _, t in beams]
    for _, ctx, _ in beams:
        ctx.release()
    score, best = max(finished, key=lambda f: f[0])
    return ",".join(str(t) for t in best) + "\n" + detokenize(best)
