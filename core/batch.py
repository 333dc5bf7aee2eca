"""The forward primitive's input and output: one :class:`ForwardEntry` per sequence in a batch.

Everything above ``core`` is built on ``Model.forward(pool, entries)``. An entry says:

* the new tokens (``token_ids`` or ready ``embeddings``) and their explicit ``positions``
  (they need not start at 0 or be contiguous: Prompt Cache and Symphony place tokens at
  positions a schema or a program chooses);
* ``write_slots``: the KV-pool slots (``page * page_size + offset``) their K/V is written to;
* ``context_pages`` and ``context_len``: the ordered pages this entry attends to and how many
  tokens of them are valid. By default the new tokens are the *last* ``len(tokens)`` tokens of
  that context and attention is causal in context order;
* ``mask``: an optional ``(num_new, context_len)`` boolean mask (True = may attend) that replaces
  the causal rule (block-diagonal prompt modules, tree attention, masked-out pages);
* what to return: logits at chosen new-token indices, final hidden states, the per-layer
  attention log-sum-exp, and an optional :class:`ExternalAttention` whose partial attention
  state is merged into every layer's attention (Petridish's split attention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch


class ExternalAttention(Protocol):
    """Attention over KV that lives outside this pool (e.g. in another process).

    The model calls :meth:`begin` with a layer's rotated queries as soon as they exist, then
    computes that layer's K/V projection and local attention, then calls :meth:`end` and merges
    the returned partial state exactly (log-sum-exp rule). Splitting begin/end lets an
    implementation overlap its communication with the model's compute.
    """

    def begin(self, layer: int, q: torch.Tensor) -> None:
        """``q``: (num_new, num_heads, head_dim) after RoPE and q-norm, before scaling."""

    def end(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (out, lse): (num_new, num_heads, head_dim) and (num_new, num_heads) fp32."""
        ...


@dataclass
class ForwardEntry:
    positions: torch.Tensor  # (n,) int64
    write_slots: torch.Tensor  # (n,) int64 slots in the KV pool
    context_pages: Sequence[int]
    context_len: int
    token_ids: torch.Tensor | None = None  # (n,) int64
    embeddings: torch.Tensor | None = None  # (n, hidden): the first layer's input, already scaled
    mask: torch.Tensor | None = None  # (n, context_len) bool, True = may attend
    logits_at: Sequence[int] | None = (-1,)  # indices into the new tokens; None = no logits
    return_hidden: bool = False
    return_lse: bool = False
    external_attention: ExternalAttention | None = None

    @property
    def num_new(self) -> int:
        return int(self.positions.shape[0])


@dataclass
class ForwardOutput:
    logits: torch.Tensor | None = None  # (len(logits_at), vocab) fp32
    hidden: torch.Tensor | None = None  # (n, hidden) after the final norm
    lse: torch.Tensor | None = None  # (num_layers, n, num_heads) fp32
    extras: dict = field(default_factory=dict)


class ForwardError(ValueError):
    """A forward entry is malformed (shapes, positions, slots)."""


class PositionOutOfRangeError(ForwardError):
    """A position is at or past the model's maximum context length."""
