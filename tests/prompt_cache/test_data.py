"""The evaluation's real inputs parse and lay out, so the experiment serves exactly these prompts."""

from __future__ import annotations

import pytest

from core.testing import tiny_tokenizer
from core.tokenizer import Tokenizer
from prompt_cache import data
from prompt_cache.layout import SchemaLayout
from prompt_cache.pml import Schema


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(tiny_tokenizer())


def _select_all(workload, tok):
    layout = SchemaLayout(Schema.parse(workload.schema), tok)
    return layout, [layout.select(t.prompt) for t in workload.tasks]


def test_bfcl_catalogue_has_one_module_per_function_and_ground_truth(tok):
    workload = data.bfcl(4)
    layout, selections = _select_all(workload, tok)
    assert len(workload.tasks) == 4 and all(t.answers for t in workload.tasks)
    assert all(len(s.blocks) >= 2 for s in selections)  # root + the task's functions
    assert layout.length > max(len(s.text_ids) for s in selections)


def test_python_docs_and_long_document_are_real_text_of_the_asked_length(tok):
    doc = data.long_document(200, tok)
    layout, _ = _select_all(doc, tok)
    assert len(layout.blocks[("doc",)]) == pytest.approx(200, abs=4)
    docs = data.python_docs(2, max_tokens=100, tokenizer=tok)
    _select_all(docs, tok)


def test_case_studies_from_the_paper_examples(examples_dir, tok):
    for workload in (data.code_generation("bookstore"), data.personalization()):
        _, selections = _select_all(workload, tok)
        assert selections
    travel = data.parameterized()
    assert "duration=" in travel.tasks[0].prompt


def test_longbench_loader_reads_a_local_jsonl(tmp_path, tok):
    path = tmp_path / "narrativeqa.jsonl"
    path.write_text('{"context": "Once upon a time <there> was & a tale.", "input": "Who?", "answers": ["a"]}\n')
    workload = data.longbench_jsonl(path)
    _, (selection,) = _select_all(workload, tok)
    assert workload.tasks[0].answers == ["a"]
    assert "<there> was & a tale" in tok.decode(selection.blocks[1].token_ids)  # escaped, then restored
    with pytest.raises(data.DataNotFoundError):
        data.longbench_jsonl(tmp_path / "missing.jsonl")
