"""Layout: the schema fixes every module's positions; prompts select blocks and arguments."""

from __future__ import annotations

import pytest

from core.testing import tiny_tokenizer
from core.tokenizer import Tokenizer
from prompt_cache.layout import ChatFormat, SchemaLayout
from prompt_cache.pml import ArgumentTooLongError, PMLError, Schema, SchemaMismatchError, UnknownModuleError

SCHEMA = """<schema name="trip">
<system>Plan trips.</system>
<module name="plan">A trip of <param name="days" len="4"/> days
  <union scaffold="city">
    <module name="city">to a city</module>
    <module name="beach">to a sunny beach <param name="where" len="3"/></module>
  </union>
  then home.
</module>
<module name="extra">Extra notes.</module>
</schema>"""


@pytest.fixture(scope="module")
def layout() -> SchemaLayout:
    return SchemaLayout(Schema.parse(SCHEMA), Tokenizer(tiny_tokenizer()), ChatFormat.plain())


def test_positions_follow_document_order_with_gaps_for_nested_modules(layout):
    root, plan = layout.blocks[()], layout.blocks[("plan",)]
    city, beach = layout.blocks[("plan", "city")], layout.blocks[("plan", "beach")]
    extra = layout.blocks[("extra",)]
    assert root.positions == list(range(len(root)))  # <bos> + system turn, then nothing else of its own
    assert plan.positions[0] == len(root)
    assert city.positions[0] == beach.positions[0]  # union members share a start
    after_union = plan.positions[-len(layout.encode_text(" then home. "))]
    assert after_union == beach.positions[0] + max(len(city), len(beach))  # the union spans its longest member
    assert extra.positions[0] == plan.positions[-1] + 1
    assert layout.length == extra.positions[-1] + 1


def test_parameter_reserves_len_positions_filled_with_the_filler(layout):
    plan = layout.blocks[("plan",)]
    slot = plan.params["days"]
    assert plan.token_ids[slot.index : slot.index + 4] == [layout.filler_token_id] * 4
    assert plan.positions[slot.index : slot.index + 4] == list(range(slot.start, slot.start + 4))


def test_selection_uses_union_scaffold_default_and_arguments(layout):
    sel = layout.select('<prompt schema="trip"><plan days="ten"/> Go.</prompt>')
    assert [b.key for b in sel.blocks] == ["<root>", "plan", "plan/city"]
    assert sel.args == {"plan": {"days": layout.encode_text("ten")}}
    assert sel.text_positions[0] == layout.length
    sel = layout.select('<prompt schema="trip"><extra/><plan><beach where="Ni"/></plan></prompt>')
    assert [b.key for b in sel.blocks] == ["<root>", "plan", "plan/beach", "extra"]


def test_scaffold_path_forces_one_member_per_union(layout):
    assert [b.key for b in layout.scaffold_path()] == ["<root>", "plan", "plan/city", "extra"]
    assert [b.key for b in layout.scaffold_path(("plan", "beach"))] == ["<root>", "plan", "plan/beach", "extra"]


@pytest.mark.parametrize(
    ("prompt", "error", "fragment"),
    [
        ('<prompt schema="other"><plan/></prompt>', SchemaMismatchError, "schema 'other'"),
        ('<prompt schema="trip">\n<plann/></prompt>', UnknownModuleError, "no module 'plann'"),
        ('<prompt schema="trip"><plan nights="2"/></prompt>', UnknownModuleError, "no parameter 'nights'"),
        ('<prompt schema="trip"><plan days="a very long argument"/></prompt>', ArgumentTooLongError, "len=4"),
        ('<prompt schema="trip"><plan><city/><beach/></plan></prompt>', PMLError, "one union"),
    ],
)
def test_bad_prompts_fail_with_line_and_element(layout, prompt, error, fragment):
    with pytest.raises(error, match=fragment) as info:
        layout.select(prompt)
    assert info.value.line is not None


def test_chat_roles_compile_to_the_tokenizer_template():
    gemma = ChatFormat.for_tokenizer(Tokenizer(tiny_tokenizer()))  # no template: Gemma's turn format
    assert gemma.markers["user"] == ("<start_of_turn>user\n", "<end_of_turn>\n")
    assert gemma.markers["assistant"][0] == "<start_of_turn>model\n"


def test_every_example_schema_lays_out(examples_dir):
    tok = Tokenizer(tiny_tokenizer())
    for f in sorted(examples_dir.glob("*.xml")):
        if f.read_text().lstrip().startswith("<schema"):
            layout = SchemaLayout(Schema.from_file(f), tok)
            assert layout.length > 0
    mbti = SchemaLayout(Schema.from_file(examples_dir / "schema_mbti.xml"), tok)
    sel = mbti.select((examples_dir / "prompt_mbti.xml").read_text())
    assert [b.key for b in sel.blocks] == ["<root>", "E", "N", "T", "P"]
