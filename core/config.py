"""Model and engine configuration: plain dataclasses passed down, no global state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")


class UnknownArchitectureError(ValueError):
    """A checkpoint names a model type this repository has no implementation for."""


@dataclass
class ModelConfig:
    """The shape and numerics of a decoder-only transformer (the union of the families we run)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    attention_bias: bool = False
    qk_norm: bool = False  # Qwen3, Gemma 3
    # Per layer: None = global attention, else the window in tokens (Gemma 3 local layers, Mistral).
    sliding_windows: list[int | None] = field(default_factory=list)
    # Gemma 3 only: local layers use a different RoPE base; query scaling is query_pre_attn_scalar**-0.5.
    rope_local_theta: float | None = None
    query_pre_attn_scalar: float | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.model_type not in SUPPORTED_ARCHITECTURES:
            raise UnknownArchitectureError(
                f"unknown architecture {self.model_type!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if not self.sliding_windows:
            self.sliding_windows = [None] * self.num_layers
        if len(self.sliding_windows) != self.num_layers:
            raise ValueError(f"{len(self.sliding_windows)} sliding windows for {self.num_layers} layers")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")

    @property
    def family(self) -> str:
        return "gemma3" if self.model_type == "gemma3_text" else "llama"

    @property
    def attention_scale(self) -> float:
        scalar = self.query_pre_attn_scalar if self.query_pre_attn_scalar else self.head_dim
        return float(scalar) ** -0.5

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build from a Hugging Face ``config.json`` (transformers 4.x or 5.x spellings)."""
        if cfg.get("model_type") == "gemma3" and "text_config" in cfg:
            cfg = {**cfg["text_config"], "model_type": "gemma3_text"}
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            arch = cfg.get("architectures") or model_type
            raise UnknownArchitectureError(
                f"unknown architecture {arch!r} (model_type={model_type!r}); "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        num_layers = cfg["num_hidden_layers"]
        num_heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // num_heads
        rope = cfg.get("rope_parameters") or {}
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        common = dict(
            model_type=model_type,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=cfg.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )
        if model_type == "gemma3_text":
            layer_types = cfg.get("layer_types") or [
                "full_attention" if (i + 1) % cfg.get("sliding_window_pattern", 6) == 0 else "sliding_attention"
                for i in range(num_layers)
            ]
            window = cfg.get("sliding_window", 512)
            return cls(
                **common,
                rope_theta=_rope_theta(rope.get("full_attention", rope), cfg.get("rope_theta", 1_000_000.0)),
                rope_local_theta=_rope_theta(rope.get("sliding_attention", {}), cfg.get("rope_local_base_freq", 1e4)),
                rope_scaling=_rope_scaling(rope.get("full_attention", {}), cfg.get("rope_scaling")),
                hidden_act=cfg.get("hidden_activation", "gelu_pytorch_tanh"),
                attention_bias=cfg.get("attention_bias", False),
                qk_norm=True,
                sliding_windows=[window if t == "sliding_attention" else None for t in layer_types],
                query_pre_attn_scalar=cfg.get("query_pre_attn_scalar", head_dim),
            )
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", model_type == "mistral") else None
        layer_types = cfg.get("layer_types")
        windows = (
            [window if t == "sliding_attention" else None for t in layer_types]
            if layer_types and window
            else [window] * num_layers
        )
        return cls(
            **common,
            rope_theta=_rope_theta(rope, 10000.0),
            rope_scaling=_rope_scaling(rope, cfg.get("rope_scaling")),
            hidden_act=cfg.get("hidden_act", "silu"),
            attention_bias=cfg.get("attention_bias", model_type == "qwen2"),
            qk_norm=model_type == "qwen3",
            sliding_windows=windows,
        )


def _rope_theta(params: dict[str, Any], default: float) -> float:
    return float(params.get("rope_theta", default)) if isinstance(params, dict) else default


def _rope_scaling(params: dict[str, Any], legacy: dict[str, Any] | None) -> dict[str, Any] | None:
    scaling = legacy or params
    if not isinstance(scaling, dict):
        return None
    kind = scaling.get("rope_type") or scaling.get("type")
    return None if kind in (None, "default") else dict(scaling, rope_type=kind)


@dataclass
class EngineConfig:
    """Knobs of the serving engine (Hydra's `engine` group maps onto this)."""

    page_size: int = 16
    num_pages: int = 2048
    max_batch_size: int = 32
    prefill_chunk_size: int = 512  # chunked prefill: at most this many prompt tokens per request per step
    max_batch_tokens: int = 2048  # tokens per engine step over all requests
    attention_backend: str = "auto"
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
