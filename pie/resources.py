"""Per-inferlet resource address spaces: KV pages and embeds, checked on every host call.

An inferlet never sees a physical page id of the shared :class:`~core.kv_cache.KVPool`. It gets
small *virtual* ids from its own :class:`ResourceTable`, and every host call translates them
through that table. An id the inferlet was not given (another inferlet's page, a freed page, a
made-up number) is a :class:`ResourceError` for that call only. When the inferlet ends, however
it ends, :meth:`ResourceTable.release_all` returns everything it held to the pool.

Embeds are host-side slots: an *input* embed holds a token id and its position until a forward
pass consumes it; an *output* embed receives the logits a forward pass produced for it.

Exported pages (:class:`ExportRegistry`) are how inferlets share a prefix: the exporter's
physical pages gain one reference held by the registry, an importer maps them into its own table
(one more reference each), and a write into a page that is shared is copied first (see
``InferletHost.forward``), so sharing can never corrupt another inferlet's KV.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from core.kv_cache import KVPool, OutOfPagesError
from pie.errors import PagesExhausted, ResourceError


@dataclass
class Embed:
    token: int | None = None  # input: token id to embed
    position: int | None = None  # input: its position id
    logits: torch.Tensor | None = None  # output: (vocab,) fp32 logits written by a forward pass


class ResourceTable:
    """One inferlet's KV pages and embeds, by virtual id."""

    def __init__(self, pool: KVPool, lock: threading.Lock, owner: str, max_pages: int | None = None):
        self.pool, self._lock, self.owner = pool, lock, owner
        self.max_pages = max_pages
        self._pages: dict[int, int] = {}  # virtual id -> physical page
        self._embeds: dict[int, Embed] = {}
        self._next_page = 0
        self._next_embed = 0

    # -- KV pages --------------------------------------------------------------------------
    @property
    def num_pages(self) -> int:
        return len(self._pages)

    def alloc_pages(self, count: int) -> list[int]:
        if self.max_pages is not None and len(self._pages) + count > self.max_pages:
            raise ResourceError(
                f"{self.owner}: {count} more KV pages would exceed its quota of {self.max_pages}"
            )
        with self._lock:
            try:
                physical = self.pool.allocate(count)
            except OutOfPagesError as e:
                raise PagesExhausted(f"{self.owner}: {e}") from None
        return self._map(physical)

    def map_shared(self, physical: Sequence[int]) -> list[int]:
        """Map pages someone else holds into this table, taking one reference on each."""
        with self._lock:
            self.pool.share(physical)
        return self._map(physical)

    def _map(self, physical: Iterable[int]) -> list[int]:
        ids = []
        for p in physical:
            self._pages[self._next_page] = p
            ids.append(self._next_page)
            self._next_page += 1
        return ids

    def physical(self, ids: Sequence[int], what: str = "KV page") -> list[int]:
        """Translate virtual page ids, refusing any id this inferlet does not hold."""
        try:
            return [self._pages[i] for i in ids]
        except KeyError as e:
            raise ResourceError(f"{self.owner}: {what} {e.args[0]} is not owned by this inferlet") from None

    def remap(self, vid: int, physical: int) -> None:
        """Point a virtual id at a new physical page (after a copy-on-write)."""
        self._pages[vid] = physical

    def dealloc_pages(self, ids: Sequence[int]) -> None:
        if len(set(ids)) != len(ids):
            raise ResourceError(f"{self.owner}: KV page ids {list(ids)} contain duplicates")
        physical = self.physical(ids)
        for i in ids:
            del self._pages[i]
        with self._lock:
            self.pool.release(physical)

    # -- embeds ----------------------------------------------------------------------------
    def alloc_embeds(self, count: int) -> list[int]:
        ids = list(range(self._next_embed, self._next_embed + count))
        self._next_embed += count
        for i in ids:
            self._embeds[i] = Embed()
        return ids

    def embed(self, eid: int) -> Embed:
        try:
            return self._embeds[eid]
        except KeyError:
            raise ResourceError(f"{self.owner}: embed {eid} is not owned by this inferlet") from None

    def dealloc_embeds(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.embed(i)
        for i in ids:
            del self._embeds[i]

    # -- teardown --------------------------------------------------------------------------
    def release_all(self) -> None:
        """Give every page back to the pool (idempotent): the inferlet is gone."""
        physical = list(self._pages.values())
        self._pages.clear()
        self._embeds.clear()
        with self._lock:
            self.pool.release(physical)


class ExportRegistry:
    """Named page lists published by inferlets; the registry holds one reference per page."""

    def __init__(self, pool: KVPool, lock: threading.Lock):
        self.pool, self._lock = pool, lock
        self._exports: dict[str, list[int]] = {}

    def export(self, name: str, physical: Sequence[int]) -> None:
        with self._lock:
            if name in self._exports:
                raise ResourceError(f"KV pages are already exported under the name {name!r}")
            self._exports[name] = self.pool.share(physical)

    def get(self, name: str) -> list[int]:
        try:
            return list(self._exports[name])
        except KeyError:
            raise ResourceError(f"no KV pages are exported under the name {name!r}") from None

    def unexport(self, name: str) -> None:
        with self._lock:
            pages = self._exports.pop(name, None)
            if pages is None:
                raise ResourceError(f"no KV pages are exported under the name {name!r}")
            self.pool.release(pages)

    def names(self) -> list[str]:
        return sorted(self._exports)

    def clear(self) -> None:
        for name in self.names():
            self.unexport(name)
