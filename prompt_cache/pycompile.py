"""Python to PML: write a prompt as a Python function, get a schema and prompts for it.

The public prototype sketches this (``if`` becomes a module, ``match`` a union). Here it is a
static compiler over the function's syntax tree: the schema holds *every* branch, each call
selects branches by evaluating only the ``if`` tests and ``match`` subjects with the call's
arguments (the function body itself is never executed)::

    def planner(city: str, luxury: bool):
        "You are a travel planner."            # text: part of the schema's root
        if luxury:
            "Prefer five-star hotels."          # a module, imported when luxury is true
        match city:
            case "paris":
                "Paris: museums, cafes."        # a union; one member per case
            case "rome":
                "Rome: ruins, trattorias."
        return f"Plan three days in {city}."    # the prompt's own (uncached) text

    program = compile_prompt(planner)
    program.schema                 # PML text of schema "planner"
    program.prompt("rome", True)   # '<prompt schema="planner"><if0/><city-rome/>Plan three days in rome.</prompt>'

Supported statements: string expressions, ``if`` (no ``elif``/``else``) whose body is strings,
``match`` whose cases are string literals with string bodies, and a final ``return`` of a string
expression. Anything else is a :class:`PromptCompileError` naming the line.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

from prompt_cache.pml import escape


class PromptCompileError(ValueError):
    """The function uses a construct the Python-to-PML compiler does not support."""


@dataclass
class _Branch:
    module: str
    test: ast.expr | None = None  # if: the condition
    subject: ast.expr | None = None  # match: the subject and this case's value
    value: object = None


@dataclass
class PromptProgram:
    name: str
    schema: str
    _fn: Callable
    _branches: list[_Branch] = field(default_factory=list)
    _text: ast.expr | None = None

    def prompt(self, *args, **kwargs) -> str:
        """The PML prompt for one call: the modules whose conditions hold, then the returned text."""
        bound = inspect.signature(self._fn).bind(*args, **kwargs)
        bound.apply_defaults()
        env = {**self._fn.__globals__, **bound.arguments}
        imports = [b.module for b in self._branches if _selected(b, env)]
        text = "" if self._text is None else str(_eval(self._text, env))
        refs = "".join(f"<{m}/>" for m in imports)
        return f'<prompt schema="{self.name}">{refs}{escape(text)}</prompt>'


def compile_prompt(fn: Callable) -> PromptProgram:
    """Compile a prompt function (see the module docstring) into a schema and a prompt builder."""
    source = textwrap.dedent(inspect.getsource(fn))
    tree = ast.parse(source)
    func = tree.body[0]
    if not isinstance(func, ast.FunctionDef):
        raise PromptCompileError(f"{fn.__name__}: expected a plain function definition")
    name = _name(fn.__name__)
    parts: list[str] = []
    program = PromptProgram(name, "", fn)
    body = func.body
    for i, stmt in enumerate(body):
        if _is_string(stmt):
            parts.append(escape(_string(stmt)))
        elif isinstance(stmt, ast.If):
            parts.append(_compile_if(stmt, program))
        elif isinstance(stmt, ast.Match):
            parts.append(_compile_match(stmt, program))
        elif isinstance(stmt, ast.Return) and i == len(body) - 1:
            program._text = stmt.value
        else:
            raise PromptCompileError(f"line {stmt.lineno}: {type(stmt).__name__} is not supported in a prompt "
                                     "function (use strings, if, match, and a final return)")
    program.schema = f'<schema name="{name}">\n' + "\n".join(parts) + "\n</schema>"
    return program


def _compile_if(stmt: ast.If, program: PromptProgram) -> str:
    if stmt.orelse:
        raise PromptCompileError(f"line {stmt.lineno}: if with elif/else; use match for alternatives")
    module = f"if{sum(b.test is not None for b in program._branches)}"
    program._branches.append(_Branch(module, test=stmt.test))
    return f'<module name="{module}">{_strings(stmt.body, stmt.lineno)}</module>'


def _compile_match(stmt: ast.Match, program: PromptProgram) -> str:
    subject = _name(ast.unparse(stmt.subject))
    members = []
    for case in stmt.cases:
        pattern = case.pattern
        if not (isinstance(pattern, ast.MatchValue) and isinstance(pattern.value, ast.Constant)) or case.guard:
            raise PromptCompileError(f"line {pattern.lineno}: match cases must be literal values without guards")
        value = pattern.value.value
        module = f"{subject}-{_name(str(value))}"
        program._branches.append(_Branch(module, subject=stmt.subject, value=value))
        members.append(f'<module name="{module}">{_strings(case.body, pattern.lineno)}</module>')
    return "<union>" + "".join(members) + "</union>"


def _strings(body: list[ast.stmt], line: int) -> str:
    if not all(_is_string(s) for s in body):
        raise PromptCompileError(f"line {line}: a branch may only hold string literals")
    return escape(" ".join(_string(s) for s in body))


def _is_string(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _string(stmt: ast.stmt) -> str:
    return stmt.value.value  # type: ignore[attr-defined]


def _selected(b: _Branch, env: dict) -> bool:
    if b.test is not None:
        return bool(_eval(b.test, env))
    return _eval(b.subject, env) == b.value


def _eval(expr: ast.expr, env: dict):
    # Only the condition / subject / returned expression runs, with the call's arguments bound.
    return eval(compile(ast.Expression(expr), "<prompt>", "eval"), dict(env))


def _name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_") or "m"
    return name if re.match(r"[A-Za-z_]", name) else f"m{name}"
