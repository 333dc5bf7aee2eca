"""Tiny random models for fast tests: built with transformers, saved as a real checkpoint folder.

The checkpoint goes through the same loader as any real model, so tests exercise the real path
(config.json + safetensors + tokenizer files). The tokenizer is byte-level (256 byte tokens plus
<bos>/<eos>/<pad>), built locally, so nothing is downloaded.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

from core.loader import LoadedModel, load_model

FAMILIES = ("llama", "qwen2", "qwen3", "gemma3")
_SPECIALS = ["<pad>", "<eos>", "<bos>"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_hf_config(family: str, vocab_size: int = 259, num_layers: int = 4):
    import transformers as tf

    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        initializer_range=0.2, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )
    if family == "llama":
        return tf.LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=False)
    if family == "qwen2":
        return tf.Qwen2Config(**common, tie_word_embeddings=True)
    if family == "qwen3":
        return tf.Qwen3Config(**common, tie_word_embeddings=False)
    if family == "gemma3":
        layer_types = ["sliding_attention", "sliding_attention", "full_attention"]
        return tf.Gemma3TextConfig(
            **common, sliding_window=8, query_pre_attn_scalar=16,
            layer_types=[layer_types[i % 3] for i in range(num_layers)],
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        )
    raise ValueError(f"unknown tiny family {family!r}; choose from {FAMILIES}")


def save_tiny_checkpoint(family: str, path: Path, seed: int = 0, num_layers: int = 4) -> Path:
    """Write a random transformers model of ``family`` (config.json + safetensors + tokenizer) to ``path``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_hf_config(family, num_layers=num_layers), dtype=torch.float32)
    with torch.no_grad():  # norms start at 1 (or 0 for Gemma); randomise them so a wrong norm shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    path.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(path), safe_serialization=True)
    tiny_tokenizer().save_pretrained(str(path))
    return path


@functools.cache
def tiny_checkpoint(family: str = "llama", seed: int = 0, num_layers: int = 4) -> Path:
    """A cached tiny checkpoint folder for this process."""
    root = Path(tempfile.mkdtemp(prefix=f"tiny-{family}-"))
    return save_tiny_checkpoint(family, root, seed, num_layers)


def tiny_model(family: str = "llama", seed: int = 0, num_layers: int = 4) -> LoadedModel:
    """A tiny random model of ``family`` loaded through the real loader (fp32, CPU)."""
    return load_model(str(tiny_checkpoint(family, seed, num_layers)))
