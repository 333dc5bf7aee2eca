"""The data that crosses the boundary between the service and a user process, as explicit types.

Two kinds of traffic, with different costs and therefore different transports:

* **Per layer, per decode step** (hot path, thousands per second): :class:`QueryMessage` from the
  service to a user process (the layer's rotated queries and their positions) and
  :class:`PartialAttention` back (per query and head: the normalised output over the private KV
  and its log-sum-exp). These travel through shared memory (:mod:`petridish.channel`); the types
  here say exactly which fields cross, and the leak test records every one the service receives.
* **Once per request** (control): :class:`PromptRequest` (controller -> user process; the private
  prompt, never seen by the service), :class:`PrefillReply` (user process -> service; only what
  the service needs to continue decoding: the first sampled tokens and the next positions) and
  :class:`UserFailure`. These are small and rare, so they are pickled over a pipe.

Everything a :class:`PrefillReply` carries is public by construction in SPD: the first token is
output the user receives anyway, and the next position (the private prompt's length) is visible to
the service through the positions it must apply RoPE at. The package docstring lists this leak.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.sampling import SamplingParams


@dataclass(frozen=True)
class QueryMessage:
    """Service -> user: one layer's queries for this user's decoding rows (n = 1, or gamma with PO)."""

    step: int
    layer: int
    positions: torch.Tensor  # (n,) int64: position of each query token
    q: torch.Tensor  # (n, num_heads, head_dim): after RoPE (and q-norm), before the softmax scale


@dataclass(frozen=True)
class PartialAttention:
    """User -> service: attention of those queries over the private KV only."""

    step: int
    layer: int
    out: torch.Tensor  # (n, num_heads, head_dim) fp32, normalised over the private part
    lse: torch.Tensor  # (n, num_heads) fp32, natural log-sum-exp of the scaled private scores


@dataclass(frozen=True)
class PromptRequest:
    """Controller -> user process: the private prompt. The service never holds one of these.

    ``public_prefix`` (optional) is text the provider may see (a system prompt): the user process
    prefills it together with the private part, but answers only for the private part; the
    service prefills its own copy of the prefix. ``obfuscation`` enables Prompt Obfuscation.
    """

    request_id: int
    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    public_prefix: str = ""
    obfuscation: object | None = None  # petridish.obfuscation.ObfuscationConfig


@dataclass(frozen=True)
class PrefillReply:
    """User process -> service: what decoding needs and nothing more.

    One row per virtual prompt (a single row without Prompt Obfuscation). ``first_token_ids`` are
    output tokens; ``next_positions`` is where each row's decoding continues; ``public_prefix_len``
    says how many leading positions the service's own public-prefix KV covers.
    """

    request_id: int
    first_token_ids: tuple[int, ...]
    next_positions: tuple[int, ...]
    public_prefix_len: int = 0

    @property
    def num_rows(self) -> int:
        return len(self.first_token_ids)


@dataclass(frozen=True)
class UserFailure:
    """User process -> controller/service: the request failed inside the user process."""

    request_id: int
    message: str


@dataclass(frozen=True)
class Shutdown:
    """Controller -> user process: release the private KV and exit."""
