"""A sequence's KV laid out over pages: the bookkeeping every layer above the engine needs.

``KVSequence`` owns a page list and a token count. ``entry()`` builds the forward entry that
appends new tokens to it (allocating pages, copying a shared last page before writing into it),
``fork()`` shares its pages copy-on-write, ``truncate()`` and ``release()`` give pages back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.batch import ForwardEntry
from core.kv_cache import KVPool


class KVSequence:
    def __init__(self, pool: KVPool, pages: list[int] | None = None, length: int = 0):
        self.pool = pool
        self.pages: list[int] = list(pages or [])
        self.length = length
        self._released = False

    @property
    def capacity(self) -> int:
        return len(self.pages) * self.pool.page_size

    @property
    def positions(self) -> torch.Tensor:
        """Position ids of the tokens held, in order (as recorded by the pool)."""
        if not self.pages:
            return torch.empty(0, dtype=torch.long)
        idx = torch.as_tensor(self.pages, dtype=torch.long, device=self.pool.positions.device)
        return self.pool.positions.index_select(0, idx).flatten()[: self.length].cpu()

    def next_position(self) -> int:
        """One past the largest position held (0 when empty): where plain decoding continues."""
        return int(self.positions.max()) + 1 if self.length else 0

    def reserve(self, n: int) -> torch.Tensor:
        """Make room for ``n`` more tokens and return their slots. Raises OutOfPagesError cleanly."""
        need = self.pool.pages_for(self.length + n) - len(self.pages)
        new_pages = self.pool.allocate(need) if need > 0 else []
        if n and self.length % self.pool.page_size and self.pool.allocator.is_shared(self.pages[-1]):
            try:
                self.pool.copy_on_write(self.pages, len(self.pages) - 1, self.length % self.pool.page_size)
            except Exception:
                self.pool.release(new_pages)
                raise
        self.pages.extend(new_pages)
        slots = self.pool.slots(self.pages, self.length, n)
        self.length += n
        return slots

    def entry(
        self,
        positions: Sequence[int] | torch.Tensor | None = None,
        token_ids: Sequence[int] | torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        **kwargs,
    ) -> ForwardEntry:
        """The forward entry that appends tokens to this sequence (default positions continue it)."""
        n = len(token_ids) if token_ids is not None else int(embeddings.shape[0])
        if positions is None:
            start = self.next_position()
            positions = torch.arange(start, start + n)
        slots = self.reserve(n)
        ids = None if token_ids is None else torch.as_tensor(token_ids, dtype=torch.long)
        return ForwardEntry(
            positions=torch.as_tensor(positions, dtype=torch.long),
            write_slots=slots,
            context_pages=list(self.pages),
            context_len=self.length,
            token_ids=ids,
            embeddings=embeddings,
            **kwargs,
        )

    def fork(self) -> KVSequence:
        """A new sequence sharing every page (copy-on-write on the next append)."""
        return KVSequence(self.pool, self.pool.share(self.pages), self.length)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a sequence of {self.length} tokens to {length}")
        keep = self.pool.pages_for(length)
        self.pool.release(self.pages[keep:])
        del self.pages[keep:]
        self.length = length

    def release(self) -> None:
        if not self._released:
            self.pool.release(self.pages)
            self.pages, self.length, self._released = [], 0, True
