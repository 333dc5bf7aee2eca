"""CML, the in-context protocol for asynchronous calls, defined once as data.

The grammar (each tag is ONE token, see :mod:`asynclm.vocab`; everything else is ordinary text)::

    call       := [CALL] call_id [HEAD] name "(" kwargs ")" [END]     emitted by the model
    interrupt  := [INTR] call_id [HEAD] value [END]                   injected by the system
    trap       := [TRAP] [END]                                        emitted by the model: "I must wait"

``call_id`` is a decimal number the system assigns (the token monitor forces it, so ids are unique);
``name(kwargs)`` is a Python call expression with literal keyword arguments (BFCL's own format);
``value`` is the JSON of the function's result, or ``{"error": "..."}`` when the call failed.

This module holds the tags, the call/interrupt data types, the call-body parser and the renderer of
calls/interrupts as segment lists. Segment lists (``list[str | Tag]``) are tokenizer-free; the vocab
turns them into token ids and the stream parser (:class:`CMLStreamParser`) turns a model's token
stream back into events.
"""

from __future__ import annotations

import ast
import enum
import json
from dataclasses import dataclass, field
from typing import Any


class Tag(enum.Enum):
    CALL = "[CALL]"
    INTR = "[INTR]"
    TRAP = "[TRAP]"
    HEAD = "[HEAD]"
    END = "[END]"


Segment = str | Tag


class ProtocolError(ValueError):
    """Base class for CML protocol violations."""


class MalformedCallError(ProtocolError):
    """A call body that is not ``name(key=literal, ...)``; the message says what and where."""

    def __init__(self, body: str, reason: str):
        super().__init__(f"malformed call {body!r}: {reason}")
        self.body, self.reason = body, reason


@dataclass(frozen=True)
class FunctionCall:
    """One call as the model wrote it: ``[CALL] call_id [HEAD] name(**arguments) [END]``."""

    call_id: int
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def body(self) -> str:
        """The call expression, e.g. ``spotify.play(artist='Taylor Swift', duration=20)``."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
        return f"{self.name}({args})"

    def segments(self) -> list[Segment]:
        return [Tag.CALL, str(self.call_id), Tag.HEAD, self.body(), Tag.END]


@dataclass(frozen=True)
class Interrupt:
    """A returned result (or a user message) delivered into the running sequence."""

    call_id: int | str  # a call id, or a label such as "user" for user-triggered interrupts
    value: Any = None
    error: str | None = None

    @property
    def is_error(self) -> bool:
        return self.error is not None

    def payload(self) -> str:
        return json.dumps({"error": self.error} if self.is_error else self.value, default=str)

    def segments(self) -> list[Segment]:
        return [Tag.INTR, str(self.call_id), Tag.HEAD, self.payload(), Tag.END]


TRAP_SEGMENTS: list[Segment] = [Tag.TRAP, Tag.END]


def parse_call_body(call_id: int, body: str) -> FunctionCall:
    """Parse ``name(k=v, ...)`` with literal values into a :class:`FunctionCall`.

    Raises :class:`MalformedCallError` (never anything else) on bad syntax, positional arguments or
    non-literal values, so a model's malformed output is reported, not crashed on.
    """
    text = body.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise MalformedCallError(body, f"not a Python expression (column {e.offset})") from None
    node = tree.body
    if not isinstance(node, ast.Call):
        raise MalformedCallError(body, "expected a call expression name(...)")
    try:
        name = ast.unparse(node.func)
        if not all(part.isidentifier() for part in name.split(".")):
            raise MalformedCallError(body, f"function name {name!r} is not a dotted identifier")
        if node.args:
            raise MalformedCallError(body, "positional arguments are not allowed; use key=value")
        arguments = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise MalformedCallError(body, "**kwargs is not allowed")
            arguments[kw.arg] = ast.literal_eval(kw.value)
    except MalformedCallError:
        raise
    except (ValueError, TypeError, SyntaxError, RecursionError) as e:
        raise MalformedCallError(body, f"argument is not a literal ({e})") from None
    return FunctionCall(call_id, name, arguments)


def render_text(segments: list[Segment]) -> str:
    """Human-readable form of a segment list (tags shown as ``[CALL]`` etc.)."""
    return "".join(s.value if isinstance(s, Tag) else s for s in segments)
