"""Constrained decoding: the output is always one of the given choices.

Arguments: prompt choice [choice ...]. The choices' tokenizations form a trie; at each step the
distribution is restricted (``allowed`` in ``get-next-dist``, a logit mask applied by the host)
to the tokens that continue some choice, and decoding stops when a choice is complete and no
longer one continues it. Returns the chosen text.
"""

from inferlet import Context, detokenize, tokenize

_END = -1


def _trie(choices):
    root = {}
    for c in choices:
        node = root
        for t in tokenize(c):
            node = node.setdefault(t, {})
        node[_END] = {}
    return root


def main(args):
    prompt, choices = args[0], args[1:] or ["yes", "no"]
    node = _trie(choices)
    ctx = Context()
    ctx.fill(prompt)
    out = []
    while True:
        allowed = [t for t in node if t != _END]
        if not allowed:
            break
        tok = ctx.next_dist(allowed=allowed).ids[0]
        out.append(tok)
        node = node[tok]
        ctx.fill_tokens([tok])
    ctx.release()
    return detokenize(out)
