"""Choosing the next token from a top-k distribution (greedy, or temperature + top-p)."""

import random


def sample(dist, rng: random.Random | None = None, top_p: float = 1.0) -> int:
    """The argmax when ``rng`` is None; else a draw from the (top-p truncated) top-k probabilities."""
    if rng is None or len(dist.ids) == 1:
        return dist.ids[0]
    ids, probs, total = [], [], 0.0
    for i, p in zip(dist.ids, dist.probs):  # ids come sorted by probability
        ids.append(i)
        probs.append(p)
        total += p
        if total >= top_p:
            break
    return rng.choices(ids, weights=probs, k=1)[0]
