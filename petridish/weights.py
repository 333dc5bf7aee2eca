"""Model weights shared by the service and every user process (one copy in memory, not N+1).

The paper's Petridish maps the model's weights into every per-user process read-only, so adding
a user costs its KV, not another model. We do the same with torch's shared memory: the service's
parameters are moved into shared memory once (:meth:`SharedWeights.from_model`), and each spawned
user process receives handles to that memory (torch's multiprocessing pickler passes the file
descriptors) and builds its model around it without reading the checkpoint (:meth:`load`).

Caveat recorded in the threat model: the mapping is not enforced read-only by the OS here (torch
maps shared storage read-write), so a compromised user process could corrupt the weights that
other processes use. Integrity of the weights is not a goal of this reproduction; confidentiality
of prompts is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.multiprocessing  # registers the shared-memory pickling of tensors

from core.config import ModelConfig
from core.models import build_model


@dataclass
class SharedWeights:
    config: ModelConfig
    state: dict[str, torch.Tensor]  # in shared memory
    tokenizer: Any
    attention_backend: str = "auto"

    @classmethod
    def from_model(cls, model, tokenizer) -> SharedWeights:
        """Move ``model``'s parameters into shared memory in place (the caller keeps using it)."""
        model.share_memory()
        return cls(model.config, dict(model.state_dict()), tokenizer, model.attention_backend)

    def load(self) -> tuple[Any, Any]:
        """Build the model around the shared tensors (no copy, no checkpoint read)."""
        with torch.device("meta"):
            model = build_model(self.config)
        model.load_state_dict(self.state, assign=True, strict=True)
        model.eval()
        model.attention_backend = self.attention_backend
        for p in model.parameters():
            p.requires_grad_(False)
        return model, self.tokenizer
