"""The forward primitive shared by every model family.

``PagedCausalLM.forward(pool, entries)`` flattens a ragged batch of :class:`ForwardEntry` into one
(T, hidden) tensor, runs the family's decoder layers, and returns per-entry outputs. The layers
see the batch through :class:`ForwardContext`, which owns the paging: writing new K/V into slots,
paged attention (torch or Triton), and merging external attention states (Petridish).

Path from ``Engine.generate`` to the kernel: engine -> ``PagedCausalLM.forward`` -> family
decoder layer -> ``ForwardContext.attend`` -> ``core.attention.paged_attention``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.attention import AttentionMetadata, merge_attention_states, paged_attention, write_kv
from core.batch import ForwardEntry, ForwardError, ForwardOutput, PositionOutOfRangeError
from core.config import ModelConfig
from core.kv_cache import InvalidPageError, KVCacheSpec, KVPool
from core.models.layers import rope_cos_sin, rope_inv_freq


class ForwardContext:
    """What every layer needs to know about the batch in flight."""

    def __init__(self, model: PagedCausalLM, pool: KVPool, entries: Sequence[ForwardEntry]):
        self.model, self.pool, self.entries = model, pool, entries
        starts = [0]
        for e in entries:
            starts.append(starts[-1] + e.num_new)
        device = pool.k_cache[0].device
        self.meta = AttentionMetadata(
            query_start=starts,
            block_tables=[list(e.context_pages) for e in entries],
            context_lens=[e.context_len for e in entries],
            masks=[None if e.mask is None else e.mask.to(device) for e in entries],
            query_positions=torch.cat([e.positions for e in entries]).to(device),
            slot_mapping=torch.cat([e.write_slots for e in entries]).to(device),
        )
        self.need_lse = any(e.return_lse or e.external_attention is not None for e in entries)
        self.collect_lse = any(e.return_lse for e in entries)
        self.lse_by_layer: list[torch.Tensor] = []
        self._rope: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def rope(self, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
        if theta not in self._rope:
            inv_freq = self.model.inv_freq(theta)
            self._rope[theta] = rope_cos_sin(self.meta.query_positions, inv_freq, self.model.dtype)
        return self._rope[theta]

    def begin_external(self, layer: int, q: torch.Tensor) -> None:
        """Hand each entry's rotated queries to its external attention before K/V exist."""
        for b, e in enumerate(self.entries):
            if e.external_attention is not None:
                s, t = self.meta.query_start[b], self.meta.query_start[b + 1]
                e.external_attention.begin(layer, q[s:t])

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None
    ) -> torch.Tensor:
        """Write k/v into the pool, attend over the paged contexts, merge external parts."""
        k_cache, v_cache = self.pool.k_cache[layer], self.pool.v_cache[layer]
        write_kv(k_cache, v_cache, k, v, self.meta.slot_mapping)
        backend = self.model.attention_backend
        out, lse = paged_attention(
            q, k_cache, v_cache, self.pool.positions, self.meta, self.model.config.attention_scale,
            window, backend=backend, need_lse=self.need_lse,
        )
        for b, e in enumerate(self.entries):
            if e.external_attention is not None:
                s, t = self.meta.query_start[b], self.meta.query_start[b + 1]
                ext_out, ext_lse = e.external_attention.end(layer)
                out[s:t], lse[s:t] = merge_attention_states(
                    [out[s:t], ext_out.to(out.dtype)], [lse[s:t], ext_lse], backend=backend
                )
        if self.collect_lse:
            self.lse_by_layer.append(lse)
        return out


class PagedCausalLM(nn.Module):
    """Base of the model families: embeddings, decoder layers, final norm, LM head."""

    config: ModelConfig
    embed_tokens: nn.Embedding
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Linear | None

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.attention_backend = "auto"
        self._inv_freq: dict[float, torch.Tensor] = {}

    # -- family hooks -----------------------------------------------------------------------
    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (n,) -> the first layer's input (n, hidden)."""
        return self.embed_tokens(token_ids)

    # -- shared -----------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def inv_freq(self, theta: float) -> torch.Tensor:
        if theta not in self._inv_freq:
            self._inv_freq[theta] = rope_inv_freq(self.config.head_dim, theta, self.rope_scaling_for(theta))
        return self._inv_freq[theta]

    def rope_scaling_for(self, theta: float) -> dict | None:
        return self.config.rope_scaling

    def lm_head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def _lm_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for the rows of ``x``.

        On the CPU, a (vocab, hidden) weight makes ``x @ W.T`` a transposed GEMM that runs about 1.8x
        slower than the same product on a contiguous (hidden, vocab) copy when a few rows are asked
        for (decode at batch 8: 52 vs 93 ms on Gemma's 262k-row head, the largest cost of a step). So
        we keep that copy, rebuilt whenever the weight is replaced or written in place. It costs one
        more head's worth of memory; GPUs and training use the weight directly.
        """
        w = self.lm_head_weight()
        if w.device.type != "cpu" or x.shape[0] == 1 or (torch.is_grad_enabled() and w.requires_grad):
            return torch.nn.functional.linear(x, w)
        key = (w.data_ptr(), w._version, w.dtype)
        if getattr(self, "_lm_head_t_key", None) != key:
            self._lm_head_t = w.detach().t().contiguous()
            self._lm_head_t_key = key
        return x @ self._lm_head_t

    def kv_cache_spec(self, num_pages: int, page_size: int) -> KVCacheSpec:
        c = self.config
        return KVCacheSpec(c.num_layers, num_pages, page_size, c.num_kv_heads, c.head_dim, self.dtype, str(self.device))

    def new_kv_pool(self, num_pages: int, page_size: int = 16) -> KVPool:
        return KVPool(self.kv_cache_spec(num_pages, page_size))

    @torch.inference_mode()
    def forward(self, pool: KVPool, entries: Sequence[ForwardEntry]) -> list[ForwardOutput]:
        """Run one forward pass over a ragged batch; see :mod:`core.batch` for the contract."""
        return self.forward_with_grad(pool, entries)

    def forward_with_grad(self, pool: KVPool, entries: Sequence[ForwardEntry]) -> list[ForwardOutput]:
        """The same forward pass outside inference mode, so autograd can train through it (LoRA)."""
        if not entries:
            return []
        for i, e in enumerate(entries):
            self._validate(pool, i, e)
        ctx = ForwardContext(self, pool, entries)
        pool.positions.view(-1).index_copy_(0, ctx.meta.slot_mapping, ctx.meta.query_positions)
        hidden = torch.cat([self._entry_input(e) for e in entries]).to(self.dtype)
        for layer in self.layers:
            hidden = layer(hidden, ctx)
        return self._outputs(hidden, ctx)

    def _entry_input(self, e: ForwardEntry) -> torch.Tensor:
        if e.embeddings is not None:
            return e.embeddings.to(self.device)
        return self.embed(e.token_ids.to(self.device))

    def _outputs(self, hidden: torch.Tensor, ctx: ForwardContext) -> list[ForwardOutput]:
        entries, starts = ctx.entries, ctx.meta.query_start
        rows = [starts[b] + (i % e.num_new) for b, e in enumerate(entries) for i in (e.logits_at or ())]
        logits = None
        if rows:
            picked = self.norm(hidden.index_select(0, torch.as_tensor(rows, device=hidden.device)))
            logits = self._lm_head(picked).float()
        normed = self.norm(hidden) if any(e.return_hidden for e in entries) else None
        lse = torch.stack(ctx.lse_by_layer) if ctx.collect_lse else None
        outputs, r = [], 0
        for b, e in enumerate(entries):
            s, t, n_logits = starts[b], starts[b + 1], len(e.logits_at or ())
            outputs.append(
                ForwardOutput(
                    logits=logits[r : r + n_logits] if n_logits else None,
                    hidden=normed[s:t] if e.return_hidden else None,
                    lse=lse[:, s:t] if e.return_lse else None,
                )
            )
            r += n_logits
        return outputs

    def _validate(self, pool: KVPool, i: int, e: ForwardEntry) -> None:
        n = e.num_new
        where = f"forward entry {i}"
        if (e.token_ids is None) == (e.embeddings is None):
            raise ForwardError(f"{where}: give exactly one of token_ids and embeddings")
        if e.token_ids is not None and e.token_ids.shape != (n,):
            raise ForwardError(f"{where}: token_ids shape {tuple(e.token_ids.shape)} != positions ({n},)")
        if e.token_ids is not None and n and (int(e.token_ids.min()) < 0 or int(e.token_ids.max()) >= self.config.vocab_size):
            raise ForwardError(f"{where}: token id out of range [0, {self.config.vocab_size})")
        if e.embeddings is not None and e.embeddings.shape != (n, self.config.hidden_size):
            raise ForwardError(f"{where}: embeddings shape {tuple(e.embeddings.shape)} != ({n}, {self.config.hidden_size})")
        if e.write_slots.shape != (n,):
            raise ForwardError(f"{where}: write_slots shape {tuple(e.write_slots.shape)} != ({n},)")
        if n and int(e.positions.max()) >= self.config.max_position_embeddings:
            raise PositionOutOfRangeError(
                f"{where}: position {int(e.positions.max())} is past the model's limit of "
                f"{self.config.max_position_embeddings} positions"
            )
        if n and int(e.positions.min()) < 0:
            raise PositionOutOfRangeError(f"{where}: negative position {int(e.positions.min())}")
        pool.check_pages(e.context_pages)
        if e.context_len > len(e.context_pages) * pool.page_size or e.context_len < 0:
            raise ForwardError(
                f"{where}: context_len {e.context_len} does not fit {len(e.context_pages)} pages of {pool.page_size}"
            )
        if e.mask is None and e.context_len < n:
            raise ForwardError(f"{where}: causal context of {e.context_len} tokens is shorter than {n} new tokens")
        if e.mask is not None and tuple(e.mask.shape) != (n, e.context_len):
            raise ForwardError(f"{where}: mask shape {tuple(e.mask.shape)} != ({n}, {e.context_len})")
        if n:
            total = pool.num_pages * pool.page_size
            lo, hi = int(e.write_slots.min()), int(e.write_slots.max())
            if lo < 0 or hi >= total:
                raise InvalidPageError(f"{where}: write slot {hi if hi >= total else lo} outside the pool [0, {total})")
            pool.check_pages(sorted({s // pool.page_size for s in e.write_slots.tolist()}))
