"""Errors of the Pie runtime, one class per way an inferlet can fail.

Two kinds: errors *returned to the inferlet* as a WIT ``err`` (:class:`ResourceError`, a bad page
or embed id, an exhausted pool), which a well-written inferlet can handle; and errors that
*terminate* it (:class:`InferletTerminated` and subclasses), after which its resources are freed.
"""

from __future__ import annotations


class PieError(RuntimeError):
    """Base class for every error raised by the Pie runtime."""


class ResourceError(PieError):
    """An inferlet named a KV page or embed it does not own, or asked for more than is free.

    Returned to the inferlet as the ``err`` of the host call; the inferlet keeps running.
    """


class PagesExhausted(ResourceError):
    """The shared KV pool has fewer free pages than an inferlet asked for."""


class InferletNotFoundError(PieError):
    """No inferlet with this name was built or uploaded."""


class InferletBuildError(PieError):
    """componentize-py failed to build an inferlet from its sources."""


class InferletTerminated(PieError):
    """An inferlet stopped abnormally; ``kind`` says why (a short stable word for clients)."""

    kind = "error"

    def __init__(self, inferlet: str, instance_id: int, detail: str):
        super().__init__(f"inferlet {inferlet!r} (instance {instance_id}) {self._what()}: {detail}")
        self.inferlet, self.instance_id, self.detail = inferlet, instance_id, detail

    def _what(self) -> str:
        return "failed"


class InferletFailed(InferletTerminated):
    """The inferlet's own code raised (its ``run`` returned ``err`` or Python raised inside it)."""

    kind = "failed"


class InferletTimeout(InferletTerminated):
    """The inferlet computed without a host call for longer than its time slice (a runaway loop)."""

    kind = "timeout"

    def _what(self) -> str:
        return "was stopped for exceeding its compute time slice"


class InferletMemoryExceeded(InferletTerminated):
    """The inferlet's linear memory hit its store limit."""

    kind = "memory"

    def _what(self) -> str:
        return "was terminated for exceeding its memory limit"


class InferletTrap(InferletTerminated):
    """WebAssembly trapped for another reason (unreachable, stack overflow, ...)."""

    kind = "trap"

    def _what(self) -> str:
        return "trapped"


class InferletKilled(InferletTerminated):
    """The client or the server terminated the inferlet."""

    kind = "killed"

    def _what(self) -> str:
        return "was terminated"
