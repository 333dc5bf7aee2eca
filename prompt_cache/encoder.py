"""Encoding modules into KV pages, once, at their schema positions.

Each block (a module's own tokens, see :mod:`prompt_cache.layout`) gets pages of its own, starting
at a page boundary, so a prompt can later point at exactly those pages. Two ways to encode:

* **independent** (the paper's default assumption): a block attends only to itself, causally.
  Blocks are independent, so many are batched into one forward as a ragged batch of entries.
* **root**: as independent, but every module also sees the schema root's own tokens before it
  (``<bos>``, the system prompt). The root is in every prompt, so this is still exact reuse; real
  models need it because their attention sinks on the first token of a sequence (a module encoded
  without ``<bos>`` makes its first token a second sink, which derails generation).
* **scaffolding** (the paper's option for modules that should see each other; the public
  prototype's issue #20 notes it was missing there): the blocks of one *scaffold path* (a
  consistent prompt: every plain module plus one member per union) are encoded in one forward,
  each token attending to every token of the path at a position up to its own. The tokens still
  land in their own blocks' pages: ``write_slots`` can point anywhere, and the context is the
  concatenation of the path's pages with a mask marking the filled slots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from core.batch import ForwardEntry
from core.kv_cache import KVPool
from prompt_cache.layout import Block

Allocate = Callable[[int], list[int]]


def encode_independent(model, pool: KVPool, blocks: Sequence[Block], allocate: Allocate,
                       max_batch_tokens: int = 4096, root: tuple[Block, list[int]] | None = None
                       ) -> dict[str, list[int]]:
    """Encode each block alone into fresh pages; returns block key -> pages.

    ``root``: the schema root's block and the pages holding its KV; every block then also attends
    to the root's tokens at positions before its own ("root" encoding).
    """
    out: dict[str, list[int]] = {}
    batch: list[ForwardEntry] = []
    batch_tokens = 0
    for block in blocks:
        if not len(block):
            continue
        if batch and batch_tokens + len(block) > max_batch_tokens:
            model.forward(pool, batch)
            batch, batch_tokens = [], 0
        pages = allocate(pool.pages_for(len(block)))
        out[block.key] = pages
        q_pos = torch.as_tensor(block.positions, dtype=torch.long)
        context, mask, base = pages, None, 0
        if root is not None and block.path != ():
            root_block, root_pages = root
            base = len(root_pages) * pool.page_size
            k_pos = torch.full((base,), -1, dtype=torch.long)
            k_pos[: len(root_block)] = torch.as_tensor(root_block.positions)
            sees_root = (k_pos >= 0).unsqueeze(0) & (k_pos.unsqueeze(0) < q_pos.unsqueeze(1))
            mask = torch.cat([sees_root, torch.tril(torch.ones(len(block), len(block), dtype=torch.bool))], 1)
            context = [*root_pages, *pages]
        batch.append(ForwardEntry(
            positions=q_pos,
            write_slots=pool.slots(pages, 0, len(block)),
            context_pages=context,
            context_len=base + len(block),
            token_ids=torch.as_tensor(block.token_ids, dtype=torch.long),
            mask=mask,
            logits_at=None,  # nothing to sample while caching: skip the LM head
        ))
        batch_tokens += len(block)
    if batch:
        model.forward(pool, batch)
    return out


def encode_scaffold(model, pool: KVPool, path: Sequence[Block], allocate: Allocate) -> dict[str, list[int]]:
    """Encode one scaffold path in one forward; each block's KV lands in its own fresh pages."""
    path = [b for b in path if len(b)]
    pages = {b.key: allocate(pool.pages_for(len(b))) for b in path}
    context: list[int] = []
    slot_pos: list[int] = []
    token_slots, token_ids, token_pos = [], [], []
    for b in path:
        base = len(context) * pool.page_size
        context += pages[b.key]
        slot_pos += b.positions + [-1] * (len(pages[b.key]) * pool.page_size - len(b))  # -1: empty slot
        token_slots += range(base, base + len(b))
        token_ids += b.token_ids
        token_pos += b.positions
    order = sorted(range(len(token_pos)), key=token_pos.__getitem__)
    q_pos = torch.as_tensor([token_pos[i] for i in order])
    k_pos = torch.as_tensor(slot_pos)
    mask = (k_pos >= 0).unsqueeze(0) & (k_pos.unsqueeze(0) <= q_pos.unsqueeze(1))  # causal by position
    model.forward(pool, [ForwardEntry(
        positions=q_pos,
        write_slots=pool.slots(context, 0, len(context) * pool.page_size)[[token_slots[i] for i in order]],
        context_pages=context,
        context_len=len(context) * pool.page_size,
        token_ids=torch.as_tensor([token_ids[i] for i in order]),
        mask=mask,
        logits_at=None,
    )])
    return pages
