"""Speculative decoding with prompt-lookup drafts, verified in one forward pass per step.

Arguments: prompt [max_tokens=32] [draft_len=4] [ngram=2]. The draft is the continuation of the
last occurrence of the context's final ``ngram`` tokens (no draft model needed). The pending
token plus the draft run in one pass with an output after every input; the longest prefix of
the draft that greedy decoding agrees with is kept, plus the model's own next token, and the
KV of rejected tokens is truncated away. The output is exactly greedy decoding's.
Returns ``"<ids>\\n<text>\\n<accepted>/<drafted>"``.
"""

from inferlet import Context, detokenize, model_info


def _draft(history, ngram, draft_len):
    if len(history) <= ngram:
        return []
    tail = history[-ngram:]
    for start in range(len(history) - ngram - 1, -1, -1):
        if history[start : start + ngram] == tail:
            return history[start + ngram : start + ngram + draft_len]
    return []


def main(args):
    prompt = args[0] if args else "Hello"
    max_tokens = int(args[1]) if len(args) > 1 else 32
    draft_len = int(args[2]) if len(args) > 2 else 4
    ngram = int(args[3]) if len(args) > 3 else 2
    eos = set(model_info().eos_token_ids)
    ctx = Context()
    ctx.fill(prompt)
    out, accepted, drafted = [], 0, 0
    while len(out) < max_tokens:
        history = ctx.tokens + [t for t, _ in ctx.pending]
        draft = _draft(history, ngram, min(draft_len, max_tokens - len(out) - 1))
        base = ctx.kv_len + len(ctx.pending) - 1  # KV length once the pending token is in
        ctx.fill_tokens(draft)
        n = len(ctx.pending)
        embeds = ctx.forward(outputs=range(n - len(draft) - 1, n))
        greedy = [ctx.dist(e).ids[0] for e in embeds]
        keep = 0
        while keep < len(draft) and draft[keep] == greedy[keep]:
            keep += 1
        drafted += len(draft)
        accepted += keep
        new = [*draft[:keep], greedy[keep]]
        ctx.truncate(base + 1 + keep)  # drop the KV of rejected draft tokens
        for t in new:
            if len(out) == max_tokens:
                break
            out.append(t)
            if t in eos:
                break
        if out[-1] in eos or len(out) == max_tokens:
            break
        ctx.fill_tokens([new[-1]])
    ctx.release()
    return ",".join(str(t) for t in out) + "\n" + detokenize(out) + f"\n{accepted}/{drafted}"
