"""Errors a LIP or a server operator can see. Each names what was wrong and where.

File-system errors mirror their POSIX namesakes (``ENOENT``, ``EEXIST``, ``EACCES``, ``EBADF``)
so a reader of the paper's "KV cache as a file system" finds the familiar meaning.
"""

from __future__ import annotations


class SymphonyError(RuntimeError):
    """Base class of every error this package raises."""


# -- KVFS ------------------------------------------------------------------------------------
class KVFSError(SymphonyError):
    """A KV file-system call failed."""


class FileNotFound(KVFSError):
    """No file or directory at the path (ENOENT)."""


class FileExists(KVFSError):
    """Something already lives at the path (EEXIST)."""


class PermissionDenied(KVFSError):
    """The caller's user lacks the permission bit the call needs (EACCES)."""


class BadFileDescriptor(KVFSError):
    """The descriptor is not open in this process, or not open for this kind of access (EBADF)."""


class NotADirectory(KVFSError):
    """A path component that must be a directory is a file (ENOTDIR)."""


class IsADirectory(KVFSError):
    """A file call was given a directory (EISDIR)."""


class DirectoryNotEmpty(KVFSError):
    """rmdir of a directory that still has entries (ENOTEMPTY)."""


class FileBusy(KVFSError):
    """The file has a predict in flight; it cannot be truncated or swapped right now (EBUSY)."""


class IncompatibleKVFile(KVFSError):
    """A saved KV file was written by a different model or page layout than the server's."""


# -- processes ---------------------------------------------------------------------------------
class LIPError(SymphonyError):
    """A LIP was malformed or broke a rule of the process model."""


class LIPTerminated(BaseException):  # a signal, like KeyboardInterrupt, not an error
    """Raised inside a LIP to stop it (budget exceeded or killed).

    A ``BaseException`` so that a LIP's ``except Exception`` does not swallow it; the watchdog
    keeps raising it until the LIP's time slice ends, so even a bare ``except`` cannot keep the
    LIP alive.
    """


class BudgetExceeded(LIPError):
    """A LIP used more of a resource (time slice, syscalls, tokens) than its budget allows."""


class InvalidSyscall(LIPError):
    """A LIP awaited something that is not a Symphony syscall, or passed malformed arguments."""


class ToolError(LIPError):
    """A server-side tool raised or timed out; the LIP sees this and may handle it."""
