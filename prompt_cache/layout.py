"""Layout: token ids and positions for every module of a schema, and the selection a prompt makes.

The schema fixes positions (the paper's key point: a module's KV is only reusable at the positions
it was encoded at). Walking the schema in document order with a running offset:

* text adds its tokens; ``<system>/<user>/<assistant>`` add the chat template's markers around
  their content;
* a ``<param len=N>`` reserves N positions, filled while caching with its ``scaffold`` text (padded)
  or a filler token; at serve time an argument's tokens take the first positions of the slot;
* a nested ``<module>`` starts at the current offset and advances it by its whole length;
* the members of a ``<union>`` all start at the same offset, which then advances by the longest.

A :class:`Block` is what gets encoded and cached: one module's *own* tokens (its text, markers and
parameter fillers, not its nested modules, which are blocks of their own). Positions inside a block
are increasing but may have gaps where nested modules sit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from prompt_cache.pml import (
    ArgumentTooLongError,
    Module,
    ModuleRef,
    Param,
    PMLError,
    Prompt,
    Role,
    Schema,
    SchemaMismatchError,
    Text,
    Union,
    UnknownModuleError,
)


class TokenizerLike(Protocol):
    bos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...


# -- chat markers ---------------------------------------------------------------------------------
_SENTINEL = "\u2063PML\u2063"


@dataclass(frozen=True)
class ChatFormat:
    """The text a chat template puts before and after a message of each role."""

    markers: dict[str, tuple[str, str]]
    generation_prefix: str = ""  # opens the assistant's turn after the prompt's last user text

    @classmethod
    def plain(cls) -> ChatFormat:
        return cls({"system": ("System: ", "\n"), "user": ("User: ", "\n"), "assistant": ("Assistant: ", "\n")},
                   "Assistant:")

    @classmethod
    def gemma(cls) -> ChatFormat:
        # Gemma has no system role: its template folds the system text into a user turn.
        user = ("<start_of_turn>user\n", "<end_of_turn>\n")
        return cls({"system": user, "user": user, "assistant": ("<start_of_turn>model\n", "<end_of_turn>\n")},
                   "<start_of_turn>model\n")

    @classmethod
    def for_tokenizer(cls, tokenizer: object) -> ChatFormat:
        """Markers from the tokenizer's chat template; Gemma's turn tokens; else plain labels."""
        fmt = _from_template(tokenizer)
        if fmt is not None:
            return fmt
        if _is_single_token(tokenizer, "<start_of_turn>"):
            return cls.gemma()
        return cls.plain()


def _from_template(tokenizer: object) -> ChatFormat | None:
    apply = getattr(tokenizer, "apply_chat_template", None)
    if apply is None:
        return None
    markers = {}
    try:
        for role in ("system", "user", "assistant"):
            rendered = apply([{"role": role, "content": _SENTINEL}], add_generation_prompt=False)
            if not isinstance(rendered, str) or _SENTINEL not in rendered:
                return None
            before, after = rendered.split(_SENTINEL, 1)
            markers[role] = (before.removeprefix("<bos>").removeprefix("<s>"), after)
    except Exception:  # no template, or one that rejects a lone system/assistant message
        return None
    return ChatFormat(markers, markers["assistant"][0])


def _is_single_token(tokenizer: object, text: str) -> bool:
    try:
        return len(tokenizer.encode(text, add_special_tokens=False)) == 1
    except Exception:
        return False


# -- layout -----------------------------------------------------------------------------------------
@dataclass
class ParamSlot:
    name: str
    start: int  # first reserved position
    length: int
    index: int  # index of the slot's first token within its block


@dataclass
class Block:
    """One module's own tokens: the unit that is encoded once and cached."""

    path: tuple[str, ...]  # module names from the schema root; () is the root itself
    cache: bool = True
    token_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    params: dict[str, ParamSlot] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def key(self) -> str:
        return "/".join(self.path) or "<root>"


@dataclass
class ModuleLayout:
    module: Module
    block: Block
    start: int
    length: int
    children: dict[str, ModuleLayout] = field(default_factory=dict)
    unions: list[list[str]] = field(default_factory=list)  # member names of each union
    union_defaults: list[str | None] = field(default_factory=list)  # scaffold member or None


@dataclass
class Selection:
    """What one prompt uses: blocks in position order, arguments, and the uncached text after them."""

    blocks: list[Block]
    args: dict[str, dict[str, list[int]]]  # block key -> param name -> argument token ids
    text_ids: list[int]
    text_positions: list[int]

    @property
    def num_tokens(self) -> int:
        return sum(len(b) for b in self.blocks) + len(self.text_ids)


class SchemaLayout:
    """A schema with token ids and positions assigned; selects the blocks a prompt imports."""

    def __init__(self, schema: Schema, tokenizer: TokenizerLike, chat: ChatFormat | None = None,
                 filler_token_id: int | None = None):
        self.schema, self.tokenizer = schema, tokenizer
        self.chat = chat or ChatFormat.for_tokenizer(tokenizer)
        self.filler_token_id = _filler(tokenizer) if filler_token_id is None else filler_token_id
        self.blocks: dict[tuple[str, ...], Block] = {}
        root_block = Block(path=())
        bos = getattr(tokenizer, "bos_token_id", None)
        offset = 0
        if bos is not None:
            root_block.token_ids.append(bos)
            root_block.positions.append(0)
            offset = 1
        self.root = self._module(schema.root, (), offset, root_block)
        self.length = self.root.start + self.root.length  # where a prompt's own text starts

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    # ------------------------------------------------------------------------------------------
    def _module(self, module: Module, path: tuple[str, ...], start: int, block: Block | None = None) -> ModuleLayout:
        block = block or Block(path=path, cache=module.cache)
        self.blocks[path] = block
        node = ModuleLayout(module, block, start, 0)
        end = self._children(module.children, node, start)
        node.length = end - start
        return node

    def _children(self, children: list, node: ModuleLayout, offset: int) -> int:
        block = node.block
        for c in children:
            if isinstance(c, Text):
                offset = self._append(block, self.encode_text(_compact(c.text)), offset)
            elif isinstance(c, Role):
                before, after = self.chat.markers[c.role]
                offset = self._append(block, self.encode_text(before), offset)
                offset = self._children(c.children, node, offset)
                offset = self._append(block, self.encode_text(after), offset)
            elif isinstance(c, Param):
                block.params[c.name] = ParamSlot(c.name, offset, c.length, len(block))
                offset = self._append(block, self._param_fill(c), offset)
            elif isinstance(c, Module):
                child = self._module(c, (*block.path, c.name), offset)
                node.children[c.name] = child
                offset += child.length
            elif isinstance(c, Union):
                members = [self._module(m, (*block.path, m.name), offset) for m in c.members]
                for m in members:
                    node.children[m.module.name] = m
                node.unions.append([m.module.name for m in members])
                node.union_defaults.append(c.scaffold)
                offset += max(m.length for m in members)
        return offset

    def _param_fill(self, p: Param) -> list[int]:
        ids = self.encode_text(p.scaffold) if p.scaffold else []
        if len(ids) > p.length:
            raise ArgumentTooLongError(f"scaffold of parameter {p.name!r} has {len(ids)} tokens, len is {p.length}",
                                       p.line, "parameter")
        return ids + [self.filler_token_id] * (p.length - len(ids))

    @staticmethod
    def _append(block: Block, ids: list[int], offset: int) -> int:
        block.token_ids.extend(ids)
        block.positions.extend(range(offset, offset + len(ids)))
        return offset + len(ids)

    # ------------------------------------------------------------------------------------------
    def select(self, prompt: Prompt | str) -> Selection:
        """The blocks, arguments and text a prompt uses (raises a :class:`PMLError` naming the line)."""
        if isinstance(prompt, str):
            prompt = Prompt.parse(prompt)
        if prompt.schema != self.schema.name:
            raise SchemaMismatchError(f"prompt uses schema {prompt.schema!r} but this is schema "
                                      f"{self.schema.name!r}", prompt.line, "prompt")
        blocks: list[Block] = [self.root.block]
        args: dict[str, dict[str, list[int]]] = {}
        self._select(self.root, prompt.modules, blocks, args)
        blocks.sort(key=lambda b: b.positions[0] if b.positions else 0)
        text_ids = self._prompt_text(prompt)
        return Selection(blocks, args, text_ids, list(range(self.length, self.length + len(text_ids))))

    def _select(self, node: ModuleLayout, refs: list[ModuleRef], blocks: list[Block], args: dict) -> None:
        chosen: dict[int, str] = {}
        for ref in refs:
            child = node.children.get(ref.name)
            if child is None:
                where = "/".join(node.block.path) or f"schema {self.schema.name!r}"
                raise UnknownModuleError(f"no module {ref.name!r} in {where}; available: "
                                         f"{sorted(node.children) or 'none'}", ref.line, ref.name)
            for u, members in enumerate(node.unions):
                if ref.name in members:
                    if u in chosen:
                        raise PMLError(f"modules {chosen[u]!r} and {ref.name!r} are members of one union; "
                                       "import at most one", ref.line, ref.name)
                    chosen[u] = ref.name
            if child.block in blocks:
                raise PMLError(f"module {ref.name!r} imported twice", ref.line, ref.name)
            blocks.append(child.block)
            args.update(self._args(child, ref))
            self._select(child, ref.children, blocks, args)
        for u, default in enumerate(node.union_defaults):
            if u not in chosen and default is not None:  # the union's scaffold member stands in
                child = node.children[default]
                blocks.append(child.block)
                self._select(child, [], blocks, args)

    def _args(self, child: ModuleLayout, ref: ModuleRef) -> dict[str, dict[str, list[int]]]:
        out: dict[str, list[int]] = {}
        for name, value in ref.args.items():
            slot = child.block.params.get(name)
            if slot is None:
                raise UnknownModuleError(f"module {ref.name!r} has no parameter {name!r}; parameters: "
                                         f"{sorted(child.block.params) or 'none'}", ref.line, ref.name)
            ids = self.encode_text(value)
            if len(ids) > slot.length:
                raise ArgumentTooLongError(f"argument {name}={value!r} is {len(ids)} tokens but the parameter "
                                           f"reserves len={slot.length}", ref.line, ref.name)
            out[name] = ids
        return {child.block.key: out} if out else {}

    def scaffold_path(self, forced: tuple[str, ...] = ()) -> list[Block]:
        """The blocks encoded together in one scaffolding pass, in position order.

        Every plain nested module, and in each union the member on ``forced`` (a module path), else
        the union's scaffold member, else its first: one consistent, non-overlapping prompt.
        """
        blocks: list[Block] = []
        self._path(self.root, forced, blocks)
        return sorted(blocks, key=lambda b: b.positions[0] if b.positions else 0)

    def _path(self, node: ModuleLayout, forced: tuple[str, ...], out: list[Block]) -> None:
        out.append(node.block)
        in_union = {name for members in node.unions for name in members}
        for name, child in node.children.items():
            if name not in in_union:
                self._path(child, forced[1:] if forced[:1] == (name,) else (), out)
        for members, default in zip(node.unions, node.union_defaults):
            pick = forced[0] if forced and forced[0] in members else (default or members[0])
            self._path(node.children[pick], forced[1:] if forced[:1] == (pick,) else (), out)

    def _prompt_text(self, prompt: Prompt) -> list[int]:
        ids: list[int] = []
        for item in prompt.text:
            if isinstance(item, Text):
                ids += self.encode_text(_compact(item.text).strip() if not ids else _compact(item.text))
            else:
                before, after = self.chat.markers[item.role]
                body = "".join(t.text for t in item.children if isinstance(t, Text)).strip()
                ids += self.encode_text(before + body + after)
        if prompt.text and isinstance(prompt.text[-1], Role) and prompt.text[-1].role != "assistant":
            ids += self.encode_text(self.chat.generation_prefix)
        return ids


def _compact(text: str) -> str:
    """Surrounding whitespace (indentation, blank lines) becomes one space; inner text is kept."""
    return re.sub(r"^\s+|\s+$", " ", text) if text.strip() else ""


def _filler(tokenizer: object) -> int:
    """The token that fills a parameter's slot while caching (the paper uses <unk>)."""
    for obj in (tokenizer, getattr(tokenizer, "hf", None)):
        for attr in ("unk_token_id", "pad_token_id"):
            value = getattr(obj, attr, None)
            if isinstance(value, int):
                return value
    return 0
