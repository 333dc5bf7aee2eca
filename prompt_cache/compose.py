"""Serving a prompt from cached modules: compose page tables, then prefill only what is new.

The request's context is the concatenation of its imported modules' pages, in position order,
followed by private pages for everything computed now::

    context pages:  [root p0 p1][module A p2][module B p3 p4] | [private p5 ...]
    slots:           ####...... ###......... ########.....     args, text, decode

**What is copied, and why.** Nothing, for a device-resident store: the module pages are shared
(``KVPool.share``) and attention reads them in place. A module rarely fills its last page; rather
than copy tails together (which would change page contents per prompt and break sharing), the
empty slots stay in the page table and a per-token attention mask (``ForwardEntry.mask``) hides
them. For the same reason the private pages start on a fresh page, so the request never writes
into a shared page (which would force ``KVSequence`` to copy it). A host-resident store copies each
module into fresh pages once per request (see :mod:`prompt_cache.store`).

The new tokens, in this order, each with the attention the paper gives it:

* tokens of imported modules marked ``cache="false"``, and parameter arguments: they belong to a
  module and attend like it (``independent`` encoding: only to that module's tokens before them;
  ``root``: also to the schema root's tokens before them; ``scaffold``: to every imported token
  before them, see :mod:`prompt_cache.encoder`). An argument takes its parameter's
  first positions; the placeholder slots it replaces are hidden from every later token;
* the prompt's own text after the modules, at positions from the schema's length on: it attends to
  everything visible, causally;
* if the prompt has no text, the last cached token is recomputed as a new token (its cached slot
  hidden) because sampling needs its logits, which the cache does not keep.

Decoding then continues at one past the largest position, attending to every visible slot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.batch import ForwardEntry
from core.kv_cache import KVPool
from core.sequence import KVSequence
from prompt_cache.layout import Block, Selection


@dataclass
class ComposedPrompt:
    """A request ready to prefill: its sequence (shared + private pages) and the new tokens."""

    seq: KVSequence
    visible: torch.Tensor  # (context_len,) bool: slots the prompt text and decoding may attend to
    token_ids: list[int]
    positions: list[int]
    mask: torch.Tensor  # (num_new, context_len + num_new) bool
    logits_index: int  # which new token's logits start decoding
    num_cached_tokens: int

    @property
    def next_position(self) -> int:
        return max(self.positions) + 1

    def prefill_entry(self) -> ForwardEntry:
        return self.seq.entry(positions=self.positions, token_ids=self.token_ids, mask=self.mask,
                              logits_at=(self.logits_index,))

    def decode_entry(self, token: int, position: int) -> ForwardEntry:
        """Append one decoded token; it attends to every visible slot and to itself."""
        self.visible = torch.cat([self.visible, torch.ones(1, dtype=torch.bool)])
        return self.seq.entry(positions=[position], token_ids=[token], mask=self.visible.unsqueeze(0))


def compose(pool: KVPool, selection: Selection, checkout: Callable[[Block], list[int]],
            encoding: str = "independent") -> ComposedPrompt:
    """Point the request at its modules' pages and lay out the new tokens with their masks."""
    ps = pool.page_size
    pages: list[int] = []
    slot_pos: list[int] = []
    slot_owner: list[int] = []  # index into selection.blocks; -1 = empty slot
    hidden: set[int] = set()  # context slots no later token may see
    owned: list[tuple[int, int, int]] = []  # (position, token, owner block index) computed now
    try:
        for i, block in enumerate(selection.blocks):
            if not len(block):  # an empty module (e.g. a union's blank default member) holds no KV
                continue
            if not block.cache:
                owned += [(p, t, i) for p, t in block_tokens(block, selection.args.get(block.key, {}))]
                continue
            base = len(pages) * ps
            block_pages = checkout(block)
            pages += block_pages
            filled = len(block_pages) * ps
            slot_pos += block.positions + [-1] * (filled - len(block))
            slot_owner += [i] * len(block) + [-1] * (filled - len(block))
            for name, ids in selection.args.get(block.key, {}).items():
                slot = block.params[name]
                hidden.update(range(base + slot.index, base + slot.index + slot.length))
                owned += [(slot.start + j, t, i) for j, t in enumerate(ids)]
    except BaseException:
        pool.release(pages)
        raise
    owned.sort()
    text = list(zip(selection.text_positions, selection.text_ids))
    k_pos = torch.as_tensor(slot_pos, dtype=torch.long)
    k_owner = torch.as_tensor(slot_owner, dtype=torch.long)
    visible = k_owner >= 0
    if hidden:
        visible[list(hidden)] = False
    recomputed = None
    if not text:
        owned, visible, recomputed = _recompute_last(owned, visible, k_pos, k_owner, selection)
    seq = KVSequence(pool, pages, len(pages) * ps)  # page-aligned: new tokens start on a private page
    root = next(i for i, b in enumerate(selection.blocks) if b.path == ())
    mask = _mask(owned, len(text), visible, k_pos, k_owner, encoding, root)
    if recomputed is not None:  # it must see exactly what it saw when cached: its module, placeholders too
        row = owned.index(recomputed)
        before = k_pos < recomputed[0]
        mask[row] = False
        mask[row, : k_pos.shape[0]] = before & _sees(k_owner, torch.tensor([recomputed[2]]), encoding, root)[0]
        mask[row, k_pos.shape[0] + row] = True
    new = owned + [(p, t, -1) for p, t in text]
    logits_index = len(new) - 1 if text else max(range(len(new)), key=lambda j: new[j][0])
    return ComposedPrompt(
        seq=seq,
        visible=torch.cat([visible, torch.ones(len(new), dtype=torch.bool)]),
        token_ids=[t for _, t, _ in new],
        positions=[p for p, _, _ in new],
        mask=mask,
        logits_index=logits_index,
        num_cached_tokens=int(visible.sum()),
    )


def block_tokens(block: Block, args: dict[str, list[int]]) -> list[tuple[int, int]]:
    """(position, token) of a block with arguments in place of their placeholders, in position order."""
    replaced: set[int] = set()
    out: list[tuple[int, int]] = []
    for name, ids in args.items():
        slot = block.params[name]
        replaced.update(range(slot.index, slot.index + slot.length))
        out += [(slot.start + j, t) for j, t in enumerate(ids)]
    out += [(p, t) for i, (p, t) in enumerate(zip(block.positions, block.token_ids)) if i not in replaced]
    return sorted(out)


def _recompute_last(owned, visible, k_pos, k_owner, selection: Selection):
    """No text after the modules: make the prompt's last token a new token so it yields logits."""
    last_cached = int(torch.where(visible, k_pos, -1).max()) if visible.any() else -1
    if owned and max(p for p, _, _ in owned) > last_cached:
        return owned, visible, None
    slot = int(torch.nonzero(visible & (k_pos == last_cached))[0])
    owner = int(k_owner[slot])
    block = selection.blocks[owner]
    recomputed = (last_cached, block.token_ids[block.positions.index(last_cached)], owner)
    visible = visible.clone()
    visible[slot] = False
    return sorted([*owned, recomputed]), visible, recomputed


def _sees(k_owner: torch.Tensor, q_owner: torch.Tensor, encoding: str, root: int) -> torch.Tensor:
    """(n_q, L) which modules' slots a module's token may see, by the encoding it was cached with."""
    if encoding == "scaffold":
        return (k_owner >= 0).unsqueeze(0).expand(q_owner.shape[0], -1)
    same = k_owner.unsqueeze(0) == q_owner.unsqueeze(1)
    return same | (k_owner == root).unsqueeze(0) if encoding == "root" else same


def _mask(owned, num_text: int, visible, k_pos, k_owner, encoding: str, root: int) -> torch.Tensor:
    """(num_new, context_len + num_new) attention mask of the new tokens."""
    n_owned = len(owned)
    n = n_owned + num_text
    ctx = torch.zeros(n, k_pos.shape[0], dtype=torch.bool)
    new = torch.tril(torch.ones(n, n, dtype=torch.bool))  # text: causal over all new tokens
    if n_owned:
        q_pos = torch.as_tensor([p for p, _, _ in owned])
        q_owner = torch.as_tensor([o for _, _, o in owned])
        before = k_pos.unsqueeze(0) < q_pos.unsqueeze(1)
        ctx[:n_owned] = visible.unsqueeze(0) & before & _sees(k_owner, q_owner, encoding, root)
        # Among new tokens, a module's token sees its own module's new tokens up to its position.
        peer = q_pos.unsqueeze(0) <= q_pos.unsqueeze(1)
        if encoding != "scaffold":
            peer &= q_owner.unsqueeze(0) == q_owner.unsqueeze(1)
        new[:n_owned, :n_owned] = peer
    ctx[n_owned:] = visible.unsqueeze(0)
    return torch.cat([ctx, new], dim=1)
