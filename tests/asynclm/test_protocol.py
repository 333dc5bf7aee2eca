import pytest

from asynclm.parser import CMLStreamParser, MalformedCall, ProtocolViolation, State, TrapEvent
from asynclm.protocol import TRAP_SEGMENTS, FunctionCall, Interrupt, MalformedCallError, Tag, parse_call_body


def test_call_body_roundtrips_through_parser():
    call = FunctionCall(3, "spotify.play", {"artist": "Taylor Swift", "duration": 20, "tags": [1, 2.5]})
    assert parse_call_body(3, call.body()) == call


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("f(1, 2", "not a Python expression"),
        ("x + 1", "expected a call"),
        ("f(1)", "positional"),
        ("f(a=open('x'))", "not a literal"),
        ("f(**kw)", r"\*\*kwargs"),
        ("(lambda: 1)()", "dotted identifier"),
    ],
)
def test_malformed_call_bodies_raise_malformed_call_error(body, reason):
    with pytest.raises(MalformedCallError, match=reason):
        parse_call_body(0, body)


def test_stream_parser_yields_calls_interrupts_and_traps(vocab):
    call = FunctionCall(0, "math.gcd", {"num1": 4, "num2": 6})
    segs = ["hi ", *call.segments(), " more ", *Interrupt(0, 2).segments(), *TRAP_SEGMENTS,
            *Interrupt(1, error="boom").segments()]
    p = CMLStreamParser(vocab)
    events = p.feed_all(vocab.encode(segs))
    assert events == [call, Interrupt(0, 2), TrapEvent(), Interrupt(1, error="boom")]
    assert vocab.decode_text(p.text_ids) == "hi  more "
    assert p.state is State.TEXT


def test_stream_parser_reports_malformed_and_unterminated_calls(vocab):
    p = CMLStreamParser(vocab)
    events = p.feed_all(vocab.encode([Tag.CALL, "0", Tag.HEAD, "f(1, 2", Tag.END]))
    assert len(events) == 1 and isinstance(events[0], MalformedCall) and events[0].call_id == 0
    events = p.feed_all(vocab.encode([Tag.CALL, "1", Tag.HEAD, "f(a=1)", Tag.CALL]))
    assert isinstance(events[0], MalformedCall) and "unterminated" in events[0].reason
    assert isinstance(events[1], ProtocolViolation)


def test_critical_section_spans_call_and_trap(vocab):
    p = CMLStreamParser(vocab)
    states = []
    for t in vocab.encode([Tag.CALL, "0", Tag.HEAD, "f()", Tag.END, Tag.TRAP, Tag.END]):
        p.feed(t)
        states.append(p.in_critical_section)
    # inside from [CALL] to just before its [END], and between [TRAP] and [END]
    assert states == [True] * (len(states) - 3) + [False, True, False]


def test_tags_are_single_reserved_tokens_text_never_produces(vocab):
    ids = vocab.encode(["[CALL] [INTR] [TRAP] [HEAD] [END] plain text"])
    assert not set(ids) & set(vocab.tag_ids.values())
    assert vocab.encode([Tag.CALL, Tag.END]) == [vocab.id(Tag.CALL), vocab.id(Tag.END)]
    assert vocab.render(vocab.encode(["a", Tag.TRAP, "b"])) == "a[TRAP]b"
