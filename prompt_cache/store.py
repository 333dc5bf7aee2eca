"""The module store: each module's KV, encoded once, kept in accelerator pages or in host memory.

* ``location="device"`` keeps a module's KV in pages of the engine's pool. Serving a prompt shares
  those pages (``KVPool.share``): no copy at all, the paper's fastest configuration.
* ``location="host"`` keeps an exported copy in host memory (pinned when the pool is on CUDA) and
  releases the pool pages. Serving a prompt allocates fresh pages and copies the module in
  (``KVPool.import_pages``): one host-to-device copy per module per request, the paper's
  "CPU memory" configuration, which holds more modules than the accelerator could.

Eviction is least-recently-used, by a token budget (``capacity_tokens``) and on demand when the
pool runs out of pages (:meth:`ModuleStore.evict_pages`). Evicting a module a live request still
uses is safe: the store drops its own reference and the request's reference keeps the pages alive.
An evicted module is re-encoded the next time a prompt imports it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from core.kv_cache import KVPool

LOCATIONS = ("device", "host")


class ModuleStoreError(RuntimeError):
    """A store was misconfigured or asked for a module it does not hold."""


@dataclass
class CachedModule:
    key: str
    num_tokens: int
    num_pages: int
    pages: list[int] | None = None  # location="device": pool pages owned by the store
    host: dict[str, torch.Tensor] | None = None  # location="host": exported K/V and positions

    def nbytes(self) -> int:
        if self.host is not None:
            return sum(t.numel() * t.element_size() for t in self.host.values())
        return 0


class ModuleStore:
    def __init__(self, pool: KVPool, location: str = "device", capacity_tokens: int | None = None):
        if location not in LOCATIONS:
            raise ModuleStoreError(f"module store location must be one of {LOCATIONS}, got {location!r}")
        self.pool, self.location, self.capacity_tokens = pool, location, capacity_tokens
        self._modules: OrderedDict[str, CachedModule] = OrderedDict()  # least recently used first
        self.num_evictions = 0

    def __contains__(self, key: str) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    @property
    def num_tokens(self) -> int:
        return sum(m.num_tokens for m in self._modules.values())

    def bytes_used(self) -> int:
        """Memory the cached KV occupies (whole pages, K and V, all layers)."""
        per_slot = self.pool.spec.bytes_per_token
        return sum(m.num_pages * self.pool.page_size * per_slot for m in self._modules.values())

    def num_pages(self, key: str) -> int:
        return self._modules[key].num_pages

    def put(self, key: str, pages: list[int], num_tokens: int) -> None:
        """Take ownership of freshly encoded ``pages`` holding ``num_tokens`` tokens of module ``key``."""
        self.discard(key)
        module = CachedModule(key, num_tokens, len(pages))
        if self.location == "device":
            module.pages = pages
        else:
            module.host = self.pool.export_pages(pages, num_tokens)
            if self.pool.k_cache[0].is_cuda:  # pinned host memory makes the copy back asynchronous-capable
                module.host = {k: v.pin_memory() for k, v in module.host.items()}
            self.pool.release(pages)
        self._modules[key] = module
        self._enforce_capacity(keep=key)

    def checkout(self, key: str) -> list[int]:
        """Pages holding module ``key`` for one request; the request must ``pool.release`` them.

        Device store: the store's own pages with one more reference (zero copy).
        Host store: new pages with the module copied in from host memory (one copy, H2D on a GPU).
        """
        module = self._modules.get(key)
        if module is None:
            raise ModuleStoreError(f"module {key!r} is not in the store (evicted or never encoded)")
        self._modules.move_to_end(key)
        if module.pages is not None:
            return self.pool.share(module.pages)
        pages = self.pool.allocate(module.num_pages)
        self.pool.import_pages(module.host, pages)
        return pages

    def discard(self, key: str) -> None:
        module = self._modules.pop(key, None)
        if module is not None and module.pages is not None:
            self.pool.release(module.pages)

    def clear(self) -> None:
        for key in list(self._modules):
            self.discard(key)

    def evict_pages(self, need: int, protect: set[str] = frozenset()) -> bool:
        """Evict least-recently-used modules until ``need`` pool pages are free. False if impossible."""
        for key in list(self._modules):
            if self.pool.allocator.num_free >= need:
                break
            if key not in protect and self._modules[key].pages is not None:
                self.discard(key)
                self.num_evictions += 1
        return self.pool.allocator.num_free >= need

    def _enforce_capacity(self, keep: str) -> None:
        if self.capacity_tokens is None:
            return
        for key in list(self._modules):
            if self.num_tokens <= self.capacity_tokens:
                break
            if key != keep:
                self.discard(key)
                self.num_evictions += 1
