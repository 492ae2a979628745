"""FLOP accounting in the paper's terms: F_loop(S) = F_base + (S - 1) * n_m * F_layer.

Counts matrix-multiply FLOPs (2 per multiply-add), attention scores included, as
``torch.utils.flop_counter.FlopCounterMode`` does; element-wise work is ignored. Training costs
forward + 2x forward for backward, except for loops run under truncated backprop (forward only).
Activation checkpointing recomputes loops but does not change these *model* FLOPs (MFU convention).
"""

from __future__ import annotations

from typing import Optional

from .config import ModelConfig
from .loops import LoopDistribution


def layer_flops_per_token(cfg: ModelConfig, seq_len: Optional[int] = None) -> float:
    """Forward FLOPs of one transformer block per token: QKV + output projection, attention scores
    (Q K^T and A V, dense over seq_len keys), the MLP, and the adaLN modulation amortised over the sequence."""
    T = seq_len or cfg.max_seq_len
    d = cfg.d_model
    proj = 2 * d * 3 * d + 2 * d * d
    attn = 2 * 2 * T * d
    mlp = 2 * 2 * d * cfg.mlp_dim
    mod = 2 * cfg.cond_dim * 6 * d / T if cfg.time_conditioning == "adaln" else 0.0
    return proj + attn + mlp + mod


def loop_flops_per_token(cfg: ModelConfig, seq_len: Optional[int] = None) -> float:
    """Forward FLOPs of one loop iteration (n_m layers plus the optional injection adapter)."""
    inj = 2 * 2 * cfg.d_model * cfg.d_model if cfg.input_injection else 0.0
    return cfg.n_m * layer_flops_per_token(cfg, seq_len) + inj


def base_flops_per_token(cfg: ModelConfig, seq_len: Optional[int] = None) -> float:
    """Forward FLOPs per token outside the loops: head, tail, LM head, time embedding and final adaLN."""
    T = seq_len or cfg.max_seq_len
    d = cfg.d_model
    out = (cfg.n_h + cfg.n_o) * layer_flops_per_token(cfg, seq_len) + 2 * d * cfg.vocab_size
    if cfg.time_conditioning == "adaln":
        c = cfg.cond_dim
        out += (2 * 256 * c + 2 * c * c + 2 * c * 2 * d) / T
    return out


def forward_flops_per_token(cfg: ModelConfig, loops: int, seq_len: Optional[int] = None) -> float:
    """Forward FLOPs per token at loop count S = loops."""
    return base_flops_per_token(cfg, seq_len) + loops * loop_flops_per_token(cfg, seq_len)


def train_flops_per_token(cfg: ModelConfig, loops: int, seq_len: Optional[int] = None) -> float:
    """Training (forward + backward) FLOPs per token at S = loops; with truncated backprop of depth k,
    only the last min(k, S) loops are differentiated."""
    k = loops if cfg.backprop_depth is None else min(cfg.backprop_depth, loops)
    return 3 * forward_flops_per_token(cfg, loops, seq_len) - 2 * (loops - k) * loop_flops_per_token(cfg, seq_len)


def expected_train_flops_per_token(cfg: ModelConfig, dist: LoopDistribution,
                                   seq_len: Optional[int] = None) -> float:
    """E_S[training FLOPs per token] under the training loop distribution (S ~ U{1..S_max}: E[S] = (S_max+1)/2)."""
    return dist.expect(lambda s: train_flops_per_token(cfg, s, seq_len))


def effective_depth(cfg: ModelConfig, loops: int) -> int:
    """Layers a token passes through at loop count S: n_h + S * n_m + n_o."""
    return cfg.n_h + loops * cfg.n_m + cfg.n_o
