"""KVFS: the KV cache as a file system.

A *KV file* is a named, growable sequence of KV pages in the shared :class:`core.kv_cache.KVPool`,
together with the token ids and position ids it holds. Files live in a directory tree with
per-user owners and permission bits, outlive the LIP that wrote them, and are the unit of KV
sharing between LIPs:

* ``fork`` makes a new file that shares every page copy-on-write (a tree-search branch, or a
  private continuation of a shared read-only system prompt);
* ``link`` gives a file a second name; ``unlink`` drops a name, and a file's pages return to the
  pool once it has no name and no open descriptor (POSIX semantics);
* cold files (no predict in flight) can move to host memory and then to disk when the pool runs
  short of pages, and come back transparently on their next use;
* ``save``/``restore`` write one file to disk and read it back, so KV outlives the server.

Permissions are POSIX-like bits without groups: ``0o600`` = private (owner reads and writes),
``0o644`` = shared read-only, ``0o666`` = shared read-write. Reading (open for read, fork, read
tokens) needs ``r``; appending and truncating need ``w``. Creating or removing a name needs ``w``
on the parent directory. The user ``root`` (the server operator) bypasses the checks.

This module knows nothing about processes: callers pass the acting ``user``. File descriptors and
syscalls live in :mod:`symphony.process`.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.batch import ForwardEntry
from core.kv_cache import KVPool, OutOfPagesError
from core.sequence import KVSequence
from symphony.errors import (
    DirectoryNotEmpty,
    FileBusy,
    FileExists,
    FileNotFound,
    IncompatibleKVFile,
    IsADirectory,
    KVFSError,
    NotADirectory,
    PermissionDenied,
)

ROOT = "root"
READ, WRITE = 4, 2  # the r and w bits of one permission triple
PRIVATE, SHARED_READ_ONLY, SHARED_READ_WRITE = 0o600, 0o644, 0o666
_FORMAT_VERSION = 1

DEVICE, HOST, DISK = "device", "host", "disk"  # where a file's K/V currently lives


@dataclass
class _Node:
    owner: str
    mode: int


@dataclass
class Directory(_Node):
    entries: dict[str, Directory | KVFile] = field(default_factory=dict)


@dataclass(eq=False)
class KVFile(_Node):
    """An inode: the KV of a token sequence plus its metadata. Identity, not value, equality."""

    ino: int = 0
    token_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    seq: KVSequence | None = None  # resident pages; None while swapped out
    residency: str = DEVICE
    swapped: dict[str, torch.Tensor] | None = None  # host copy (export_pages format)
    swap_path: Path | None = None  # disk copy
    nlink: int = 0
    open_count: int = 0
    busy: int = 0  # predicts in flight; a busy file is neither truncated nor swapped
    last_used: int = 0
    freed: bool = False

    @property
    def length(self) -> int:
        return len(self.token_ids)

    def next_position(self) -> int:
        """Where plain decoding continues: one past the largest position held."""
        return max(self.positions) + 1 if self.positions else 0

    @property
    def num_pages(self) -> int:
        return len(self.seq.pages) if self.seq is not None else 0


@dataclass(frozen=True)
class FileStat:
    path: str | None
    ino: int
    owner: str
    mode: int
    length: int
    next_position: int
    residency: str
    num_pages: int
    nlink: int
    open_count: int


def split_path(path: str) -> list[str]:
    """'/a/b' -> ['a', 'b']. Paths are absolute; '.' and '..' are not supported (names are literal)."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise KVFSError(f"KVFS paths are absolute strings starting with '/', got {path!r}")
    parts = [p for p in path.split("/") if p]
    for p in parts:
        if p in (".", ".."):
            raise KVFSError(f"path {path!r}: '.' and '..' are not supported in KVFS paths")
    return parts


def may(user: str, node: _Node, bit: int) -> bool:
    """POSIX permission check without groups (every bit in ``bit`` is needed); root may do anything."""
    if user == ROOT:
        return True
    triple = (node.mode >> 6) & 7 if node.owner == user else node.mode & 7
    return triple & bit == bit


class KVFS:
    """The directory tree, the inodes, and the pool their pages live in.

    ``host_capacity_pages`` bounds how many pages' worth of swapped-out KV stays in host memory;
    beyond it the least recently used host copies move to ``swap_dir`` on disk.
    """

    def __init__(
        self,
        pool: KVPool,
        *,
        model_id: str = "",
        host_capacity_pages: int = 0,
        swap_dir: str | Path | None = None,
    ):
        self.pool = pool
        self.model_id = model_id
        self.host_capacity_pages = host_capacity_pages
        self._swap_dir = Path(swap_dir) if swap_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.root = Directory(owner=ROOT, mode=0o755)
        self._ino = itertools.count(1)
        self._clock = itertools.count(1)
        self.files: dict[int, KVFile] = {}  # every live inode, named or anonymous
        self.stats = {"swap_out_host": 0, "swap_out_disk": 0, "swap_in": 0}
        self.mkdir(ROOT, "/home", 0o755)
        self.mkdir(ROOT, "/shared", 0o777)

    # -- the tree --------------------------------------------------------------------------
    def _walk(self, user: str, parts: list[str], path: str) -> _Node:
        node: _Node = self.root
        for i, name in enumerate(parts):
            if not isinstance(node, Directory):
                raise NotADirectory(f"{'/' + '/'.join(parts[:i])!r} in {path!r} is a file, not a directory")
            if not may(user, node, READ):
                raise PermissionDenied(f"user {user!r} may not look up {name!r} in {path!r}")
            if name not in node.entries:
                raise FileNotFound(f"no such file or directory: {path!r}")
            node = node.entries[name]
        return node

    def _parent(self, user: str, path: str) -> tuple[Directory, str]:
        parts = split_path(path)
        if not parts:
            raise KVFSError("the root directory has no parent")
        parent = self._walk(user, parts[:-1], path)
        if not isinstance(parent, Directory):
            raise NotADirectory(f"parent of {path!r} is a file")
        return parent, parts[-1]

    def _check_create(self, user: str, path: str) -> tuple[Directory, str]:
        parent, name = self._parent(user, path)
        if name in parent.entries:
            raise FileExists(f"{path!r} already exists")
        if not may(user, parent, WRITE):
            raise PermissionDenied(f"user {user!r} may not create {path!r}: no write permission on its directory")
        return parent, name

    def mkdir(self, user: str, path: str, mode: int = 0o755, exist_ok: bool = False) -> None:
        try:
            parent, name = self._check_create(user, path)
        except FileExists:
            if exist_ok and isinstance(self._walk(user, split_path(path), path), Directory):
                return
            raise
        parent.entries[name] = Directory(owner=user, mode=mode)

    def home(self, user: str) -> str:
        """The user's private home directory ``/home/<user>``, created on first use."""
        path = f"/home/{user}"
        if user not in self.root.entries["home"].entries:
            self.mkdir(ROOT, path, 0o700)
            self.root.entries["home"].entries[user].owner = user
        return path

    def listdir(self, user: str, path: str) -> list[str]:
        node = self._walk(user, split_path(path), path)
        if not isinstance(node, Directory):
            raise NotADirectory(f"{path!r} is a file")
        if not may(user, node, READ):
            raise PermissionDenied(f"user {user!r} may not list {path!r}")
        return sorted(node.entries)

    def rmdir(self, user: str, path: str) -> None:
        parent, name = self._parent(user, path)
        node = parent.entries.get(name)
        if node is None:
            raise FileNotFound(f"no such directory: {path!r}")
        if not isinstance(node, Directory):
            raise NotADirectory(f"{path!r} is a file; use unlink")
        if node.entries:
            raise DirectoryNotEmpty(f"{path!r} is not empty: {sorted(node.entries)[:5]}")
        self._check_remove(user, parent, node, path)
        del parent.entries[name]

    def _check_remove(self, user: str, parent: Directory, node: _Node, path: str) -> None:
        # Sticky-directory rule (as on /tmp): in a shared directory only the owner removes a name.
        if not may(user, parent, WRITE) or (user not in (ROOT, node.owner, parent.owner)):
            raise PermissionDenied(f"user {user!r} may not remove {path!r}")

    def lookup(self, user: str, path: str, need: int = READ) -> KVFile:
        """The file at ``path`` if ``user`` holds the ``need`` bits on it."""
        node = self._walk(user, split_path(path), path)
        if isinstance(node, Directory):
            raise IsADirectory(f"{path!r} is a directory")
        if not may(user, node, need):
            what = {READ: "read", WRITE: "write", READ | WRITE: "read and write"}[need]
            raise PermissionDenied(f"user {user!r} may not {what} {path!r} (owner {node.owner!r}, mode {node.mode:o})")
        return node

    def exists(self, user: str, path: str) -> bool:
        try:
            self._walk(user, split_path(path), path)
            return True
        except FileNotFound:
            return False

    # -- inodes ----------------------------------------------------------------------------
    def new_file(self, owner: str, mode: int = PRIVATE) -> KVFile:
        """An anonymous file (no name yet): freed when its last descriptor closes."""
        f = KVFile(owner=owner, mode=mode, ino=next(self._ino), seq=KVSequence(self.pool))
        self.files[f.ino] = f
        self.touch(f)
        return f

    def create(self, user: str, path: str, mode: int = PRIVATE) -> KVFile:
        parent, name = self._check_create(user, path)
        f = self.new_file(user, mode)
        parent.entries[name] = f
        f.nlink = 1
        return f

    def link(self, user: str, src: str, dst: str) -> None:
        f = self.lookup(user, src, READ)
        self.link_file(user, f, dst)

    def link_file(self, user: str, f: KVFile, dst: str) -> None:
        """Give an (possibly anonymous) file a name, e.g. to keep a forked branch."""
        if user not in (ROOT, f.owner):
            raise PermissionDenied(f"user {user!r} may not link a file owned by {f.owner!r}")
        parent, name = self._check_create(user, dst)
        parent.entries[name] = f
        f.nlink += 1

    def unlink(self, user: str, path: str) -> None:
        parent, name = self._parent(user, path)
        node = parent.entries.get(name)
        if node is None:
            raise FileNotFound(f"no such file: {path!r}")
        if isinstance(node, Directory):
            raise IsADirectory(f"{path!r} is a directory; use rmdir")
        self._check_remove(user, parent, node, path)
        del parent.entries[name]
        node.nlink -= 1
        self._maybe_free(node)

    def chmod(self, user: str, path: str, mode: int) -> None:
        node = self._walk(user, split_path(path), path)
        if user not in (ROOT, node.owner):
            raise PermissionDenied(f"user {user!r} may not chmod {path!r} owned by {node.owner!r}")
        node.mode = mode

    def opened(self, f: KVFile) -> None:
        f.open_count += 1
        self.touch(f)

    def closed(self, f: KVFile) -> None:
        f.open_count -= 1
        self._maybe_free(f)

    def _maybe_free(self, f: KVFile) -> None:
        if f.nlink > 0 or f.open_count > 0 or f.freed:
            return
        if f.seq is not None:
            f.seq.release()
        if f.swap_path is not None:
            f.swap_path.unlink(missing_ok=True)
        f.seq, f.swapped, f.swap_path, f.freed = None, None, None, True
        del self.files[f.ino]

    def touch(self, f: KVFile) -> None:
        f.last_used = next(self._clock)

    def stat(self, f: KVFile, path: str | None = None) -> FileStat:
        return FileStat(
            path,
            f.ino,
            f.owner,
            f.mode,
            f.length,
            f.next_position(),
            f.residency,
            f.num_pages,
            f.nlink,
            f.open_count,
        )

    def paths(self) -> Iterator[tuple[str, KVFile]]:
        """Every named file with one of its paths (depth-first)."""
        stack: list[tuple[str, Directory]] = [("", self.root)]
        while stack:
            prefix, d = stack.pop()
            for name, node in sorted(d.entries.items()):
                p = f"{prefix}/{name}"
                if isinstance(node, Directory):
                    stack.append((p, node))
                else:
                    yield p, node

    # -- content ---------------------------------------------------------------------------
    def fork(self, f: KVFile, owner: str, mode: int = PRIVATE) -> KVFile:
        """A new anonymous file holding the same tokens, sharing every page copy-on-write."""
        self.ensure_resident(f)
        child = KVFile(
            owner=owner,
            mode=mode,
            ino=next(self._ino),
            token_ids=list(f.token_ids),
            positions=list(f.positions),
            seq=f.seq.fork(),
        )
        self.files[child.ino] = child
        self.touch(child)
        return child

    def truncate(self, f: KVFile, length: int) -> None:
        if f.busy:
            raise FileBusy(f"file ino {f.ino} has a predict in flight; truncate after it completes")
        if not 0 <= length <= f.length:
            raise KVFSError(f"cannot truncate a file of {f.length} tokens to {length}")
        self.ensure_resident(f)
        f.seq.truncate(length)
        del f.token_ids[length:]
        del f.positions[length:]
        self.touch(f)

    def begin_append(
        self,
        f: KVFile,
        token_ids: list[int],
        positions: list[int],
        mask: torch.Tensor | None = None,
        logits_at: Iterable[int] | None = (-1,),
    ) -> ForwardEntry:
        """Reserve slots for new tokens and build their forward entry. Undo with :meth:`abort_append`.

        Raises :class:`OutOfPagesError` (with nothing reserved) when the pool is full even
        after swapping cold files out; the caller retries later.
        """
        self.ensure_resident(f)
        try:
            entry = f.seq.entry(positions=positions, token_ids=token_ids, mask=mask, logits_at=logits_at)
        except OutOfPagesError:
            self.reclaim(self.pool.pages_for(f.length + len(token_ids)) - f.num_pages + 1, keep={f.ino})
            entry = f.seq.entry(positions=positions, token_ids=token_ids, mask=mask, logits_at=logits_at)
        f.busy += 1
        self.touch(f)
        return entry

    def commit_append(self, f: KVFile, token_ids: list[int], positions: list[int]) -> None:
        f.token_ids.extend(token_ids)
        f.positions.extend(positions)
        f.busy -= 1

    def abort_append(self, f: KVFile, num_tokens: int) -> None:
        f.busy -= 1
        f.seq.truncate(f.seq.length - num_tokens)

    # -- cold files: device -> host -> disk ------------------------------------------------------
    def ensure_resident(self, f: KVFile) -> None:
        """Bring a swapped-out file's K/V back into pool pages (swapping others out if needed)."""
        if f.residency == DEVICE:
            return
        data = f.swapped if f.residency == HOST else torch.load(f.swap_path, weights_only=True)
        need = data["k"].shape[1]
        if need > self.pool.allocator.num_free:
            self.reclaim(need, keep={f.ino})
        pages = self.pool.allocate(need)
        self.pool.import_pages(data, pages)
        f.seq = KVSequence(self.pool, pages, f.length)
        if f.swap_path is not None:
            f.swap_path.unlink(missing_ok=True)
        f.swapped, f.swap_path, f.residency = None, None, DEVICE
        self.stats["swap_in"] += 1
        self.touch(f)

    def swap_out(self, f: KVFile, to: str = HOST) -> None:
        if f.busy:
            raise FileBusy(f"file ino {f.ino} has a predict in flight; it cannot be swapped out")
        if f.residency == DEVICE:
            # Shared pages (forks) are copied out too: each file's swap copy is self-contained.
            f.swapped = self.pool.export_pages(f.seq.pages, f.length)
            f.seq.release()
            f.seq, f.residency = None, HOST
            self.stats["swap_out_host"] += 1
        if to == DISK and f.residency == HOST:
            f.swap_path = self._swap_file(f)
            torch.save(f.swapped, f.swap_path)
            f.swapped, f.residency = None, DISK
            self.stats["swap_out_disk"] += 1

    def _swap_file(self, f: KVFile) -> Path:
        if self._swap_dir is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="kvfs-swap-")
            self._swap_dir = Path(self._tmp.name)
        self._swap_dir.mkdir(parents=True, exist_ok=True)
        return self._swap_dir / f"ino{f.ino}.pt"

    def host_pages(self) -> int:
        return sum(f.swapped["k"].shape[1] for f in self.files.values() if f.residency == HOST)

    def reclaim(self, num_pages: int, keep: Iterable[int] = ()) -> int:
        """Swap least-recently-used idle files out until ``num_pages`` pages are free.

        Returns the number of free pages afterwards; raises :class:`OutOfPagesError` when every
        idle file is out and the pool is still short (the caller waits or fails the request).
        """
        keep = set(keep)
        victims = sorted(
            (
                f
                for f in self.files.values()
                if f.residency == DEVICE and not f.busy and f.ino not in keep and f.seq.pages
            ),
            key=lambda f: f.last_used,
        )
        for f in victims:
            if self.pool.allocator.num_free >= num_pages:
                break
            self.swap_out(f, HOST)
        self._spill_host_to_disk()
        if self.pool.allocator.num_free < num_pages:
            raise OutOfPagesError(num_pages, self.pool.allocator.num_free, self.pool.num_pages)
        return self.pool.allocator.num_free

    def _spill_host_to_disk(self) -> None:
        host = sorted((f for f in self.files.values() if f.residency == HOST), key=lambda f: f.last_used)
        total = self.host_pages()
        for f in host:
            if total <= self.host_capacity_pages:
                break
            total -= f.swapped["k"].shape[1]
            self.swap_out(f, DISK)

    # -- save / restore --------------------------------------------------------------------------
    def _layout(self) -> dict:
        s = self.pool.spec
        return {
            "model_id": self.model_id,
            "num_layers": s.num_layers,
            "num_kv_heads": s.num_kv_heads,
            "head_dim": s.head_dim,
            "page_size": s.page_size,
        }

    def save(self, f: KVFile, dest: str | Path) -> None:
        """Write one file's tokens, positions and K/V to ``dest`` (a torch file)."""
        if f.residency == DEVICE:
            kv = self.pool.export_pages(f.seq.pages, f.length)
        else:
            kv = f.swapped if f.residency == HOST else torch.load(f.swap_path, weights_only=True)
        torch.save(
            {
                "version": _FORMAT_VERSION,
                "layout": self._layout(),
                "owner": f.owner,
                "mode": f.mode,
                "token_ids": list(f.token_ids),
                "positions": list(f.positions),
                "kv": kv,
            },
            dest,
        )

    def restore(self, src: str | Path, user: str, path: str, mode: int | None = None) -> KVFile:
        """Create ``path`` from a file written by :meth:`save`; its K/V is copied, not recomputed."""
        data = torch.load(src, weights_only=True)
        if data.get("version") != _FORMAT_VERSION or data["layout"] != self._layout():
            raise IncompatibleKVFile(f"{src}: saved with layout {data.get('layout')}, this server has {self._layout()}")
        f = self.create(user, path, data["mode"] if mode is None else mode)
        pages = self.pool.pages_for(len(data["token_ids"]))
        if pages > self.pool.allocator.num_free:
            self.reclaim(pages, keep={f.ino})
        new = self.pool.allocate(pages)
        self.pool.import_pages(data["kv"], new)
        f.seq = KVSequence(self.pool, new, len(data["token_ids"]))
        f.token_ids, f.positions = list(data["token_ids"]), list(data["positions"])
        return f

    def save_tree(self, directory: str | Path) -> int:
        """Save every named file under ``directory`` (one torch file each + an index). Returns the count."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        index = []
        for i, (path, f) in enumerate(self.paths()):
            self.save(f, directory / f"{i}.pt")
            index.append({"path": path, "file": f"{i}.pt", "owner": f.owner, "mode": f.mode})
        torch.save({"version": _FORMAT_VERSION, "files": index}, directory / "index.pt")
        return len(index)

    def load_tree(self, directory: str | Path) -> int:
        """Restore a tree written by :meth:`save_tree`, creating missing directories. Returns the count."""
        directory = Path(directory)
        if not (directory / "index.pt").exists():
            return 0
        index = torch.load(directory / "index.pt", weights_only=True)
        for item in index["files"]:
            parts = split_path(item["path"])
            for i in range(1, len(parts)):
                sub = "/" + "/".join(parts[:i])
                if not self.exists(ROOT, sub):
                    owner = parts[1] if parts[0] == "home" and i == 2 else ROOT
                    self.mkdir(ROOT, sub, 0o700 if owner != ROOT else 0o755)
                    self._walk(ROOT, parts[:i], sub).owner = owner
            if self.exists(ROOT, item["path"]):
                self.unlink(ROOT, item["path"])
            f = self.restore(directory / item["file"], ROOT, item["path"], item["mode"])
            f.owner = item["owner"]
        return len(index["files"])
