"""How a process gets its copy of the model: a small picklable recipe, loaded once per process.

User processes are *spawned* (fresh interpreters, see :mod:`petridish.user_process`), so they
cannot inherit the service's model object; each one loads the same weights from the same source
(anything ``core.loader.load_model`` accepts: ``"gemma3-270m"``, a Hugging Face folder such as a
``core.testing.tiny_checkpoint``, a ``.gguf`` path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    source: str = "gemma3-270m"
    dtype: str = "float32"
    device: str = "cpu"
    attention_backend: str = "auto"

    def load(self) -> tuple[Any, Any]:
        """Return ``(model, tokenizer)`` with the weights frozen (read-only from here on)."""
        from core.loader import load_model

        loaded = load_model(self.source, dtype=self.dtype, device=self.device)
        model = loaded.model.eval()
        model.attention_backend = self.attention_backend
        for p in model.parameters():
            p.requires_grad_(False)
        return model, loaded.tokenizer
