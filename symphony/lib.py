"""A small user-space library for LIPs, built only from syscalls (like libc over the kernel).

:class:`Context` wraps one open KV file with the usual loop: feed tokens, predict, sample,
repeat. It defers the last sampled token (``pending``) so it is appended together with whatever
comes next, so a turn never costs an extra forward just to store one token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from symphony.syscalls import LIP, Distribution


class Context:
    def __init__(self, lip: LIP, fd: int):
        self.lip, self.fd = lip, fd
        self.pending: list[int] = []  # tokens to append with the next predict

    def fill(self, token_ids: Sequence[int]) -> None:
        """Queue tokens; they are appended to the file by the next predict or :meth:`flush`."""
        self.pending.extend(int(t) for t in token_ids)

    def fill_text(self, text: str) -> None:
        self.fill(self.lip.tokenize(text))

    async def flush(self) -> None:
        if self.pending:
            await self.lip.append(self.fd, self.pending)
            self.pending = []

    async def next_dist(self) -> Distribution:
        """Append the pending tokens and return the distribution of the token after them."""
        if not self.pending:
            raise ValueError("next_dist needs at least one pending token (fill first)")
        dist = await self.lip.predict(self.fd, self.pending)
        self.pending = []
        return dist

    async def generate(
        self,
        max_new_tokens: int,
        stop_token_ids: Sequence[int] | None = None,
        temperature: float = 0.0,
        allowed: Callable[[list[int]], torch.Tensor | Sequence[int] | None] | None = None,
    ) -> list[int]:
        """Sample up to ``max_new_tokens`` tokens; the last one stays pending for the next call.

        ``allowed(generated_so_far)`` may restrict each step to a set of token ids (constrained
        decoding); ``None`` from it means unrestricted.
        """
        stop = set(self.lip.eos_token_ids if stop_token_ids is None else stop_token_ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            dist = await self.next_dist()
            token = self.lip.sample(dist, temperature, allowed=allowed(out) if allowed else None)
            out.append(token)
            self.pending = [token]
            if token in stop:
                break
        return out

    def fork(self, path: str | None = None) -> Context:
        """A copy-on-write branch of this context, pending tokens included."""
        child = Context(self.lip, self.lip.fork(self.fd, path))
        child.pending = list(self.pending)
        return child
