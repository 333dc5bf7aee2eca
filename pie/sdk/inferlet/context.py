"""``Context``: a token sequence whose KV lives in pages this inferlet owns.

Tokens are *filled* into a context (pending), and a forward pass moves them into its KV pages.
The last pending token's output is the next-token distribution. A context forks cheaply: full
pages are shared (the SDK counts references), only the partly filled last page is copied with
``copy-kv-page``; a page shared this way is copied again before anyone writes into it.

:func:`next_dists` runs the pending tokens of many contexts in *one* ``forward`` host call, so an
inferlet's parallel branches (beams, thoughts) land in one batch of the engine.
"""

from componentize_py_types import Err
from wit_world.imports import allocate, inference
from wit_world.imports.inference import Distribution, ForwardPass

from inferlet.runtime import model_info, tokenize
from inferlet.sampling import sample


class PieCallError(RuntimeError):
    """A host call returned an error (a bad id, no free pages, a malformed pass)."""


def _call(fn, *args):
    try:
        return fn(*args)
    except Err as e:
        raise PieCallError(f"{fn.__name__}: {e.value}") from None


# Pages shared between this inferlet's own contexts (forks): virtual page id -> reference count.
_page_refs = {}


def _alloc_pages(n: int) -> list:
    if n <= 0:
        return []
    pages = list(_call(allocate.alloc_kv_pages, n))
    for p in pages:
        _page_refs[p] = 1
    return pages


def _release_pages(pages) -> None:
    dead = []
    for p in pages:
        _page_refs[p] -= 1
        if _page_refs[p] == 0:
            del _page_refs[p]
            dead.append(p)
    if dead:
        _call(allocate.dealloc_kv_pages, dead)


class Context:
    def __init__(self, add_bos: bool = True):
        info = model_info()
        self.page_size = info.kv_page_size
        self.pages = []  # virtual KV page ids, in order
        self.kv_len = 0  # tokens whose KV is in self.pages
        self.tokens = []  # every token forwarded so far (the text of the context)
        self.positions = []  # position of each KV-resident token, in page order
        self.pending = []  # (token, position) filled but not forwarded yet
        self.next_position = 0
        self._in, self._out = [], []  # embed ids this context owns (reused every pass)
        if add_bos and info.bos_token_id is not None:
            self.fill_tokens([info.bos_token_id])

    # -- inputs ----------------------------------------------------------------------------
    def fill(self, text: str) -> None:
        self.fill_tokens(tokenize(text))

    def fill_tokens(self, tokens) -> None:
        for t in tokens:
            self.pending.append((int(t), self.next_position))
            self.next_position += 1

    # -- forward ---------------------------------------------------------------------------
    def _embeds(self, n_in: int, n_out: int) -> None:
        if len(self._in) < n_in:
            self._in += list(_call(allocate.alloc_embeds, max(n_in - len(self._in), 16)))
        if len(self._out) < n_out:
            self._out += list(_call(allocate.alloc_embeds, n_out - len(self._out)))

    def _reserve(self, n: int) -> None:
        ps = self.page_size
        if self.kv_len % ps and _page_refs.get(self.pages[-1], 1) > 1:
            # The partly filled last page is shared with a fork: copy it before writing.
            (fresh,) = _alloc_pages(1)
            _call(allocate.copy_kv_page, self.pages[-1], fresh, 0, 0, self.kv_len % ps)
            _release_pages([self.pages[-1]])
            self.pages[-1] = fresh
        need = -(-(self.kv_len + n) // ps) - len(self.pages)
        self.pages += _alloc_pages(need)

    def _prepare(self, outputs, mask=None) -> ForwardPass:
        n = len(self.pending)
        if n == 0:
            raise PieCallError("forward: the context has no pending tokens (fill some first)")
        self._reserve(n)
        self._embeds(n, len(outputs))
        _call(
            inference.embed_tokens, self._in[:n], [t for t, _ in self.pending], [p for _, p in self.pending]
        )
        return ForwardPass(
            kv_pages=list(self.pages), kv_len=self.kv_len + n, input_embeds=self._in[:n],
            output_embeds=self._out[: len(outputs)], output_indices=list(outputs), mask=mask,
        )

    def _commit(self) -> None:
        self.tokens += [t for t, _ in self.pending]
        self.positions += [p for _, p in self.pending]
        self.kv_len += len(self.pending)
        self.pending = []

    def forward(self, outputs=(), mask=None) -> list:
        """Forward every pending token; return the output embeds (one per index in ``outputs``)."""
        fp = self._prepare(list(outputs), mask)
        _call(inference.forward, [fp])
        self._commit()
        return fp.output_embeds

    def flush(self) -> None:
        """Forward all pending tokens but the last (which the next ``next_dist`` will run)."""
        if len(self.pending) > 1:
            last = self.pending.pop()
            self.forward()
            self.pending = [last]

    def dist(self, embed: int, k: int = 1, temperature: float = 0.0, allowed=None) -> Distribution:
        return _call(inference.get_next_dist, embed, k, temperature, allowed)

    def next_dist(self, k: int = 1, temperature: float = 0.0, allowed=None) -> Distribution:
        return next_dists([self], k, temperature, [allowed])[0]

    # -- generation ------------------------------------------------------------------------
    def generate(self, max_tokens: int, temperature: float = 0.0, top_k: int = 64, top_p: float = 1.0,
                 seed=None, stop_ids=None, on_token=None) -> list:
        """Decode up to ``max_tokens`` tokens (greedy at temperature 0); stop after an EOS."""
        return generate_all([self], max_tokens, temperature, top_k, top_p, seed, stop_ids, on_token)[0]

    # -- structure -------------------------------------------------------------------------
    def fork(self) -> "Context":
        """A new context with the same KV: full pages shared, the partial last page copied."""
        child = Context.__new__(Context)
        child.page_size, child.kv_len = self.page_size, self.kv_len
        child.tokens, child.positions = list(self.tokens), list(self.positions)
        child.pending, child.next_position = list(self.pending), self.next_position
        child._in, child._out = [], []
        child.pages = list(self.pages)
        for p in child.pages:
            _page_refs[p] += 1
        return child

    def truncate(self, kv_len: int) -> None:
        """Keep the first ``kv_len`` KV-resident tokens (drops pending ones; speculative rollback)."""
        if not 0 <= kv_len <= self.kv_len:
            raise PieCallError(f"truncate: cannot keep {kv_len} of {self.kv_len} tokens")
        drop = len(self.tokens) - (self.kv_len - kv_len)
        self.tokens, self.positions = self.tokens[:drop], self.positions[:kv_len]
        self.pending, self.kv_len = [], kv_len
        keep = -(-kv_len // self.page_size)
        _release_pages(self.pages[keep:])
        del self.pages[keep:]
        self.next_position = self.positions[-1] + 1 if self.positions else 0

    def drop_middle(self, sink_pages: int, window_pages: int) -> int:
        """Attention sink: keep the first ``sink_pages`` and the last ``window_pages`` full pages
        (plus the partial one); free the pages between. Positions are not renumbered. Returns
        the number of pages freed."""
        full = self.kv_len // self.page_size
        if full <= sink_pages + window_pages:
            return 0
        gone = self.pages[sink_pages : full - window_pages]
        _release_pages(gone)
        ps = self.page_size
        self.positions = self.positions[: sink_pages * ps] + self.positions[(full - window_pages) * ps :]
        self.pages = self.pages[:sink_pages] + self.pages[full - window_pages :]
        self.kv_len -= len(gone) * ps
        return len(gone)

    def release(self) -> None:
        _release_pages(self.pages)
        self.pages, self.kv_len = [], 0
        if self._in or self._out:
            _call(allocate.dealloc_embeds, self._in + self._out)
        self._in, self._out = [], []

    # -- sharing across inferlets -----------------------------------------------------------
    def export(self, name: str) -> None:
        """Publish this context's KV pages (after flushing) under ``name`` for other inferlets."""
        from inferlet.runtime import store_set

        self.flush()
        _call(allocate.export_kv_pages, self.pages, name)
        store_set("pie.context." + name, repr((self.kv_len, self.tokens, self.positions, self.pending)))

    @classmethod
    def import_(cls, name: str) -> "Context":
        """A context over pages another inferlet exported (written pages are copied first)."""
        import ast

        from inferlet.runtime import store_get

        meta = store_get("pie.context." + name)
        if meta is None:
            raise PieCallError(f"import: no context exported as {name!r}")
        ctx = cls(add_bos=False)
        ctx.kv_len, ctx.tokens, ctx.positions, pending = ast.literal_eval(meta)
        ctx.pending = [tuple(p) for p in pending]
        ctx.next_position = (ctx.pending[-1][1] if ctx.pending else ctx.positions[-1]) + 1
        ctx.pages = list(_call(allocate.import_kv_pages, name))
        for p in ctx.pages:
            _page_refs[p] = 1
        return ctx


def next_dists(contexts, k: int = 1, temperature: float = 0.0, allowed=None) -> list:
    """Forward every context's pending tokens in one host call; return each next-token distribution."""
    allowed = allowed if allowed is not None else [None] * len(contexts)
    passes = [c._prepare([len(c.pending) - 1]) for c in contexts]
    _call(inference.forward, passes)
    out = []
    for c, fp, a in zip(contexts, passes, allowed):
        c._commit()
        out.append(c.dist(fp.output_embeds[0], k, temperature, a))
    return out


def generate_all(contexts, max_tokens: int, temperature: float = 0.0, top_k: int = 64, top_p: float = 1.0,
                 seed=None, stop_ids=None, on_token=None) -> list:
    """Decode all contexts in lockstep (one batched host call per step); return each one's new tokens."""
    import random

    rng = None if temperature <= 0 else random.Random(seed)
    stop = set(model_info().eos_token_ids if stop_ids is None else stop_ids)
    new = [[] for _ in contexts]
    live = list(range(len(contexts)))
    for _ in range(max_tokens):
        if not live:
            break
        dists = next_dists([contexts[i] for i in live], top_k if rng else 1, temperature)
        still = []
        for i, d in zip(live, dists):
            tok = sample(d, rng, top_p)
            new[i].append(tok)
            if on_token is not None:
                on_token(i, tok)
            if tok in stop:
                continue
            contexts[i].fill_tokens([tok])
            still.append(i)
        live = still
    return new
