"""PML, the Prompt Markup Language: schemas of reusable modules and the prompts that import them.

A *schema* declares the reusable text::

    <schema name="travel">
      <system>You are a travel planner.</system>
      <user>
        <module name="plan">Plan a trip of <param name="days" len="3"/> days.
          <union scaffold="city">                       <!-- mutually exclusive members -->
            <module name="city">to a city.</module>
            <module name="beach">to the beach.</module>
          </union>
        </module>
      </user>
    </schema>

and a *prompt* imports modules by tag name, with arguments for their parameters, then free text::

    <prompt schema="travel"><plan days="5"><beach/></plan> Suggest three hotels.</prompt>

This parser accepts the dialect of the paper's public prototype unchanged: ``<parameter name length
scaffold>`` as well as ``<param name len>``, single- or double-quoted attributes, ``cache="false"``,
``src="file"``, ``<!-- comments -->``, and module bodies holding raw source code (a ``<`` that does
not start a PML tag, such as ``a <= b``, is text). It is a small hand-written scanner rather than an
XML library because the real inputs are not well-formed XML (unescaped ``<`` in code) and because
every error must name the line and the element.

The result is a tree of plain dataclasses with no tokenizer attached; :mod:`prompt_cache.layout`
turns it into token ids and positions.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("system", "user", "assistant")
_SCHEMA_TAGS = frozenset({"schema", "module", "union", "parameter", "param", *ROLES})
_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_ATTR = re.compile(r"\s*(" + _NAME + r")\s*=\s*(\"[^\"]*\"|'[^']*')")
_TAG_HEAD = re.compile(r"<(/?)(" + _NAME + r")")
_TAG_END = re.compile(r"\s*(/?)>")
_ENTITIES = {"&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'", "&amp;": "&"}
_ENTITY_RE = re.compile("|".join(map(re.escape, _ENTITIES)))


# -- errors -----------------------------------------------------------------------------------------
class PMLError(ValueError):
    """Malformed PML. ``line`` (1-based) and ``element`` say where; the message says what."""

    def __init__(self, message: str, line: int | None = None, element: str | None = None, source: str = ""):
        where = ", ".join(
            x for x in (source, f"line {line}" if line else "", f"<{element}>" if element else "") if x
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.message, self.line, self.element, self.source = message, line, element, source

    def with_source(self, source: str) -> PMLError:
        """The same error, naming the file (or other source) it came from."""
        if self.source or not source:
            return self
        return type(self)(self.message, self.line, self.element, source)


class PMLSyntaxError(PMLError):
    """Unclosed or mismatched tags, bad attributes, text where none may be."""


class DuplicateNameError(PMLError):
    """Two modules in one scope, or two parameters in one module, share a name."""


class UnknownModuleError(PMLError):
    """A prompt imports a module (or passes an argument) that the schema does not declare."""


class SchemaMismatchError(PMLError):
    """A prompt names a different schema than the one it is served against."""


class ArgumentTooLongError(PMLError):
    """An argument has more tokens than its parameter's ``len`` reserves."""


# -- the tree ---------------------------------------------------------------------------------------
@dataclass
class Text:
    text: str
    line: int = 0


@dataclass
class Param:
    """A placeholder inside a module: ``len`` positions reserved for an argument given at serve time."""

    name: str
    length: int
    scaffold: str | None = None  # text encoded in the slot while caching (else a filler token)
    line: int = 0


@dataclass
class Role:
    """``<system>``, ``<user>``, ``<assistant>``: compiled to the model's chat-template markers."""

    role: str
    children: list[Node] = field(default_factory=list)
    line: int = 0


@dataclass
class Module:
    name: str
    children: list[Node] = field(default_factory=list)
    cache: bool = True  # cache="false": encoded with every request instead of stored
    line: int = 0

    @property
    def submodules(self) -> dict[str, Module]:
        """Modules importable directly under this one (union members included), by name."""
        return {m.name: m for m in _scope_modules(self.children)}

    @property
    def params(self) -> dict[str, Param]:
        return {p.name: p for p in _walk_own(self.children) if isinstance(p, Param)}

    @property
    def unions(self) -> list[Union]:
        return [u for u in _walk_own(self.children) if isinstance(u, Union)]


@dataclass
class Union:
    """Mutually exclusive modules sharing one start position; ``scaffold`` names the default member."""

    members: list[Module]
    scaffold: str | None = None
    line: int = 0

    @property
    def default(self) -> Module:
        """The member used when a prompt picks none (``scaffold``, else the first)."""
        if self.scaffold is None:
            return self.members[0]
        return next(m for m in self.members if m.name == self.scaffold)


Node = Text | Param | Role | Module | Union


@dataclass
class Schema:
    """The root module of a PML schema; its own text is always part of every prompt."""

    name: str
    children: list[Node] = field(default_factory=list)
    line: int = 0

    @property
    def root(self) -> Module:
        return Module(name=self.name, children=self.children, line=self.line)

    @classmethod
    def parse(cls, text: str, source: str = "", base_dir: Path | None = None) -> Schema:
        """Parse a ``<schema>`` document. ``base_dir`` resolves ``<module src="...">`` files."""
        root = _Parser(text, source, base_dir).parse_document("schema")
        try:
            return _build_schema(root)
        except PMLError as e:
            raise e.with_source(source) from None

    @classmethod
    def from_file(cls, path: str | Path) -> Schema:
        path = Path(path)
        return cls.parse(path.read_text(), source=str(path), base_dir=path.parent)


@dataclass
class ModuleRef:
    """One imported module in a prompt: ``<name arg="value"><nested/></name>``."""

    name: str
    args: dict[str, str] = field(default_factory=dict)
    children: list[ModuleRef] = field(default_factory=list)
    line: int = 0


@dataclass
class Prompt:
    schema: str
    modules: list[ModuleRef] = field(default_factory=list)
    text: list[Text | Role] = field(default_factory=list)  # the uncached text after the modules
    line: int = 0

    @classmethod
    def parse(cls, text: str, source: str = "") -> Prompt:
        root = _Parser(text, source, None, schema_tags_only=False).parse_document("prompt")
        try:
            return _build_prompt(root)
        except PMLError as e:
            raise e.with_source(source) from None


# -- scanning ---------------------------------------------------------------------------------------
@dataclass
class _Element:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[_Element | Text] = field(default_factory=list)


class _Parser:
    """Tags, comments and text -> a tree of :class:`_Element`; checks nesting and attributes."""

    def __init__(self, text: str, source: str, base_dir: Path | None, schema_tags_only: bool = True):
        self.text, self.source, self.base_dir = text, source, base_dir
        self.schema_tags_only = schema_tags_only
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self._newlines, offset - 1) + 1

    def error(self, cls: type[PMLError], message: str, offset: int, element: str | None = None) -> PMLError:
        return cls(message, self.line_of(offset), element, self.source)

    def parse_document(self, expected_root: str) -> _Element:
        top = _Element("#document", {}, 1)
        stack = [top]
        pos, text = 0, self.text
        while pos < len(text):
            lt = text.find("<", pos)
            if lt < 0:
                self._add_text(stack[-1], text[pos:], pos)
                break
            if text.startswith("<!--", lt):
                self._add_text(stack[-1], text[pos:lt], pos)
                end = text.find("-->", lt + 4)
                if end < 0:
                    raise self.error(PMLSyntaxError, "comment '<!--' is never closed with '-->'", lt)
                pos = end + 3
                continue
            head = _TAG_HEAD.match(text, lt)
            if head is None or (self.schema_tags_only and head.group(2) not in _SCHEMA_TAGS):
                # Not a PML tag: a literal '<' in the module's text (source code, comparisons).
                self._add_text(stack[-1], text[pos : lt + 1], pos)
                pos = lt + 1
                continue
            self._add_text(stack[-1], text[pos:lt], pos)
            pos = self._tag(stack, head, lt)
        if len(stack) > 1:
            open_el = stack[-1]
            raise PMLSyntaxError(f"<{open_el.tag}> opened here is never closed", open_el.line, open_el.tag,
                                 self.source)
        roots = [c for c in top.children if isinstance(c, _Element)]
        stray = [c for c in top.children if isinstance(c, Text) and c.text.strip()]
        if stray:
            raise PMLSyntaxError(f"text outside <{expected_root}>: {stray[0].text.strip()[:40]!r}",
                                 stray[0].line, None, self.source)
        if len(roots) != 1 or roots[0].tag != expected_root:
            found = ", ".join(f"<{r.tag}>" for r in roots) or "nothing"
            raise PMLSyntaxError(f"expected exactly one <{expected_root}> element, found {found}", 1,
                                 expected_root, self.source)
        return roots[0]

    def _tag(self, stack: list[_Element], head: re.Match, lt: int) -> int:
        closing, name = head.group(1) == "/", head.group(2)
        pos, attrs = head.end(), {}
        while (m := _ATTR.match(self.text, pos)) is not None:
            if m.group(1) in attrs:
                raise self.error(PMLSyntaxError, f"attribute {m.group(1)!r} given twice", lt, name)
            attrs[m.group(1)] = _unescape(m.group(2)[1:-1])
            pos = m.end()
        end = _TAG_END.match(self.text, pos)
        if end is None:
            snippet = self.text[pos : pos + 20].split("\n")[0]
            raise self.error(PMLSyntaxError, f"malformed tag: expected attribute or '>' at {snippet!r}", lt, name)
        self_closing = end.group(1) == "/"
        if closing:
            if attrs or self_closing:
                raise self.error(PMLSyntaxError, "a closing tag takes no attributes", lt, name)
            if stack[-1].tag != name:
                opened = stack[-1]
                what = f"<{opened.tag}> from line {opened.line} is still open" if len(stack) > 1 else "nothing is open"
                raise self.error(PMLSyntaxError, f"closing </{name}> but {what}", lt, name)
            stack.pop()
        else:
            if name == "module" and "src" in attrs and self.base_dir is not None:
                attrs["src"] = str(self.base_dir / attrs["src"])  # relative to the schema file
            el = _Element(name, attrs, self.line_of(lt))
            stack[-1].children.append(el)
            if not self_closing:
                stack.append(el)
        return end.end()

    def _add_text(self, parent: _Element, chunk: str, offset: int) -> None:
        if not chunk:
            return
        if parent.children and isinstance(parent.children[-1], Text):
            parent.children[-1].text += _unescape(chunk)
        else:
            parent.children.append(Text(_unescape(chunk), self.line_of(offset)))


def escape(text: str) -> str:
    """Make arbitrary text safe inside PML (its ``&`` and ``<`` become entities)."""
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _unescape(s: str) -> str:
    return _ENTITY_RE.sub(lambda m: _ENTITIES[m.group(0)], s)


# -- building the schema tree -----------------------------------------------------------------------
def _build_schema(el: _Element) -> Schema:
    name = _required(el, "name")
    _only_attrs(el, {"name"})
    children = _build_children(el, in_module=False, scope=f"schema {name!r}")
    return Schema(name=name, children=children, line=el.line)


def _build_children(el: _Element, in_module: bool, scope: str) -> list[Node]:
    out: list[Node] = []
    for c in el.children:
        if isinstance(c, Text):
            out.append(c)
        elif c.tag == "module":
            out.append(_build_module(c))
        elif c.tag == "union":
            out.append(_build_union(c))
        elif c.tag in ("parameter", "param"):
            if not in_module:
                raise PMLError("parameters may only appear inside a <module>, not at the schema's top level",
                               c.line, c.tag)
            out.append(_build_param(c))
        elif c.tag in ROLES:
            _only_attrs(c, set())
            out.append(Role(c.tag, _build_children(c, in_module, scope), c.line))
        else:
            raise PMLSyntaxError(f"<{c.tag}> is not allowed inside {scope}", c.line, c.tag)
    _check_unique(out, scope)
    return out


def _build_module(el: _Element) -> Module:
    name = _required(el, "name")
    _only_attrs(el, {"name", "cache", "src"})
    cache = el.attrs.get("cache", "true").lower()
    if cache not in ("true", "false"):
        raise PMLError(f"cache must be 'true' or 'false', got {cache!r}", el.line, f"module {name}")
    children = _build_children(el, in_module=True, scope=f"module {name!r}")
    if "src" in el.attrs:
        children.insert(0, Text(_read_src(el), el.line))
    return Module(name=name, children=children, cache=cache == "true", line=el.line)


def _read_src(el: _Element) -> str:
    path = Path(el.attrs["src"])
    if not path.exists():
        raise PMLError(f"module source file {str(path)!r} does not exist", el.line, "module")
    return path.read_text()


def _build_union(el: _Element) -> Union:
    _only_attrs(el, {"scaffold"})
    members: list[Module] = []
    for c in el.children:
        if isinstance(c, Text):
            if c.text.strip():
                raise PMLSyntaxError(f"text {c.text.strip()[:30]!r} inside <union>: only <module> may appear",
                                     c.line, "union")
        elif c.tag != "module":
            raise PMLSyntaxError(f"<{c.tag}> inside <union>: only <module> may appear", c.line, c.tag)
        else:
            members.append(_build_module(c))
    if not members:
        raise PMLError("a union needs at least one <module>", el.line, "union")
    scaffold = el.attrs.get("scaffold")
    if scaffold is not None and scaffold not in {m.name for m in members}:
        raise UnknownModuleError(f"scaffold {scaffold!r} is not a member of this union", el.line, "union")
    return Union(members=members, scaffold=scaffold, line=el.line)


def _build_param(el: _Element) -> Param:
    name = _required(el, "name")
    _only_attrs(el, {"name", "len", "length", "scaffold"})
    raw = el.attrs.get("len", el.attrs.get("length"))
    if raw is None:
        raise PMLError(f"parameter {name!r} needs a length (len=\"N\" or length=\"N\")", el.line, el.tag)
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise PMLError(f"parameter {name!r} length must be a positive integer, got {raw!r}", el.line, el.tag)
    if any(isinstance(c, _Element) or c.text.strip() for c in el.children):
        raise PMLSyntaxError(f"parameter {name!r} takes no content; write <{el.tag} .../>", el.line, el.tag)
    return Param(name=name, length=int(raw), scaffold=el.attrs.get("scaffold"), line=el.line)


def _required(el: _Element, attr: str) -> str:
    if attr not in el.attrs:
        raise PMLError(f"missing required attribute {attr!r}", el.line, el.tag)
    value = el.attrs[attr]
    if not re.fullmatch(_NAME, value):
        raise PMLError(f"{attr}={value!r} is not a valid name (letters, digits, _ . -)", el.line, el.tag)
    return value


def _only_attrs(el: _Element, allowed: set[str]) -> None:
    extra = sorted(set(el.attrs) - allowed)
    if extra:
        raise PMLError(f"unknown attribute {extra[0]!r} (allowed: {sorted(allowed) or 'none'})", el.line, el.tag)


def _scope_modules(children: list[Node]) -> list[Module]:
    """Modules a prompt can name at this level: direct children and union members, through role tags."""
    out: list[Module] = []
    for c in children:
        if isinstance(c, Module):
            out.append(c)
        elif isinstance(c, Union):
            out.extend(c.members)
        elif isinstance(c, Role):
            out.extend(_scope_modules(c.children))
    return out


def _walk_own(children: list[Node]):
    """A module's own nodes (through role tags, not into nested modules or union members)."""
    for c in children:
        yield c
        if isinstance(c, Role):
            yield from _walk_own(c.children)


def _check_unique(children: list[Node], scope: str) -> None:
    seen: dict[str, int] = {}
    for m in _scope_modules(children):
        if m.name in seen:
            raise DuplicateNameError(f"module {m.name!r} already declared in {scope} at line {seen[m.name]}",
                                     m.line, "module")
        seen[m.name] = m.line
    params: dict[str, int] = {}
    for p in _walk_own(children):
        if isinstance(p, Param):
            if p.name in params:
                raise DuplicateNameError(f"parameter {p.name!r} already declared in {scope} at line "
                                         f"{params[p.name]}", p.line, "parameter")
            params[p.name] = p.line


# -- building the prompt tree -----------------------------------------------------------------------
def _build_prompt(el: _Element) -> Prompt:
    schema = el.attrs.get("schema", "")
    _only_attrs(el, {"schema"})
    prompt = Prompt(schema=schema, line=el.line)
    for c in el.children:
        if isinstance(c, Text):
            if not c.text.strip():
                continue
            prompt.text.append(c)
        elif c.tag in ROLES:
            _only_attrs(c, set())
            prompt.text.append(Role(c.tag, _prompt_role_children(c), c.line))
        else:
            if prompt.text:
                raise PMLSyntaxError(f"module <{c.tag}> after the prompt's text: import modules first, "
                                     "then write the text", c.line, c.tag)
            prompt.modules.append(_build_ref(c))
    return prompt


def _prompt_role_children(el: _Element) -> list[Node]:
    out: list[Node] = []
    for c in el.children:
        if isinstance(c, Text):
            out.append(c)
        elif c.tag in ROLES:
            raise PMLSyntaxError(f"<{c.tag}> nested in <{el.tag}>", c.line, c.tag)
        else:
            raise PMLSyntaxError(f"module <{c.tag}> inside <{el.tag}>: a prompt's role tags hold text only",
                                 c.line, c.tag)
    return out


def _build_ref(el: _Element) -> ModuleRef:
    ref = ModuleRef(name=el.tag, args=dict(el.attrs), line=el.line)
    for c in el.children:
        if isinstance(c, Text):
            if c.text.strip():
                raise PMLSyntaxError(f"text {c.text.strip()[:30]!r} inside module reference <{el.tag}>: "
                                     "pass values as attributes", c.line, el.tag)
        else:
            ref.children.append(_build_ref(c))
    return ref
