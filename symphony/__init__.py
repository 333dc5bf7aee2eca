"""Symphony: "Serve Programs, Not Prompts" (Gim, Lee, Zhong; HotOS 2025).

The idea: instead of serving prompts, the server runs *LLM inference programs* (LIPs) on the
user's behalf, like an operating system runs processes. A LIP reaches the model only through
system calls (predict the next-token distribution of tokens at positions over a KV file, sample,
tokenize), keeps and shares KV state as *files* in a KV-cache file system (KVFS), and runs its own
logic and tools on the server without a client round trip. A two-level scheduler keeps the
hardware busy: processes run until they block in a syscall, and all blocked predicts are packed
into full model batches.

Map of the package (one concept per file):

* ``kvfs.py``: KVFS: KV files over :class:`core.kv_cache.KVPool` pages (create, open, read,
  append-by-predict, fork copy-on-write, truncate, link, unlink, directories, per-user permission
  bits, swap of cold files to host memory and disk, save/restore to disk);
* ``syscalls.py``: the syscall table a LIP sees (:class:`LIP`) and :class:`Distribution`;
* ``process.py``: the process record (:class:`Process`), its states and :class:`LIPBudget`;
* ``kernel.py``: :class:`Symphony`, the server: program-level scheduling, tools, messages, cleanup;
* ``batch_scheduler.py``: batch-level scheduling: all pending predicts -> one ``Model.forward``;
* ``watchdog.py``: preemption of LIPs that run past their time slice;
* ``lib.py``: a user-space helper (:class:`Context`) built only from syscalls;
* ``lips/``: example LIPs (multi-turn chat, tree search, server-side-tool agent, JSON decoding);
* ``run.py``: ``python -m symphony.run path/to/lip.py`` (see ``--help``).

Public API::

    server = Symphony(model, tokenizer, SymphonyConfig(num_pages=1024))
    pid = server.submit("my_lip.py", args={...}, user="alice")   # or an `async def main(lip)`
    server.send(pid, "hello"); server.run(); server.receive(pid); server.process(pid).result
"""

from symphony.errors import (
    BadFileDescriptor,
    BudgetExceeded,
    FileBusy,
    FileExists,
    FileNotFound,
    IncompatibleKVFile,
    InvalidSyscall,
    KVFSError,
    LIPError,
    LIPTerminated,
    PermissionDenied,
    SymphonyError,
    ToolError,
)
from symphony.kernel import Symphony, SymphonyConfig, load_program
from symphony.kvfs import KVFS, PRIVATE, SHARED_READ_ONLY, SHARED_READ_WRITE, FileStat, KVFile
from symphony.lib import Context
from symphony.process import LIPBudget, Process, ProcessState
from symphony.syscalls import LIP, Distribution

__all__ = [
    "KVFS",
    "LIP",
    "PRIVATE",
    "SHARED_READ_ONLY",
    "SHARED_READ_WRITE",
    "BadFileDescriptor",
    "BudgetExceeded",
    "Context",
    "Distribution",
    "FileBusy",
    "FileExists",
    "FileNotFound",
    "FileStat",
    "IncompatibleKVFile",
    "InvalidSyscall",
    "KVFSError",
    "KVFile",
    "LIPBudget",
    "LIPError",
    "LIPTerminated",
    "PermissionDenied",
    "Process",
    "ProcessState",
    "Symphony",
    "SymphonyConfig",
    "SymphonyError",
    "ToolError",
    "load_program",
]
