"""Token sources: who picks each next token - the model (sampling) or a teacher-forced script.

:class:`SampledSource` samples from the monitor-masked logits with ``core.sampling`` (greedy by
default). :class:`TeacherForcedSource` emits the ground-truth BFCL calls through the real engine: every
token still goes through a real forward pass (real decode timing, real token counts); only the choice
of token is scripted. The script follows the paper's fine-tuning recipe: among calls whose
dependencies have returned, emit the one with the longest expected processing time first (LPT); if
none is ready but results are pending, ``[TRAP]``; when everything has returned, write the answer.
User messages delivered as interrupts get a short acknowledgement before the script continues.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from asynclm.protocol import FunctionCall, Tag
from asynclm.vocab import CMLVocab
from core.sampling import SamplingParams, sample


class ScriptError(RuntimeError):
    """The teacher script wanted a token the token monitor forbids (a bug in the script)."""


@dataclass
class SampledSource:
    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        self._generator = self.params.make_generator()

    def next_token(self, task, logits: torch.Tensor) -> int:
        return sample(logits, self.params, self._generator)


class TeacherForcedSource:
    def __init__(
        self,
        vocab: CMLVocab,
        calls: Sequence[FunctionCall],
        depends_on: Sequence[Sequence[int]],
        expected_latency: Callable[[FunctionCall], float],
        answer: str,
        eos_token_id: int,
        user_reply: str = "Noted, I will take that into account.",
        expected_user_messages: int = 0,
    ):
        self.vocab, self.calls, self.depends_on = vocab, list(calls), [tuple(d) for d in depends_on]
        self.expected_latency, self.eos = expected_latency, eos_token_id
        self.answer_ids = vocab.encode([answer])
        self.reply_ids = vocab.encode([user_reply])
        self.expected_user_messages = expected_user_messages
        self._buffer: list[int] = []
        self._emitted: list[int] = []  # ground-truth index of the k-th emitted call (runtime id k)
        self._replied: set = set()

    def next_token(self, task, logits: torch.Tensor) -> int:
        if not self._buffer:
            self._buffer = self._plan(task)
        token = self._buffer.pop(0)
        if logits[token] == float("-inf"):
            raise ScriptError(f"script token {token} is forbidden in monitor state {task.monitor.state}")
        return token

    def _plan(self, task) -> list[int]:
        for key in task.delivered:  # acknowledge user messages as soon as they are in the context
            if isinstance(key, str) and key not in self._replied:
                self._replied.add(key)
                return list(self.reply_ids)
        returned = {self._emitted[k] for k in task.delivered if isinstance(k, int) and k < len(self._emitted)}
        ready = [
            j for j in range(len(self.calls))
            if j not in self._emitted and all(d in returned for d in self.depends_on[j])
        ]
        if ready:  # LPT: longest expected processing time first, so the longest call overlaps most
            j = max(ready, key=lambda i: (self.expected_latency(self.calls[i]), -i))
            self._emitted.append(j)
            return [self.vocab.id(Tag.CALL), *self.vocab.encode([self.calls[j].body()]), self.vocab.id(Tag.END)]
        users_pending = len(self._replied) < self.expected_user_messages
        if len(returned) < len(self.calls) or users_pending or task.calls_in_flight:
            return [self.vocab.id(Tag.TRAP)]
        return [*self.answer_ids, self.eos]
