"""The oracle: the whole prompt in one dense forward, with the paper's attention rule spelled out.

Built straight from a :class:`Selection`, not from the cache's page tables: every token of the
prompt (module tokens at their schema positions, arguments at their parameters' positions, the
prompt's text after) goes into a fresh pool, and the mask says who sees whom:

* a module token sees the tokens of its own module up to itself (block-diagonal), placeholders
  included, because that is how the module was encoded; with ``encoding="root"`` also the schema
  root's tokens before it;
* an argument sees what its module sees before it (not the placeholders it replaces) and the
  arguments of its module up to itself;
* the prompt's text sees every token except replaced placeholders, and earlier text.
"""

from __future__ import annotations

import torch

from core.batch import ForwardEntry
from prompt_cache.compose import block_tokens
from prompt_cache.layout import Selection


def reference_tokens(selection: Selection) -> list[dict]:
    toks = []
    for b, block in enumerate(selection.blocks):
        args = selection.args.get(block.key, {})
        if not block.cache:  # computed with every request, arguments already in place
            toks += [dict(pos=p, id=t, kind="module", block=b, hidden=False)
                     for p, t in block_tokens(block, args)]
            continue
        replaced = {i for name in args for i in range(block.params[name].index,
                                                     block.params[name].index + block.params[name].length)}
        toks += [dict(pos=p, id=t, kind="module", block=b, hidden=i in replaced)
                 for i, (p, t) in enumerate(zip(block.positions, block.token_ids))]
        for name, ids in args.items():
            toks += [dict(pos=block.params[name].start + j, id=t, kind="arg", block=b, hidden=False)
                     for j, t in enumerate(ids)]
    toks += [dict(pos=p, id=t, kind="text", block=-1, hidden=False)
             for p, t in zip(selection.text_positions, selection.text_ids)]
    return toks


def reference_mask(toks: list[dict], encoding: str = "independent") -> torch.Tensor:
    """(n, n) bool: row = query token, column = key token; the three rules of the module docstring."""
    kind = torch.as_tensor([("module", "arg", "text").index(t["kind"]) for t in toks])
    block = torch.as_tensor([t["block"] for t in toks])
    pos = torch.as_tensor([t["pos"] for t in toks])
    hidden = torch.as_tensor([t["hidden"] for t in toks])
    q_kind, k_kind = kind.unsqueeze(1), kind.unsqueeze(0)
    same_block = block.unsqueeze(1) == block.unsqueeze(0)
    if encoding == "root":  # block 0 is the root (it holds position 0); it is encoded alone
        same_block = same_block | ((block.unsqueeze(0) == 0) & (pos.unsqueeze(0) < pos.unsqueeze(1)))
    k_before = pos.unsqueeze(0) < pos.unsqueeze(1)
    k_upto = pos.unsqueeze(0) <= pos.unsqueeze(1)
    module_rule = (k_kind == 0) & same_block & k_upto
    arg_rule = same_block & (((k_kind == 0) & k_before & ~hidden.unsqueeze(0)) | ((k_kind == 1) & k_upto))
    text_rule = ~hidden.unsqueeze(0) & ((k_kind != 2) | k_upto)
    return torch.where(q_kind == 0, module_rule, torch.where(q_kind == 1, arg_rule, text_rule))


def reference_logits(model, toks: list[dict], at: int, encoding: str = "independent") -> torch.Tensor:
    """Logits of token ``at`` from one forward over all ``toks`` with the reference mask."""
    pool = model.new_kv_pool(num_pages=len(toks) // 4 + 2, page_size=4)
    pages = pool.allocate(pool.pages_for(len(toks)))
    entry = ForwardEntry(
        positions=torch.as_tensor([t["pos"] for t in toks]),
        write_slots=pool.slots(pages, 0, len(toks)),
        context_pages=pages,
        context_len=len(toks),
        token_ids=torch.as_tensor([t["id"] for t in toks]),
        mask=reference_mask(toks, encoding),
        logits_at=(at,),
    )
    return model.forward(pool, [entry])[0].logits[0]


def reference_greedy(model, selection: Selection, steps: int, encoding: str = "independent"
                     ) -> tuple[list[int], torch.Tensor]:
    """Greedy decoding by recomputing everything each step; returns (tokens, first logits)."""
    toks = reference_tokens(selection)
    last = max(range(len(toks)), key=lambda i: (toks[i]["kind"] == "text", toks[i]["pos"]))
    first = logits = reference_logits(model, toks, last, encoding)
    out = []
    for _ in range(steps):
        out.append(int(logits.argmax()))
        toks.append(dict(pos=max(t["pos"] for t in toks) + 1, id=out[-1], kind="text", block=-1, hidden=False))
        logits = reference_logits(model, toks, len(toks) - 1, encoding)
    return out, first
