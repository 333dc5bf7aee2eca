"""The CML stream parser: a state machine over a model's token stream that yields protocol events.

One state machine serves three users: the token monitor reads :attr:`CMLStreamParser.state` to mask
logits, the runtime reacts to the events (dispatch a call, park a trapped sequence), and the
evaluation parses whole traces. Text inside a call id / body is buffered as token ids and decoded once
at the closing tag (decoding token by token breaks on multi-token characters).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from asynclm.protocol import FunctionCall, Interrupt, MalformedCallError, Tag, parse_call_body
from asynclm.vocab import CMLVocab


class State(enum.Enum):
    TEXT = "text"
    CALL_ID = "call_id"  # after [CALL]: the critical section starts here
    CALL_BODY = "call_body"  # after [CALL] id [HEAD]
    TRAP = "trap"  # after [TRAP], expecting [END]
    INTR_ID = "intr_id"  # only in traces that contain injected interrupts
    INTR_BODY = "intr_body"


@dataclass(frozen=True)
class TrapEvent:
    """``[TRAP][END]``: the model cannot continue until a result arrives."""


@dataclass(frozen=True)
class MalformedCall:
    """A call the model closed but that does not parse; reported to the model as an error interrupt."""

    call_id: int | None
    body: str
    reason: str


@dataclass(frozen=True)
class ProtocolViolation:
    """A tag where the grammar does not allow one (only possible without the token monitor)."""

    state: State
    tag: Tag


Event = FunctionCall | Interrupt | TrapEvent | MalformedCall | ProtocolViolation

_CRITICAL = (State.CALL_ID, State.CALL_BODY, State.TRAP)


class CMLStreamParser:
    def __init__(self, vocab: CMLVocab):
        self.vocab = vocab
        self.state = State.TEXT
        self._id_buf: list[int] = []
        self._body_buf: list[int] = []
        self.text_ids: list[int] = []  # ordinary text tokens seen, in order

    @property
    def in_critical_section(self) -> bool:
        """Inside a call or trap: an interrupt injected now would split the model's own syntax."""
        return self.state in _CRITICAL

    def feed(self, token_id: int) -> list[Event]:
        tag = self.vocab.tag_of(token_id)
        if tag is None:
            self._text(int(token_id))
            return []
        return self._tag(tag)

    def feed_all(self, token_ids) -> list[Event]:
        events: list[Event] = []
        for t in token_ids:
            events.extend(self.feed(t))
        return events

    # -- transitions --------------------------------------------------------------------------
    def _text(self, token_id: int) -> None:
        if self.state in (State.CALL_ID, State.INTR_ID):
            self._id_buf.append(token_id)
        elif self.state in (State.CALL_BODY, State.INTR_BODY):
            self._body_buf.append(token_id)
        elif self.state is State.TEXT:
            self.text_ids.append(token_id)
        # State.TRAP: stray text between [TRAP] and [END] is ignored (the monitor forbids it).

    def _tag(self, tag: Tag) -> list[Event]:
        s = self.state
        if s is State.TEXT and tag in (Tag.CALL, Tag.INTR, Tag.TRAP):
            self.state = {Tag.CALL: State.CALL_ID, Tag.INTR: State.INTR_ID, Tag.TRAP: State.TRAP}[tag]
            self._id_buf, self._body_buf = [], []
            return []
        if s in (State.CALL_ID, State.INTR_ID) and tag is Tag.HEAD:
            self.state = State.CALL_BODY if s is State.CALL_ID else State.INTR_BODY
            return []
        if s is State.TRAP and tag is Tag.END:
            self.state = State.TEXT
            return [TrapEvent()]
        if s is State.CALL_BODY and tag is Tag.END:
            self.state = State.TEXT
            return [self._finish_call()]
        if s is State.INTR_BODY and tag is Tag.END:
            self.state = State.TEXT
            return [self._finish_interrupt()]
        # Anything else breaks the grammar: report it and resynchronise at TEXT.
        self.state = State.TEXT
        events: list[Event] = [ProtocolViolation(s, tag)]
        if s in (State.CALL_ID, State.CALL_BODY):
            body = self._decode(self._body_buf)
            events.insert(0, MalformedCall(self._call_id(), body, f"unterminated at {tag.value}"))
        return events

    def _decode(self, ids: list[int]) -> str:
        return self.vocab.decode_text(ids) if ids else ""

    def _call_id(self) -> int | None:
        text = self._decode(self._id_buf).strip()
        return int(text) if text.isdigit() else None

    def _finish_call(self) -> FunctionCall | MalformedCall:
        body = self._decode(self._body_buf)
        call_id = self._call_id()
        if call_id is None:
            return MalformedCall(None, body, f"call id {self._decode(self._id_buf)!r} is not a number")
        try:
            return parse_call_body(call_id, body)
        except MalformedCallError as e:
            return MalformedCall(call_id, body, e.reason)

    def _finish_interrupt(self) -> Interrupt:
        raw_id = self._decode(self._id_buf).strip()
        call_id: int | str = int(raw_id) if raw_id.isdigit() else raw_id
        payload = self._decode(self._body_buf)
        try:
            value = json.loads(payload)
        except json.JSONDecodeError:
            return Interrupt(call_id, payload)
        if isinstance(value, dict) and set(value) == {"error"}:
            return Interrupt(call_id, error=str(value["error"]))
        return Interrupt(call_id, value)
