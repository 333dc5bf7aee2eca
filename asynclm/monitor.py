"""The token monitor: CML's grammar enforced inside sampling, and the interrupt queue it guards.

It wraps the stream parser's state machine and, before every sampling step, masks the logits:

* the model may never emit ``[INTR]`` (only the system injects interrupts), nor ``[HEAD]``/``[END]``
  outside a call or trap;
* inside a call body no other tag may start, and the sequence may not end there;
* the sequence may not end while its calls are outstanding (it must ``[TRAP]`` and wait instead).

After a sampled ``[CALL]`` the monitor *forces* ``call_id [HEAD]`` (the system assigns ids, so they are
unique); after ``[TRAP]`` it forces ``[END]``. Forced tokens are appended to the next forward pass
without extra decode steps.

From ``[CALL]`` to its ``[END]`` (and ``[TRAP]`` to ``[END]``) the sequence is in a *critical section*:
an interrupt injected there would split the model's own syntax, so interrupts that arrive then are
queued and injected at the next allowed step (:meth:`TokenMonitor.may_inject`).
"""

from __future__ import annotations

import torch

from asynclm.parser import CMLStreamParser, Event, State
from asynclm.protocol import Tag
from asynclm.vocab import CMLVocab


class TokenMonitor:
    def __init__(self, vocab: CMLVocab, eos_token_ids: tuple[int, ...] = ()):
        self.vocab = vocab
        self.eos_token_ids = tuple(eos_token_ids)
        self.parser = CMLStreamParser(vocab)
        self.next_call_id = 0

    @property
    def state(self) -> State:
        return self.parser.state

    def may_inject(self) -> bool:
        """Interrupts may be injected only outside critical sections."""
        return not self.parser.in_critical_section

    def forbidden(self, outstanding_calls: int) -> list[int]:
        """Token ids that must not be sampled now (their logits are set to -inf)."""
        v = self.vocab
        if self.state is State.TEXT:
            ids = [v.id(Tag.INTR), v.id(Tag.HEAD), v.id(Tag.END)]
            if outstanding_calls:
                ids.extend(self.eos_token_ids)
            return ids
        if self.state is State.CALL_BODY:
            return [v.id(Tag.CALL), v.id(Tag.INTR), v.id(Tag.TRAP), v.id(Tag.HEAD), *self.eos_token_ids]
        # CALL_ID and TRAP are filled by forced tokens; INTR_* never happen in a generated stream.
        return [v.id(t) for t in Tag]

    def mask(self, logits: torch.Tensor, outstanding_calls: int) -> torch.Tensor:
        """``logits`` (V,) with forbidden tokens at -inf (a copy)."""
        out = logits.clone()
        ids = [i for i in self.forbidden(outstanding_calls) if i < out.shape[-1]]
        out[ids] = float("-inf")
        return out

    def accept(self, token_id: int) -> tuple[list[int], list[Event]]:
        """Record a sampled token; return the tokens forced after it and the protocol events.

        Forced tokens are fed to the parser here too, so its state is current when this returns.
        """
        events = self.parser.feed(token_id)
        forced: list[int] = []
        tag = self.vocab.tag_of(token_id)
        if tag is Tag.CALL and self.state is State.CALL_ID:
            forced = [*self.vocab.encode_text(str(self.next_call_id)), self.vocab.id(Tag.HEAD)]
            self.next_call_id += 1
        elif tag is Tag.TRAP and self.state is State.TRAP:
            forced = [self.vocab.id(Tag.END)]
        for t in forced:
            events.extend(self.parser.feed(t))
        return forced, events
