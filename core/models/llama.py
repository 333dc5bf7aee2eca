"""The Llama family: Llama 2/3, Mistral, Qwen2 (q/k/v bias) and Qwen3 (q/k RMSNorm).

Pre-norm decoder: x + attn(norm(x)), then x + mlp(norm(x)), with a SwiGLU MLP and RoPE.
Parameter names match transformers' checkpoints so safetensors load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from core.config import ModelConfig
from core.models.base import ForwardContext, PagedCausalLM
from core.models.layers import GatedMLP, RMSNorm, apply_rope


class LlamaAttention(nn.Module):
    def __init__(self, c: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.c = layer, c
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        c, T = self.c, x.shape[0]
        cos, sin = ctx.rope(c.rope_theta)
        q = self.q_proj(x).view(T, c.num_heads, c.head_dim)  # (T, H, D)
        if c.qk_norm:
            q = self.q_norm(q)
        q = apply_rope(q, cos, sin)
        ctx.begin_external(self.layer, q)  # queries leave before K/V are projected (overlap)
        k = self.k_proj(x).view(T, c.num_kv_heads, c.head_dim)  # (T, KVH, D)
        v = self.v_proj(x).view(T, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            k = self.k_norm(k)
        k = apply_rope(k, cos, sin)
        out = ctx.attend(self.layer, q, k, v, c.sliding_windows[self.layer])
        return self.o_proj(out.reshape(T, -1))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = LlamaAttention(c, layer)
        self.mlp = GatedMLP(c.hidden_size, c.intermediate_size, c.hidden_act)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(PagedCausalLM):
    def __init__(self, c: ModelConfig):
        super().__init__(c)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(c, i) for i in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(c.hidden_size, c.vocab_size, bias=False)

    @staticmethod
    def hf_to_ours(name: str) -> str | None:
        """Map a transformers parameter name to ours (None = not a weight we use)."""
        if "rotary_emb" in name:
            return None
        return name.removeprefix("model.")
