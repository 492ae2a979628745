"""FLOP accounting in the paper's terms: F_loop(S) = F_base + (S - 1) * n_m * F_layer.

Counts matrix-multiply FLOPs (2 per multiply-add), attention scores included, as
``torch.utils.flop_counter.FlopCounterMode`` does; element-wise work is ignored. Training costs
forward + 2x forward for backward, except for loops run under truncated backprop (forward only).
Activation checkpointing recomputes loops but does not change these *model* FLOPs (MFU convention).

The per-call functions (``prelude_flops``, ``loop_flops``, ``coda_flops``) are what the sampling compute report
adds up call by call; the per-token functions below are built from them. ``predicted`` is the number of
positions the LM head runs on (all of them when None; the masked ones under sparse prediction).
"""

from __future__ import annotations

from typing import Optional

from .config import ModelConfig

TIME_FREQ_DIM = 256  # sinusoidal features of t fed to the time MLP (layers.TimestepEmbedder)


def block_flops(cfg: ModelConfig, queries: int, keys: int) -> float:
    """Forward FLOPs of one transformer block for one sequence: QKV + output projection and the MLP at
    ``queries`` positions, attention scores (Q K^T and A V) of those queries over ``keys`` keys, and the adaLN
    modulation (once per sequence)."""
    d = cfg.d_model
    per_query = 2 * d * 3 * d + 2 * d * d + 2 * 2 * d * cfg.mlp_dim + 2 * 2 * keys * d
    mod = 2 * cfg.cond_dim * 6 * d if cfg.time_conditioned else 0.0
    return queries * per_query + mod


def prelude_flops(
    cfg: ModelConfig, rows: int, seq_len: int, queries: Optional[int] = None
) -> float:
    """Time embedding and the head (n_h layers) over ``rows`` sequences of ``seq_len`` tokens; with ``queries``
    only that many positions per row are computed, attending to ``seq_len`` keys (key / value caching)."""
    c = cfg.cond_dim
    time = 2 * TIME_FREQ_DIM * c + 2 * c * c if cfg.time_conditioned else 0.0
    q = seq_len if queries is None else queries
    return rows * (time + cfg.n_h * block_flops(cfg, q, seq_len))


def loop_flops(cfg: ModelConfig, rows: int, queries: int, keys: int) -> float:
    """One loop iteration (the n_m mid layers, plus the input-injection adapter) for ``rows`` sequences whose
    ``queries`` positions are updated, attending to ``keys`` keys."""
    inj = 2 * 2 * cfg.d_model * cfg.d_model if cfg.input_injection else 0.0
    return rows * (cfg.n_m * block_flops(cfg, queries, keys) + queries * inj)


def coda_flops(
    cfg: ModelConfig,
    rows: int,
    seq_len: int,
    predicted: Optional[float] = None,
    queries: Optional[int] = None,
) -> float:
    """Tail (n_o layers) over ``rows`` sequences, the final adaLN modulation, and the LM head at ``predicted``
    positions in all (default: every position of every row); with ``queries`` the tail computes only that many
    positions per row, attending to ``seq_len`` keys (key / value caching)."""
    d = cfg.d_model
    final_mod = 2 * cfg.cond_dim * 2 * d if cfg.time_conditioned else 0.0
    predicted = rows * seq_len if predicted is None else predicted
    q = seq_len if queries is None else queries
    return (
        rows * (cfg.n_o * block_flops(cfg, q, seq_len) + final_mod)
        + predicted * 2 * d * cfg.vocab_size
    )


# --------------------------------------------------------------------------- per token (training accounting)


def layer_flops_per_token(cfg: ModelConfig, seq_len: Optional[int] = None) -> float:
    """Forward FLOPs of one transformer block per token (dense attention over the window)."""
    T = seq_len or cfg.max_seq_len
    return block_flops(cfg, T, T) / T


def loop_flops_per_token(cfg: ModelConfig, seq_len: Optional[int] = None) -> float:
    """Forward FLOPs of one loop iteration per token (n_m layers plus the optional injection adapter)."""
    T = seq_len or cfg.max_seq_len
    return loop_flops(cfg, 1, T, T) / T


def base_flops_per_token(
    cfg: ModelConfig, seq_len: Optional[int] = None, predicted_fraction: float = 1.0
) -> float:
    """Forward FLOPs per token outside the loops: head, tail, LM head (at ``predicted_fraction`` of the
    positions), time embedding and final adaLN."""
    T = seq_len or cfg.max_seq_len
    return (prelude_flops(cfg, 1, T) + coda_flops(cfg, 1, T, predicted_fraction * T)) / T


def forward_flops_per_token(
    cfg: ModelConfig, loops: int, seq_len: Optional[int] = None, predicted_fraction: float = 1.0
) -> float:
    """Forward FLOPs per token at loop count S = loops."""
    return base_flops_per_token(cfg, seq_len, predicted_fraction) + loops * loop_flops_per_token(
        cfg, seq_len
    )


def train_flops_per_token(
    cfg: ModelConfig,
    loops: int,
    seq_len: Optional[int] = None,
    predicted_fraction: float = 1.0,
    supervised: int = 1,
) -> float:
    """Training (forward + backward) FLOPs per token at S = loops; with truncated backprop of depth k,
    only the last min(k, S) loops are differentiated. ``predicted_fraction``: share of positions the LM head
    and loss run on (the expected masked fraction under sparse prediction). ``supervised``: loop outputs that
    go through the tail and the loss (deep supervision: S; otherwise 1)."""
    T = seq_len or cfg.max_seq_len
    k = loops if cfg.backprop_depth is None else min(cfg.backprop_depth, loops)
    extra_codas = (supervised - 1) * coda_flops(cfg, 1, T, predicted_fraction * T) / T
    return 3 * (
        forward_flops_per_token(cfg, loops, seq_len, predicted_fraction) + extra_codas
    ) - 2 * (loops - k) * loop_flops_per_token(cfg, seq_len)


def expected_train_flops_per_token(
    cfg: ModelConfig, dist, seq_len: Optional[int] = None, predicted_fraction: float = 1.0
) -> float:
    """E_S[training FLOPs per token] under a loop-count distribution ``dist`` (anything with
    ``expect(f) = E[f(S)]``; S ~ U{1..S_max}: E[S] = (S_max+1)/2)."""
    return dist.expect(lambda s: train_flops_per_token(cfg, s, seq_len, predicted_fraction))


def effective_depth(cfg: ModelConfig, loops: int) -> int:
    """Layers a token passes through at loop count S: n_h + S * n_m + n_o."""
    return cfg.n_h + loops * cfg.n_m + cfg.n_o


# --------------------------------------------------------------------------- parameters (memory before building)


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters ``LoopMDM(cfg)`` holds (tied weights counted once), from the config alone, as the layers
    define them: what ``LoopMDM.num_parameters()`` returns, without allocating anything."""
    d, c, v = cfg.d_model, cfg.cond_dim, cfg.vocab_size
    adaln = cfg.time_conditioned
    norm = 0 if adaln else d  # LayerNorm without bias; affine only without adaLN
    block = 2 * norm + 3 * d * d + d * d + 2 * d * cfg.mlp_dim + (c * 6 * d + 6 * d if adaln else 0)
    n = v * d + (0 if cfg.tie_embeddings else d * v)  # embedding, LM head
    n += cfg.max_seq_len * d if cfg.learned_positions else 0
    n += TIME_FREQ_DIM * c + c + c * c + c if adaln else 0
    n += (cfg.n_h + cfg.n_m + cfg.n_o) * block
    n += 2 * d * d if cfg.input_injection else 0
    n += 64 * d if cfg.loop_embedding else 0
    n += norm + (c * 2 * d + 2 * d if adaln else 0)
    return int(n)
