"""The paged KV cache: one pool of fixed-size pages and an allocator with reference counts.

Layout (the one vLLM and FlashInfer use), per layer:

    k_cache[layer], v_cache[layer]: (num_pages, page_size, num_kv_heads, head_dim)

A *slot* is ``page * page_size + offset``; ``slot_mapping`` tells the forward pass where each
new token's K/V goes. Beside K/V, the pool records the position id of the token held in each slot
(``positions``), so attention can apply a sliding window by position even when a sequence's
positions are not 0..n-1 (Prompt Cache, Symphony).

Pages are shared by reference counting (prefix reuse, forks, prompt modules). A writer that does
not own a page alone copies it first (:meth:`KVPool.copy_on_write`). Running out of pages
raises :class:`OutOfPagesError`, which the caller can catch to wait, evict or preempt; the failed
allocation takes nothing, so other requests are untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch


class KVCacheError(RuntimeError):
    """Base class for errors about KV pages."""


class OutOfPagesError(KVCacheError):
    """The pool has fewer free pages than a request needs. Nothing was allocated."""

    def __init__(self, requested: int, free: int, total: int):
        super().__init__(
            f"out of KV pages: requested {requested}, {free} free of {total} "
            f"(free pages by finishing or evicting requests, or raise engine.num_pages)"
        )
        self.requested, self.free, self.total = requested, free, total


class InvalidPageError(KVCacheError):
    """A page id that is out of range, or not allocated, was used."""


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_pages: int
    page_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    @property
    def bytes_per_token(self) -> int:
        elem = torch.finfo(self.dtype).bits // 8
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem


class PageAllocator:
    """Hands out page ids and counts references to them.

    Deliberately small (like nano-vllm's block manager): allocate, share, release, and a
    copy-on-write check. It does not know which sequence owns what; callers keep page lists.
    """

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self._free: list[int] = list(range(num_pages - 1, -1, -1))  # pop() gives low ids first
        self._refcount = [0] * num_pages

    @property
    def num_free(self) -> int:
        return len(self._free)

    def refcount(self, page: int) -> int:
        self._check(page, allocated=False)
        return self._refcount[page]

    def allocate(self, n: int) -> list[int]:
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            raise OutOfPagesError(n, len(self._free), self.num_pages)
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._refcount[p] = 1
        return pages

    def share(self, pages: Iterable[int]) -> list[int]:
        """Take one more reference on each page (a fork or a cached prefix) and return them."""
        pages = list(pages)
        for p in pages:
            self._check(p)
        for p in pages:
            self._refcount[p] += 1
        return pages

    def release(self, pages: Iterable[int]) -> None:
        """Drop one reference on each page; a page with none left returns to the free list."""
        pages = list(pages)
        for p in pages:
            self._check(p)
        for p in pages:
            self._refcount[p] -= 1
            if self._refcount[p] == 0:
                self._free.append(p)

    def is_shared(self, page: int) -> bool:
        self._check(page)
        return self._refcount[page] > 1

    def _check(self, page: int, allocated: bool = True) -> None:
        if not isinstance(page, int) or not 0 <= page < self.num_pages:
            raise InvalidPageError(f"page id {page!r} is out of range [0, {self.num_pages})")
        if allocated and self._refcount[page] == 0:
            raise InvalidPageError(f"page {page} is not allocated")


class KVPool:
    """The K/V tensors of every layer plus the allocator for their pages."""

    def __init__(self, spec: KVCacheSpec):
        self.spec = spec
        shape = (spec.num_pages, spec.page_size, spec.num_kv_heads, spec.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]
        self.v_cache = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]
        # Position id of the token held in each slot; -1 for a slot never written.
        self.positions = torch.full((spec.num_pages, spec.page_size), -1, dtype=torch.long, device=spec.device)
        self.allocator = PageAllocator(spec.num_pages)

    @property
    def page_size(self) -> int:
        return self.spec.page_size

    @property
    def num_pages(self) -> int:
        return self.spec.num_pages

    # -- allocation -------------------------------------------------------------------------
    def allocate(self, n: int) -> list[int]:
        return self.allocator.allocate(n)

    def release(self, pages: Iterable[int]) -> None:
        self.allocator.release(pages)

    def share(self, pages: Iterable[int]) -> list[int]:
        return self.allocator.share(pages)

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def copy_on_write(self, pages: list[int], index: int, num_valid: int | None = None) -> int:
        """Make ``pages[index]`` private before a write: if shared, copy it into a new page.

        Replaces the entry in ``pages`` in place and returns the page to write. ``num_valid``
        limits the copy to the first slots that hold data.
        """
        page = pages[index]
        if not self.allocator.is_shared(page):
            return page
        (new,) = self.allocate(1)
        self.copy_page(page, new, num_valid)
        self.allocator.release([page])
        pages[index] = new
        return new

    def copy_page(self, src: int, dst: int, num_valid: int | None = None) -> None:
        self.check_pages([src, dst])
        n = self.page_size if num_valid is None else num_valid
        for k, v in zip(self.k_cache, self.v_cache):
            k[dst, :n] = k[src, :n]
            v[dst, :n] = v[src, :n]
        self.positions[dst, :n] = self.positions[src, :n]

    # -- addressing --------------------------------------------------------------------------
    def check_pages(self, pages: Sequence[int]) -> None:
        """Raise :class:`InvalidPageError` unless every page is in range and allocated."""
        for p in pages:
            self.allocator._check(int(p))

    def slots(self, pages: Sequence[int], start: int, count: int) -> torch.Tensor:
        """Slot ids of tokens ``start .. start+count`` of a sequence laid out over ``pages``."""
        idx = torch.arange(start, start + count)
        need = -(-(start + count) // self.page_size) if count else 0
        if need > len(pages):
            raise InvalidPageError(
                f"tokens up to {start + count} need {need} pages but the sequence has {len(pages)}"
            )
        page_ids = torch.as_tensor(list(pages), dtype=torch.long)[idx // self.page_size]
        return page_ids * self.page_size + idx % self.page_size

    def gather(self, layer: int, pages: Sequence[int], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the first ``num_tokens`` tokens laid out over ``pages``: (T, kv_heads, D) each."""
        idx = torch.as_tensor(list(pages), dtype=torch.long, device=self.k_cache[layer].device)
        k = self.k_cache[layer].index_select(0, idx).flatten(0, 1)[:num_tokens]
        v = self.v_cache[layer].index_select(0, idx).flatten(0, 1)[:num_tokens]
        return k, v

    def export_pages(self, pages: Sequence[int], num_tokens: int) -> dict[str, torch.Tensor]:
        """Copy the K/V and positions of a page list to host tensors (save to disk, swap out)."""
        self.check_pages(pages)
        idx = torch.as_tensor(list(pages), dtype=torch.long)
        return {
            "k": torch.stack([k.index_select(0, idx.to(k.device)).cpu() for k in self.k_cache]),
            "v": torch.stack([v.index_select(0, idx.to(v.device)).cpu() for v in self.v_cache]),
            "positions": self.positions.index_select(0, idx.to(self.positions.device)).cpu(),
            "num_tokens": torch.tensor(num_tokens),
        }

    def import_pages(self, data: dict[str, torch.Tensor], pages: Sequence[int]) -> None:
        """Write K/V exported by :meth:`export_pages` into freshly allocated ``pages``."""
        self.check_pages(pages)
        if data["k"].shape[1] != len(pages):
            raise InvalidPageError(f"data holds {data['k'].shape[1]} pages, {len(pages)} given")
        idx = torch.as_tensor(list(pages), dtype=torch.long, device=self.positions.device)
        for layer, (k, v) in enumerate(zip(self.k_cache, self.v_cache)):
            k.index_copy_(0, idx, data["k"][layer].to(k.device, k.dtype))
            v.index_copy_(0, idx, data["v"][layer].to(v.device, v.dtype))
        self.positions.index_copy_(0, idx, data["positions"].to(self.positions.device))
