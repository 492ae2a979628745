"""The transformer block: pre-norm, rotary SDPA attention, GELU MLP, optional adaLN time modulation.

The same block serves the bidirectional denoiser (masked diffusion) and the causal evaluator (AR):
only the attention mask differs. Attention goes through ``F.scaled_dot_product_attention`` so CPU
users need no special kernel and CUDA users get flash / memory-efficient kernels.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


class Rotary(nn.Module):
    """Rotary position embeddings (RoPE): cos / sin tables for positions 0..max_seq_len-1."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # [L, hd/2]
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[:seq_len], self.sin[:seq_len]  # [T, hd/2] each


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of x [B, H, T, hd] by position angles."""
    x1, x2 = x.chunk(2, dim=-1)  # [B, H, T, hd/2] each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features -> MLP -> conditioning vector c [B, cond_dim] (DiT / MDLM)."""

    def __init__(self, cond_dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(t * 1000.0, self.freq_dim))


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of a scalar per row: x [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half
    )
    args = x.float()[:, None] * freqs[None]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with rotary embeddings, through SDPA."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout
        self.qk_norm = cfg.qk_norm

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, H, T, hd] of x [B, T, D] (q and k RMS-normalised per head with ``qk_norm``)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.qk_norm:
            q, k = F.rms_norm(q, (q.shape[-1],)), F.rms_norm(k, (k.shape[-1],))
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: Optional[torch.Tensor],
        causal: bool,
        kv: Optional[Any] = None,
    ) -> torch.Tensor:
        """Self-attention of x [B, T, D]. ``kv``: an inference-time key / value cache of this layer (see
        ``loopmdm.sampling.kvcache.LayerCache``) that is handed the heads and does the attention instead."""
        B, T, D = x.shape
        q, k, v = self.heads(x)  # [B, H, T, hd]
        if kv is not None:
            y = kv.attend(q, k, v, rope, attn_mask, causal)
        else:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            # [B, H, T, hd]
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_mask,
                is_causal=causal and attn_mask is None,
                dropout_p=self.dropout if self.training else 0.0,
            )
        return self.proj(y.transpose(1, 2).reshape(B, T, D))  # [B, T, D]


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_dim, bias=False)
        self.out = nn.Linear(cfg.mlp_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.fc(x), approximate="tanh"))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with shift / scale [B, 1, D] broadcast over positions (one fused pass)."""
    return torch.addcmul(shift, x, 1.0 + scale)


class Block(nn.Module):
    """Pre-norm transformer block. With adaLN, c [B, cond_dim] gives shift / scale / gate per sublayer
    (adaLN-Zero: gates start at 0, so each block starts as the identity)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        adaln = cfg.time_conditioned
        self.norm1 = nn.LayerNorm(cfg.d_model, elementwise_affine=not adaln, bias=False)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model, elementwise_affine=not adaln, bias=False)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.modulation = nn.Linear(cfg.cond_dim, 6 * cfg.d_model) if adaln else None
        if self.modulation is not None:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        c: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        causal: bool = False,
        kv: Optional[Any] = None,
    ) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]; ``kv``: this layer's inference cache, see ``Attention.forward``."""
        if self.modulation is None:
            x = x + self.drop(self.attn(self.norm1(x), rope, attn_mask, causal, kv))
            return x + self.drop(self.mlp(self.norm2(x)))
        # [B, 1, D] each
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)[:, None].chunk(6, dim=-1)
        # x + gate * attn(...)
        x = torch.addcmul(
            x,
            gate1,
            self.drop(
                self.attn(modulate(self.norm1(x), shift1, scale1), rope, attn_mask, causal, kv)
            ),
        )
        return torch.addcmul(x, gate2, self.drop(self.mlp(modulate(self.norm2(x), shift2, scale2))))
