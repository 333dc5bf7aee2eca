"""Python to PML: every branch lands in the schema; a call imports the branches its arguments select."""

from __future__ import annotations

import pytest

from core.testing import tiny_tokenizer
from core.tokenizer import Tokenizer
from prompt_cache.layout import SchemaLayout
from prompt_cache.pml import Prompt, Schema
from prompt_cache.pycompile import PromptCompileError, compile_prompt


def planner(city: str, luxury: bool = False):
    "You are a travel planner."
    if luxury:
        "Prefer five-star hotels."
    match city:
        case "paris":
            "Paris: museums & cafes."
        case "rome":
            "Rome: ruins, trattorias."
    return f"Plan three days in {city}."


def test_if_becomes_a_module_and_match_a_union():
    program = compile_prompt(planner)
    schema = Schema.parse(program.schema)
    assert schema.name == "planner"
    assert "if0" in schema.root.submodules
    assert [m.name for m in schema.root.unions[0].members] == ["city-paris", "city-rome"]


def test_prompt_imports_the_selected_branches_and_returns_text():
    program = compile_prompt(planner)
    prompt = Prompt.parse(program.prompt("rome", luxury=True))
    assert [m.name for m in prompt.modules] == ["if0", "city-rome"]
    assert prompt.text[0].text == "Plan three days in rome."
    assert [m.name for m in Prompt.parse(program.prompt("paris")).modules] == ["city-paris"]


def test_compiled_schema_and_prompt_lay_out_together():
    program = compile_prompt(planner)
    layout = SchemaLayout(Schema.parse(program.schema), Tokenizer(tiny_tokenizer()))
    selection = layout.select(program.prompt("paris", True))
    assert [b.key for b in selection.blocks] == ["<root>", "if0", "city-paris"]
    text = "".join(layout.tokenizer.decode(b.token_ids) for b in selection.blocks)
    assert "museums & cafes" in text  # escaped in PML, restored by the parser


def unsupported(x):
    y = x + 1
    return str(y)


def test_unsupported_statements_name_the_line():
    with pytest.raises(PromptCompileError, match=r"line \d+: Assign is not supported"):
        compile_prompt(unsupported)
