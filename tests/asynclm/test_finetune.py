import random

import pytest
import torch

from asynclm.bfcl import load_tasks, multi_step_tasks
from asynclm.finetune import (
    AdapterError,
    TraceConfig,
    apply_lora,
    build_example,
    example_loss,
    finetune,
    load_adapter,
    save_adapter,
    simulate_trace,
)
from asynclm.parser import CMLStreamParser, TrapEvent
from asynclm.protocol import FunctionCall, Interrupt, Tag
from core.testing import tiny_model


def _events(vocab, segments):
    return CMLStreamParser(vocab).feed_all(vocab.encode([s for s, _ in segments]))


def test_trace_is_valid_cml_with_every_result_once_and_dependencies_respected(vocab):
    base = load_tasks("parallel_multiple", limit=4)
    for task in [*base[:2], *multi_step_tasks(base, steps=2, count=2, seed=3)]:
        segs = simulate_trace(task, vocab, random.Random(0), TraceConfig())
        events = _events(vocab, segs)
        calls = [e for e in events if isinstance(e, FunctionCall)]
        results = [e.call_id for e in events if isinstance(e, Interrupt)]
        assert sorted(results) == list(range(len(task.possible_answer)))
        assert sorted(c.body() for c in calls) == sorted(c.body() for c in task.ground_truth_calls())
        order = {c.body(): k for k, c in enumerate(calls)}  # emission index == call id
        gt = task.ground_truth_calls()
        for j, deps in enumerate(task.dependencies()):
            for d in deps:  # the parent's result is in the context before the child is written
                child_pos = next(i for i, e in enumerate(events) if e == calls[order[gt[j].body()]])
                parent_result = events.index(next(e for e in events if isinstance(e, Interrupt)
                                                  and e.call_id == order[gt[d].body()]))
                assert parent_result < child_pos
        assert not [e for e in events if not isinstance(e, FunctionCall | Interrupt | TrapEvent)]


def test_only_the_models_own_tokens_carry_loss(tiny, vocab):
    task = load_tasks("parallel", limit=1)[0]
    ex = build_example(vocab, tiny.tokenizer, task, random.Random(0), TraceConfig(), 1, with_docs=False)
    trained = [t for t, m in zip(ex.input_ids, ex.loss_mask) if m]
    assert vocab.id(Tag.INTR) not in trained and vocab.id(Tag.HEAD) not in trained
    assert vocab.id(Tag.CALL) in trained and trained[-1] == 1
    assert not any(ex.loss_mask[: ex.input_ids.index(vocab.id(Tag.CALL))])  # prompt is context only


def test_lora_starts_as_an_exact_no_op_and_a_few_cpu_steps_lower_the_loss(vocab, tmp_path):
    lm = tiny_model("llama")  # a private copy: training mutates the model
    task = load_tasks("parallel", limit=1)[0]
    ex = build_example(vocab, lm.tokenizer, task, random.Random(0), TraceConfig(), 1, with_docs=False)
    with torch.no_grad():
        before = float(example_loss(lm.model, ex))
    losses = finetune(lm.model, vocab, [ex], steps=6, lr=1e-2)
    assert abs(losses[0] - before) < 1e-4  # B = 0: the adapter changes nothing until trained
    with torch.no_grad():
        after = float(example_loss(lm.model, ex))
    assert after < before
    path = tmp_path / "adapter.pt"
    save_adapter(lm.model, vocab, path)
    fresh = tiny_model("llama")
    load_adapter(fresh.model, path)
    with torch.no_grad():
        assert abs(float(example_loss(fresh.model, ex)) - after) < 1e-4


def test_apply_lora_twice_is_refused():
    lm = tiny_model("llama")
    apply_lora(lm.model)
    with pytest.raises(AdapterError, match="already has a LoRA adapter"):
        apply_lora(lm.model)
