"""The PML parser: the paper's real schemas parse unchanged; malformed input fails with line and element."""

from __future__ import annotations

import pytest

from prompt_cache.pml import (
    ArgumentTooLongError,
    DuplicateNameError,
    PMLError,
    PMLSyntaxError,
    Prompt,
    Schema,
    SchemaMismatchError,
    UnknownModuleError,
)


def test_every_example_file_parses_unchanged(examples_dir):
    files = sorted(examples_dir.glob("*.xml"))
    assert len(files) >= 13
    for f in files:
        text = f.read_text()
        parsed = Prompt.parse(text, str(f)) if text.lstrip().startswith("<prompt") else Schema.from_file(f)
        assert parsed is not None


def test_example_schemas_expose_their_modules_and_unions(examples_dir):
    mbti = Schema.from_file(examples_dir / "schema_mbti.xml")
    assert [u.scaffold for u in mbti.root.unions] == ["EI", "ST", "TF", "JP"]
    assert {"E", "I", "N", "P"} <= set(mbti.root.submodules)
    travel = Schema.from_file(examples_dir / "parameterized_prompts.xml")
    plan = travel.root.submodules["travel-plan"]
    assert plan.params["duration"].length == 5
    assert set(plan.submodules) >= {"domestic", "overseas"}
    assert "maldives" in plan.submodules["overseas"].submodules
    code = Schema.from_file(examples_dir / "schema_code_generation.xml")
    preface = code.root.submodules["preface"]
    assert preface.params["param-name"].scaffold == "[to be filled later]"
    assert preface.submodules["system2"].cache is False  # union inside <system> inside a module


def test_source_code_with_less_than_signs_stays_text(examples_dir):
    game = Schema.from_file(examples_dir / "code_generation_game.xml")
    text = "".join(t.text for t in game.root.submodules["map.py"].children if hasattr(t, "text"))
    assert "0 <= position[0] < self.grid_size" in text


def test_example_prompt_imports_modules_by_tag(examples_dir):
    prompt = Prompt.parse((examples_dir / "prompt_mbti.xml").read_text())
    assert prompt.schema == "mbti"
    assert [m.name for m in prompt.modules] == ["E", "N", "T", "P"]


def test_prompt_arguments_nested_refs_and_trailing_roles():
    p = Prompt.parse('<prompt schema="s">\n<plan days="5"><beach/></plan>\n<user>Hi &amp; bye</user></prompt>')
    assert p.modules[0].args == {"days": "5"} and p.modules[0].children[0].name == "beach"
    assert p.text[0].role == "user" and p.text[0].children[0].text == "Hi & bye"


@pytest.mark.parametrize(
    ("text", "error", "line", "fragment"),
    [
        ('<schema name="s">\n<module name="a">\n text\n</schema>', PMLSyntaxError, 4, "line 2 is still open"),
        ('<schema name="s">\n<module name="a">x\n', PMLSyntaxError, 2, "never closed"),
        ('<schema name="s">\n<module name="a">x</module>\n<module name="a">y</module></schema>',
         DuplicateNameError, 3, "module 'a' already declared"),
        ('<schema name="s"><module name="a">\n<param name="p" len="2"/><param name="p" len="3"/></module></schema>',
         DuplicateNameError, 2, "parameter 'p'"),
        ('<schema name="s">\n<union><module name="a">x</module>\n<param name="p" len="1"/></union></schema>',
         PMLSyntaxError, 3, "only <module>"),
        ('<schema name="s">\n<param name="p" len="2"/></schema>', PMLError, 2, "only appear inside a <module>"),
        ('<schema name="s"><module name="a">\n<param name="p"/></module></schema>', PMLError, 2, "needs a length"),
        ('<schema name="s">\n<union scaffold="z"><module name="a">x</module></union></schema>',
         UnknownModuleError, 2, "scaffold 'z'"),
        ('<schema>x</schema>', PMLError, 1, "missing required attribute 'name'"),
        ('<schema name="s">\n<module name="a" colour="red">x</module></schema>', PMLError, 2, "unknown attribute"),
        ('<schema name="s"><!-- open comment </schema>', PMLSyntaxError, 1, "comment"),
    ],
)
def test_malformed_schema_errors_name_line_and_element(text, error, line, fragment):
    with pytest.raises(error) as info:
        Schema.parse(text, source="t.xml")
    assert info.value.line == line
    assert fragment in str(info.value)
    assert f"line {line}" in str(info.value) and str(info.value).startswith("t.xml")


def test_prompt_errors_name_line_and_element():
    with pytest.raises(PMLSyntaxError, match=r"line 2.*after the prompt's text"):
        Prompt.parse('<prompt schema="s">hello\n<a/></prompt>')
    with pytest.raises(PMLSyntaxError, match="exactly one <prompt>"):
        Prompt.parse('<schema name="s"></schema>')
    with pytest.raises(PMLSyntaxError, match="pass values as attributes"):
        Prompt.parse('<prompt schema="s"><a>text</a></prompt>')


def test_error_classes_are_value_errors_with_location():
    err = SchemaMismatchError("wrong", 3, "prompt", "p.xml")
    assert isinstance(err, ValueError) and str(err) == "p.xml, line 3, <prompt>: wrong"
    assert issubclass(ArgumentTooLongError, PMLError)
