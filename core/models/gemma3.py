"""Gemma 3 (text): local sliding-window layers and global layers, q/k RMSNorm, four norms per block.

Differences from Llama, each as transformers implements them:
* embeddings are scaled by sqrt(hidden_size) (in the weights' dtype);
* RMSNorm multiplies by (1 + w) in fp32;
* every block normalises both the input and the output of attention and of the MLP;
* local layers attend to the last ``sliding_window`` positions with RoPE base 10k, global
  layers attend to everything with base 1M; queries are scaled by query_pre_attn_scalar**-0.5;
* the MLP is GeGLU with the tanh approximation of GELU; the LM head is tied to the embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

from core.config import ModelConfig
from core.models.base import ForwardContext, PagedCausalLM
from core.models.layers import GatedMLP, RMSNorm, apply_rope


class Gemma3Attention(nn.Module):
    def __init__(self, c: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.c = layer, c
        self.window = c.sliding_windows[layer]
        self.theta = c.rope_local_theta if self.window is not None else c.rope_theta
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)
        self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps, offset=1.0)
        self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps, offset=1.0)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        c, T = self.c, x.shape[0]
        cos, sin = ctx.rope(self.theta)
        q = apply_rope(self.q_norm(self.q_proj(x).view(T, c.num_heads, c.head_dim)), cos, sin)
        ctx.begin_external(self.layer, q)  # queries leave before K/V are projected (overlap)
        k = apply_rope(self.k_norm(self.k_proj(x).view(T, c.num_kv_heads, c.head_dim)), cos, sin)
        v = self.v_proj(x).view(T, c.num_kv_heads, c.head_dim)
        out = ctx.attend(self.layer, q, k, v, self.window)
        return self.o_proj(out.reshape(T, -1))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig, layer: int):
        super().__init__()
        eps = c.rms_norm_eps
        self.self_attn = Gemma3Attention(c, layer)
        self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act)
        self.input_layernorm = RMSNorm(c.hidden_size, eps, offset=1.0)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, eps, offset=1.0)
        self.pre_feedforward_layernorm = RMSNorm(c.hidden_size, eps, offset=1.0)
        self.post_feedforward_layernorm = RMSNorm(c.hidden_size, eps, offset=1.0)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), ctx))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3ForCausalLM(PagedCausalLM):
    def __init__(self, c: ModelConfig):
        super().__init__(c)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Gemma3DecoderLayer(c, i) for i in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, offset=1.0)
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(self.config.hidden_size**0.5, dtype=self.dtype)
        return self.embed_tokens(token_ids) * scale

    def rope_scaling_for(self, theta: float) -> dict | None:
        # Only global layers carry the configured scaling (as in transformers' Gemma 3).
        return self.config.rope_scaling if theta == self.config.rope_theta else None

    @staticmethod
    def hf_to_ours(name: str) -> str | None:
        if "rotary_emb" in name:
            return None
        name = name.removeprefix("model.language_model.").removeprefix("language_model.model.")
        return name.removeprefix("model.")
