import torch

from asynclm.monitor import TokenMonitor
from asynclm.parser import State
from asynclm.protocol import FunctionCall, Tag

EOS = 1


def test_model_can_never_emit_an_interrupt_tag(vocab):
    m = TokenMonitor(vocab, (EOS,))
    logits = torch.zeros(300)
    logits[vocab.id(Tag.INTR)] = 100.0
    for outstanding in (0, 2):
        masked = m.mask(logits, outstanding)
        assert masked[vocab.id(Tag.INTR)] == float("-inf")
        assert int(masked.argmax()) != vocab.id(Tag.INTR)


def test_eos_forbidden_only_while_calls_are_outstanding(vocab):
    m = TokenMonitor(vocab, (EOS,))
    assert EOS not in m.forbidden(0)
    assert EOS in m.forbidden(1)


def test_call_id_and_head_are_forced_and_body_blocks_other_tags(vocab):
    m = TokenMonitor(vocab, (EOS,))
    forced, events = m.accept(vocab.id(Tag.CALL))
    assert forced == [*vocab.encode_text("0"), vocab.id(Tag.HEAD)] and events == []
    assert m.state is State.CALL_BODY and not m.may_inject()
    forbidden = set(m.forbidden(0))
    assert {vocab.id(Tag.CALL), vocab.id(Tag.TRAP), vocab.id(Tag.INTR), EOS} <= forbidden
    assert vocab.id(Tag.END) not in forbidden
    events = []
    for t in [*vocab.encode_text("f(x=1)"), vocab.id(Tag.END)]:
        events += m.accept(t)[1]
    assert events == [FunctionCall(0, "f", {"x": 1})] and m.may_inject()
    forced, _ = m.accept(vocab.id(Tag.CALL))
    assert forced[:-1] == vocab.encode_text("1")  # ids are assigned in order


def test_trap_forces_end(vocab):
    m = TokenMonitor(vocab, (EOS,))
    forced, events = m.accept(vocab.id(Tag.TRAP))
    assert forced == [vocab.id(Tag.END)] and len(events) == 1 and m.state is State.TEXT
