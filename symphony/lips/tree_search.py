"""Tree search over continuations, forking the KV file at every branch (copy-on-write).

The prompt is encoded once. At each of ``depth`` levels every kept node branches into its
``branch`` most likely next tokens; each child is a fork of its parent's file, extended greedily
by ``step_tokens`` tokens in one batched round per token (all children's predicts go to the
kernel together with ``gather``). Children are scored by their mean token log-probability and the
best ``width`` are kept; the others are closed, which frees their private pages.

Args: ``prompt`` (text), ``depth`` (2), ``branch`` (3), ``width`` (2), ``step_tokens`` (4).
Returns ``{"text", "tokens", "score", "nodes"}``. The kernel counts the tokens run through the
model (``process.stats["predicted_tokens"]``): each shared prefix only once.
"""


async def main(lip):
    prompt = lip.args.get("prompt", "Once upon a time")
    depth, branch = int(lip.args.get("depth", 2)), int(lip.args.get("branch", 3))
    width, step_tokens = int(lip.args.get("width", 2)), int(lip.args.get("step_tokens", 4))
    ids = ([lip.bos_token_id] if lip.bos_token_id is not None else []) + lip.tokenize(prompt)
    root = lip.create(f"{lip.home}/tree-{lip.pid}")
    dist = await lip.predict(root, ids)
    nodes = 0
    # A node: (fd, tokens generated so far, their log-probs, distribution after the last token).
    frontier = [(root, [], [], dist)]
    for _ in range(depth):
        children = []
        for fd, toks, lps, d in frontier:
            for token, lp in d.top_k(branch):
                children.append([lip.fork(fd), [*toks, token], [*lps, lp], None])
        nodes += len(children)
        for step in range(step_tokens):
            dists = await lip.gather(*(lip.predict(c[0], [c[1][-1]]) for c in children))
            for c, d in zip(children, dists):
                c[3] = d
                if step < step_tokens - 1:  # extend greedily; the last dist is where we branch next
                    token = d.argmax()
                    c[1].append(token)
                    c[2].append(d.logprob(token))
        children.sort(key=lambda c: sum(c[2]) / len(c[2]), reverse=True)
        for c in children[width:]:
            lip.close(c[0])
        for fd, *_ in frontier:
            if fd != root:
                lip.close(fd)
        frontier = [tuple(c) for c in children[:width]]
    best = frontier[0]
    lip.unlink(f"{lip.home}/tree-{lip.pid}")
    return {
        "text": lip.detokenize(best[1]),
        "tokens": best[1],
        "score": sum(best[2]) / len(best[2]),
        "nodes": nodes,
    }
