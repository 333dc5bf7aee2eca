"""The prompt vault: one request's private KV inside a user process, and attention over it.

The vault prefills the request's buffer (public prefix, then the private prompt; with Prompt
Obfuscation, all virtual prompts in one masked buffer) into the user process's own KV pool, keeps
it, and then answers the service's per-layer queries with the partial attention over the private
tokens only. Each decoding *row* (one, or gamma virtual prompts) has a boolean row mask saying
which buffer tokens belong to it; public-prefix tokens are masked out because the service holds
their KV itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.attention import AttentionMetadata, allowed_mask, attention_reference, paged_attention
from core.batch import ForwardEntry
from core.kv_cache import KVPool
from core.sampling import SamplingParams, sample
from core.sequence import KVSequence
from petridish.messages import PartialAttention, PrefillReply, PromptRequest, QueryMessage


class PromptTooLongError(ValueError):
    """The private prompt does not fit the user process's KV pool or the model's context."""


@dataclass
class PrivateBuffer:
    """Token layout of everything the vault prefills in one forward pass.

    ``mask`` is (T, T) bool (None = causal). ``row_masks`` is (rows, T): which tokens each decoding
    row attends to as its *private* part. ``last_index[r]`` is the buffer index whose logits give
    row ``r``'s first token; decoding of row ``r`` continues at ``next_positions[r]``.
    """

    token_ids: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64
    mask: torch.Tensor | None
    row_masks: torch.Tensor  # (rows, T) bool
    last_index: list[int]
    next_positions: list[int]
    public_prefix_len: int


def plain_buffer(tokenizer, request: PromptRequest) -> PrivateBuffer:
    """Public prefix (if any) followed by the private prompt; one decoding row."""
    prefix = tokenizer.encode(request.public_prefix) if request.public_prefix else []
    private = tokenizer.encode(request.prompt, add_special_tokens=not prefix)
    if not private:
        raise PromptTooLongError("the private prompt is empty after tokenization")
    ids = prefix + private
    row = torch.zeros(1, len(ids), dtype=torch.bool)
    row[0, len(prefix) :] = True
    return PrivateBuffer(
        token_ids=torch.tensor(ids, dtype=torch.long),
        positions=torch.arange(len(ids)),
        mask=None,
        row_masks=row,
        last_index=[len(ids) - 1],
        next_positions=[len(ids)],
        public_prefix_len=len(prefix),
    )


class PromptVault:
    """Private KV of one request, held in the user process's pool, and attention over it."""

    def __init__(self, model, pool: KVPool, seq: KVSequence, buffer: PrivateBuffer, dense: bool | None = None):
        self.model, self.pool, self.seq, self.buffer = model, pool, seq, buffer
        self.num_rows = int(buffer.row_masks.shape[0])
        # Per-row masks as the attention metadata wants them: (1, T) each.
        self._masks = [buffer.row_masks[r : r + 1] for r in range(self.num_rows)]
        # The private KV never changes while decoding. On the CPU, gather each layer's K/V into
        # contiguous tensors once (and free the pages) rather than paging through them at every
        # layer of every step; on a GPU the paged kernels read the pages directly.
        self._dense: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if dense if dense is not None else pool.k_cache[0].device.type == "cpu":
            self._dense = [pool.gather(layer, seq.pages, seq.length) for layer in range(model.config.num_layers)]
            idx = torch.as_tensor(seq.pages, dtype=torch.long)
            self._k_pos = pool.positions.index_select(0, idx).flatten()[: seq.length].clone()
            seq.release()

    @classmethod
    def prefill(
        cls, model, pool: KVPool, buffer: PrivateBuffer, request_id: int, sampling: SamplingParams,
        dense: bool | None = None,
    ) -> tuple[PromptVault, PrefillReply]:
        """Run the buffer's prefill, sample each row's first token, keep the KV."""
        n = int(buffer.token_ids.shape[0])
        if n > model.config.max_position_embeddings or pool.pages_for(n) > pool.allocator.num_free:
            raise PromptTooLongError(
                f"request {request_id}: {n} prompt tokens do not fit (model limit "
                f"{model.config.max_position_embeddings}, {pool.allocator.num_free} free pages of {pool.page_size})"
            )
        seq = KVSequence(pool)
        entry: ForwardEntry = seq.entry(
            positions=buffer.positions, token_ids=buffer.token_ids, mask=buffer.mask, logits_at=buffer.last_index
        )
        (out,) = model.forward(pool, [entry])
        gen = sampling.make_generator()
        first = [sample(row, sampling, gen) for row in out.logits]
        reply = PrefillReply(request_id, tuple(first), tuple(buffer.next_positions), buffer.public_prefix_len)
        return cls(model, pool, seq, buffer, dense), reply

    def attend(self, msg: QueryMessage) -> PartialAttention:
        """Partial attention of the service's queries (one per row) over this row's private KV."""
        n = int(msg.q.shape[0])
        if n != self.num_rows:
            raise ValueError(f"layer {msg.layer}: {n} queries for a vault of {self.num_rows} rows")
        c, layer = self.model.config, msg.layer
        if self._dense is not None:
            k, v = self._dense[layer]
            allowed = allowed_mask(
                n, k.shape[0], self.buffer.row_masks, msg.positions, self._k_pos, c.sliding_windows[layer]
            )
            out, lse = attention_reference(msg.q.to(self.model.dtype), k, v, allowed, c.attention_scale)
            return PartialAttention(msg.step, layer, out.float(), lse.float())
        length = self.seq.length
        meta = AttentionMetadata(
            query_start=list(range(n + 1)),
            block_tables=[self.seq.pages] * n,
            context_lens=[length] * n,
            masks=self._masks,
            query_positions=msg.positions.to(torch.long),
            slot_mapping=torch.empty(0, dtype=torch.long),
        )
        out, lse = paged_attention(
            msg.q.to(self.model.dtype),
            self.pool.k_cache[layer],
            self.pool.v_cache[layer],
            self.pool.positions,
            meta,
            c.attention_scale,
            c.sliding_windows[layer],
            backend=self.model.attention_backend,
        )
        return PartialAttention(msg.step, layer, out.float(), lse.float())

    def release(self) -> None:
        self.seq.release()
        self._dense = None
