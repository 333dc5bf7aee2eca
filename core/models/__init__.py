"""Model families, one file each, all running on the forward primitive in :mod:`core.models.base`."""

from core.config import ModelConfig, UnknownArchitectureError
from core.models.base import ForwardContext, PagedCausalLM
from core.models.gemma3 import Gemma3ForCausalLM
from core.models.llama import LlamaForCausalLM

MODEL_CLASSES: dict[str, type[PagedCausalLM]] = {
    "llama": LlamaForCausalLM,
    "mistral": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
    "gemma3_text": Gemma3ForCausalLM,
}


def build_model(config: ModelConfig) -> PagedCausalLM:
    try:
        cls = MODEL_CLASSES[config.model_type]
    except KeyError:
        raise UnknownArchitectureError(f"no implementation for model_type {config.model_type!r}") from None
    return cls(config)


__all__ = ["MODEL_CLASSES", "ForwardContext", "PagedCausalLM", "build_model"]
