"""``PromptCache``: the public entry point. Add schemas, then generate from PML prompts.

    cache = PromptCache(engine)                      # shares the engine's model and KV pool
    cache.add_schema(Schema.from_file("travel.xml"))  # encodes every module once
    out = cache.generate('<prompt schema="travel"><plan days="5"/> Any tips?</prompt>')
    out.text, out.metrics.ttft_s

:meth:`PromptCache.generate_baseline` serves the same token sequence with no module reuse through
the plain engine (full prefill), the paper's baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.kv_cache import OutOfPagesError
from core.sampling import SamplingParams, sample
from prompt_cache.compose import ComposedPrompt, block_tokens, compose
from prompt_cache.encoder import encode_independent, encode_scaffold
from prompt_cache.layout import Block, ChatFormat, SchemaLayout, Selection
from prompt_cache.pml import PMLError, Prompt, Schema
from prompt_cache.store import ModuleStore

ENCODINGS = ("independent", "root", "scaffold")


class UnknownSchemaError(PMLError):
    """A prompt names a schema that was never added to this cache."""


@dataclass
class CacheMetrics:
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    num_prompt_tokens: int = 0  # tokens the prompt is made of (cached + computed now)
    num_cached_tokens: int = 0  # of those, read from the module store
    num_computed_tokens: int = 0  # computed in this request's prefill
    num_output_tokens: int = 0

    @property
    def tpot_s(self) -> float | None:
        if self.num_output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.num_output_tokens - 1)


@dataclass
class CacheOutput:
    token_ids: list[int]
    text: str
    metrics: CacheMetrics
    first_logits: torch.Tensor | None = None  # (vocab,) fp32: the logits the first token came from
    finish_reason: str | None = None
    extras: dict = field(default_factory=dict)


class PromptCache:
    """Modules encoded once at their schema positions, composed into prompts without recompute.

    ``store``: ``"device"`` (modules stay in the engine's KV pool; zero copy) or ``"host"``
    (modules in host memory, copied into the pool per request). ``encoding``: ``"independent"``
    (each module attends only to itself, the paper's assumption), ``"root"`` (also to the schema's
    own text before it: ``<bos>`` and the system prompt, which real models need) or ``"scaffold"``
    (each scaffold path encoded together, as the public prototype does); see
    :mod:`prompt_cache.encoder`.
    """

    def __init__(self, engine, store: str = "device", capacity_tokens: int | None = None,
                 encoding: str = "independent", chat: ChatFormat | None = None):
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.engine = engine
        self.model, self.tokenizer, self.pool = engine.model, engine.tokenizer, engine.pool
        self.store = ModuleStore(self.pool, store, capacity_tokens)
        self.encoding = encoding
        self.chat = chat
        self.schemas: dict[str, SchemaLayout] = {}

    # -- schemas ------------------------------------------------------------------------------
    def add_schema(self, schema: Schema | str | Path, encode: bool = True) -> SchemaLayout:
        """Register a schema (a :class:`Schema`, PML text or a file path) and encode its modules."""
        if isinstance(schema, Path) or (isinstance(schema, str) and not schema.lstrip().startswith("<")):
            schema = Schema.from_file(schema)
        elif isinstance(schema, str):
            schema = Schema.parse(schema)
        layout = SchemaLayout(schema, self.tokenizer, self.chat)
        if layout.length > self.model.config.max_position_embeddings:
            raise PMLError(f"schema {schema.name!r} spans {layout.length} positions but the model has "
                           f"{self.model.config.max_position_embeddings}", schema.line, "schema")
        self._drop_schema(schema.name)
        self.schemas[schema.name] = layout
        if encode:
            self.encode(schema.name)
        return layout

    def encode(self, schema_name: str, blocks: list[Block] | None = None) -> None:
        """Encode (or re-encode) cacheable blocks of a schema into the store."""
        layout = self.schemas[schema_name]
        todo = [b for b in (blocks or layout.blocks.values())
                if b.cache and len(b) and self._key(layout, b) not in self.store]
        if not todo:
            return
        if self.encoding == "scaffold":
            self._encode_scaffolded(layout, todo)
            return
        root_block = layout.blocks[()]
        root_key = self._key(layout, root_block)
        if self.encoding == "root" and root_key not in self.store:
            self._store(layout, encode_independent(self.model, self.pool, [root_block], self._allocate))
        todo = [b for b in todo if self._key(layout, b) not in self.store]
        root = None
        if self.encoding == "root" and todo:
            root = (root_block, self.store.checkout(root_key))  # shared (device) or copied in (host)
        try:
            self._store(layout, encode_independent(self.model, self.pool, todo, self._allocate, root=root))
        finally:
            if root is not None:
                self.pool.release(root[1])

    def _store(self, layout: SchemaLayout, pages: dict[str, list[int]]) -> None:
        for b in layout.blocks.values():
            if b.key in pages:
                self.store.put(self._key(layout, b), pages[b.key], len(b))

    def _encode_scaffolded(self, layout: SchemaLayout, todo: list[Block]) -> None:
        # One pass per scaffold path: the default path, then one with each missing module forced in.
        remaining = {b.path for b in todo}
        for forced in [(), *sorted(remaining)]:
            if forced and forced not in remaining:
                continue
            path = layout.scaffold_path(forced)
            pages = encode_scaffold(self.model, self.pool, path, self._allocate)
            for b in path:
                if b.key not in pages:
                    continue
                if b.path in remaining and b.cache:
                    self.store.put(self._key(layout, b), pages[b.key], len(b))
                    remaining.discard(b.path)
                else:  # encoded only as context for the others
                    self.pool.release(pages[b.key])

    def _drop_schema(self, name: str) -> None:
        old = self.schemas.pop(name, None)
        if old is not None:
            for b in old.blocks.values():
                self.store.discard(self._key(old, b))

    @staticmethod
    def _key(layout: SchemaLayout, block: Block) -> str:
        return f"{layout.schema.name}:{block.key}"

    def _allocate(self, n: int, protect: frozenset[str] = frozenset()) -> list[int]:
        """Allocate pool pages, evicting least-recently-used modules if the pool is full."""
        try:
            return self.pool.allocate(n)
        except OutOfPagesError:
            if not self.store.evict_pages(n, set(protect)):
                raise
            return self.pool.allocate(n)

    # -- serving ------------------------------------------------------------------------------
    def select(self, prompt: Prompt | str) -> tuple[SchemaLayout, Selection]:
        prompt = Prompt.parse(prompt) if isinstance(prompt, str) else prompt
        layout = self.schemas.get(prompt.schema)
        if layout is None:
            raise UnknownSchemaError(f"schema {prompt.schema!r} was not added; known: {sorted(self.schemas)}",
                                     prompt.line, "prompt")
        return layout, layout.select(prompt)

    def compose(self, prompt: Prompt | str) -> ComposedPrompt:
        """Check out the prompt's modules (encoding any that were evicted) and lay out new tokens."""
        layout, selection = self.select(prompt)
        self.encode(layout.schema.name, [b for b in selection.blocks if b.cache and len(b)])
        keys = frozenset(self._key(layout, b) for b in selection.blocks)

        def checkout(block: Block) -> list[int]:
            key = self._key(layout, block)
            if key not in self.store:  # evicted while composing: encode again
                self.encode(layout.schema.name, [block])
            if self.store.location == "host":  # make room for the copy-in, never evicting this prompt's modules
                self.store.evict_pages(self.store.num_pages(key), set(keys))
            return self.store.checkout(key)

        return compose(self.pool, selection, checkout, self.encoding)

    @torch.inference_mode()
    def generate(self, prompt: Prompt | str, params: SamplingParams | None = None) -> CacheOutput:
        """Serve one PML prompt from the cache and decode."""
        params = params or SamplingParams()
        start = time.perf_counter()
        composed = self.compose(prompt)
        try:
            (out,) = self.model.forward(self.pool, [self._reserve(composed.prefill_entry)])
            return self._decode(composed, out.logits[0], params, start)
        finally:
            composed.seq.release()

    def _reserve(self, make_entry):
        try:
            return make_entry()
        except OutOfPagesError as e:
            if not self.store.evict_pages(e.requested):
                raise
            return make_entry()

    def _decode(self, composed: ComposedPrompt, logits: torch.Tensor, params: SamplingParams,
                start: float) -> CacheOutput:
        generator = params.make_generator()
        first_logits = logits.float().cpu()
        metrics = CacheMetrics(num_prompt_tokens=composed.num_cached_tokens + len(composed.token_ids),
                               num_cached_tokens=composed.num_cached_tokens,
                               num_computed_tokens=len(composed.token_ids))
        tokens: list[int] = []
        position, reason = composed.next_position, "length"
        stop = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.tokenizer.eos_token_ids))
        limit = self.model.config.max_position_embeddings
        while True:
            token = sample(logits, params, generator)
            tokens.append(token)
            if len(tokens) == 1:
                metrics.ttft_s = time.perf_counter() - start
            if token in stop:
                reason = "stop_token"
                break
            if len(tokens) >= params.max_new_tokens or position >= limit:
                reason = "length" if len(tokens) >= params.max_new_tokens else "context_full"
                break
            if params.stop_strings and any(s in self.tokenizer.decode(tokens) for s in params.stop_strings):
                reason = "stop_string"
                break
            entry = self._reserve(lambda t=token, p=position: composed.decode_entry(t, p))
            (out,) = self.model.forward(self.pool, [entry])
            logits, position = out.logits[0], position + 1
        metrics.e2e_s = time.perf_counter() - start
        metrics.num_output_tokens = len(tokens)
        return CacheOutput(tokens, self.tokenizer.decode(tokens, skip_special_tokens=True), metrics,
                           first_logits, reason)

    # -- the baseline -------------------------------------------------------------------------
    def prompt_token_ids(self, prompt: Prompt | str) -> list[int]:
        """The prompt as one flat token sequence: what a system without Prompt Cache would prefill.

        Every imported token in position order (arguments in place of their parameter's
        placeholders, unused reserved positions dropped), then the prompt's text.
        """
        _, selection = self.select(prompt)
        return flatten(selection)

    def generate_baseline(self, prompt: Prompt | str, params: SamplingParams | None = None) -> CacheOutput:
        """The same prompt through the plain engine: full prefill at positions 0..n-1, no reuse."""
        ids = self.prompt_token_ids(prompt)
        start = time.perf_counter()
        params = params or SamplingParams()
        (res,) = self.engine.generate([ids], params)
        m = res.metrics
        metrics = CacheMetrics(ttft_s=m.ttft_s or 0.0, e2e_s=m.e2e_s or time.perf_counter() - start,
                               num_prompt_tokens=len(ids), num_computed_tokens=len(ids),
                               num_output_tokens=len(res.token_ids))
        return CacheOutput(res.token_ids, res.text, metrics, None, res.finish_reason)


def flatten(selection: Selection) -> list[int]:
    """The selection's tokens in position order with arguments substituted (see ``prompt_token_ids``)."""
    by_pos = [pt for b in selection.blocks for pt in block_tokens(b, selection.args.get(b.key, {}))]
    return [t for _, t in sorted(by_pos)] + list(selection.text_ids)
