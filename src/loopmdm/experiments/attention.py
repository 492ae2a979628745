"""Attention analysis: how much attention masked positions pay to other masked positions, per layer and loop.

For a batch x_0 corrupted to masking level t (each token masked with probability t, alpha_t = 1 - t), the
model runs at loop count S while forward pre-hooks on every ``Attention`` module recompute the attention
probabilities softmax(Q K^T / sqrt(d_head)) from the block's own input (the same rotary Q / K the SDPA
kernel sees; SDPA itself is untouched). For masked query positions we take the share of attention mass on
masked keys (``to_masked``) and on unmasked keys (``to_unmasked``; the two sum to 1), averaged over
queries and then over heads. Layer applications are kept in execution order: n_h head layers, S x n_m
mid-block layers (loop k = 0..S-1), n_o tail layers. The paper reports that looping raises masked-to-masked
interaction, saturating near S_max. A uniform-attention reference is the share of keys that are masked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..checkpoint import load_model
from ..data import prepare_data
from ..diffusion import Batch, Noise, q_sample
from ..errors import ConfigError, DataError
from ..fileio import write_json
from ..model import LoopMDM
from ..model.layers import Attention, apply_rotary
from ..runtime import machine_info
from ..viz.experiment_plots import plot_attention_heatmap, plot_lines
from .common import default_loop_grid, load_experiment_config

Log = Callable[[str], None]


def attention_probs(
    attn: Attention,
    x: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    attn_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
) -> torch.Tensor:
    """The attention probabilities [B, H, T, T] (queries x keys) that ``attn`` computes for input x [B, T, D]:
    softmax(Q K^T / sqrt(d_head)) with rotary Q / K, the boolean key mask and the causal mask applied."""
    T = x.shape[1]
    q, k, _ = attn.heads(x)  # [B, H, T, hd] each
    q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # [B, H, T, T]
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask.bool(), -math.inf)
    elif causal:
        scores = scores.masked_fill(
            ~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), -math.inf
        )
    return torch.softmax(scores, dim=-1)


def masked_query_shares(
    probs: torch.Tensor, masked: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head share of attention mass that masked queries put on masked keys and on unmasked keys,
    averaged over the masked queries of the batch: probs [B, H, T, T], masked [B, T] -> ([H], [H])."""
    m = masked.to(probs.dtype)  # [B, T]
    to_masked = (probs * m[:, None, None, :]).sum(-1)  # [B, H, T]
    to_unmasked = (probs * (1.0 - m)[:, None, None, :]).sum(-1)  # [B, H, T]
    n_q = m.sum()
    if n_q == 0:
        nan = torch.full((probs.shape[1],), float("nan"))
        return nan, nan
    w = m[:, None, :]  # [B, 1, T] queries that are masked
    return (to_masked * w).sum((0, 2)) / n_q, (to_unmasked * w).sum((0, 2)) / n_q


@dataclass
class AttentionShares:
    """Masked-query attention shares at one masking level t and loop count S, one entry per layer
    application in execution order (length D_eff = n_h + S * n_m + n_o)."""

    t: float
    loops: int
    stage: list[str]  # "head" | "mid" | "tail"
    layer: list[int]  # block index in the model, 0..L-1
    loop: list[int]  # loop iteration k (0-based) for mid-block layers, -1 elsewhere
    to_masked: np.ndarray  # [D_eff], averaged over heads
    to_unmasked: np.ndarray  # [D_eff]; to_masked + to_unmasked = 1
    per_head_to_masked: np.ndarray  # [D_eff, H]
    masked_key_fraction: float  # uniform-attention reference: the share of keys that are masked
    n_masked_queries: int

    def mid(self, n_m: int) -> np.ndarray:
        """Mid-block masked-to-masked shares as [S, n_m] (loop iteration x looped layer)."""
        idx = [i for i, s in enumerate(self.stage) if s == "mid"]
        return self.to_masked[idx].reshape(self.loops, n_m)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("to_masked", "to_unmasked", "per_head_to_masked"):
            d[k] = getattr(self, k).tolist()
        return d


@torch.no_grad()
def analyze_attention(
    model: LoopMDM,
    x_t: torch.Tensor,
    t: float,
    loops: int,
    mask_id: int,
    attention_mask: Optional[torch.Tensor] = None,
) -> AttentionShares:
    """Run ``model`` on x_t [B, T] (masking level t) at loop count S = ``loops`` and return the attention
    shares of masked queries for every layer application (see ``AttentionShares``)."""
    if loops < 1:
        raise ConfigError(f"loops={loops} must be >= 1")
    masked = x_t == mask_id  # [B, T]
    if attention_mask is not None:
        masked = masked & attention_mask.bool()
    cfg = model.config
    names: dict[int, tuple[str, int]] = {}
    for stage, stack, offset in (
        ("head", model.head, 0),
        ("mid", model.mid, cfg.n_h),
        ("tail", model.tail, cfg.n_h + cfg.n_m),
    ):
        for i, block in enumerate(stack.blocks):
            names[id(block.attn)] = (stage, offset + i)
    records: list[tuple[str, int, int, torch.Tensor, torch.Tensor]] = []
    calls: dict[int, int] = {}

    def hook(module, args):
        x, rope, mask, causal = args[:4]
        probs = attention_probs(module, x, rope, mask, causal)  # [B, H, T, T]
        to_m, to_u = masked_query_shares(probs, masked)
        stage, layer = names[id(module)]
        k = calls.get(id(module), 0)
        calls[id(module)] = k + 1
        records.append((stage, layer, k if stage == "mid" else -1, to_m, to_u))

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, Attention)
    ]
    was_training = model.training
    model.eval()
    try:
        tt = torch.full((x_t.shape[0],), float(t), device=x_t.device)
        model(x_t, tt, loops=loops, attention_mask=attention_mask)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per_head = torch.stack([r[3] for r in records]).cpu().numpy()  # [D_eff, H]
    per_head_u = torch.stack([r[4] for r in records]).cpu().numpy()
    keys = torch.ones_like(masked) if attention_mask is None else attention_mask.bool()
    return AttentionShares(
        t=float(t),
        loops=loops,
        stage=[r[0] for r in records],
        layer=[r[1] for r in records],
        loop=[r[2] for r in records],
        to_masked=per_head.mean(1),
        to_unmasked=per_head_u.mean(1),
        per_head_to_masked=per_head,
        masked_key_fraction=float(masked.sum() / keys.sum().clamp_min(1)),
        n_masked_queries=int(masked.sum()),
    )


def corrupt(
    x0: torch.Tensor, t: float, mask_id: int, seed: int, keep: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """x_t: each token of x0 [B, T] masked with probability t (alpha_t = 1 - t), except where ``keep`` [B, T]
    is True (e.g. Sudoku givens). Seeded, so every S sees the same x_t."""
    if not 0.0 < t <= 1.0:
        raise ConfigError(f"masking level t={t} must be in (0, 1]")
    u = torch.rand(x0.shape, generator=torch.Generator().manual_seed(seed))  # [B, T]
    return q_sample(
        Batch(x0, keep),
        Noise(torch.full((x0.shape[0],), t), u),
        torch.full((x0.shape[0],), 1.0 - t),
        mask_id,
    )


@dataclass
class AttentionSweep:
    """Shares over a grid of masking levels ``ts`` and loop counts ``loops``.

    ``mid`` [len(ts), len(loops), max(loops), n_m]: mid-block masked-to-masked share per loop iteration
    and looped layer (NaN past S); ``mid_last`` [len(ts), len(loops)]: its mean over the n_m layers at the
    last iteration; ``mean_all`` [len(ts), len(loops)]: mean over every layer application;
    ``masked_key_fraction`` [len(ts)]; ``shares[i][j]``: the full ``AttentionShares`` of (ts[i], loops[j])."""

    ts: list[float]
    loops: list[int]
    n_m: int
    mid: np.ndarray
    mid_last: np.ndarray
    mean_all: np.ndarray
    masked_key_fraction: np.ndarray
    shares: list[list[AttentionShares]] = field(repr=False)

    def to_dict(self) -> dict:
        return {
            "ts": self.ts,
            "loops": self.loops,
            "n_m": self.n_m,
            "mid": self.mid.tolist(),
            "mid_last": self.mid_last.tolist(),
            "mean_all": self.mean_all.tolist(),
            "masked_key_fraction": self.masked_key_fraction.tolist(),
            "shares": [[s.to_dict() for s in row] for row in self.shares],
        }


def attention_sweep(
    model: LoopMDM,
    x0: torch.Tensor,
    mask_id: int,
    ts: Sequence[float],
    loops: Sequence[int],
    seed: int = 0,
    keep: Optional[torch.Tensor] = None,
) -> AttentionSweep:
    """``analyze_attention`` over every (t, S); the same corrupted batch x_t is used for every S at a given t."""
    if not ts or not loops:
        raise ConfigError(
            "the attention sweep needs at least one masking level t and one loop count S"
        )
    n_m = model.config.n_m
    s_top = max(loops)
    mid = np.full((len(ts), len(loops), s_top, n_m), np.nan)
    mid_last = np.full((len(ts), len(loops)), np.nan)
    mean_all = np.full((len(ts), len(loops)), np.nan)
    frac = np.zeros(len(ts))
    shares = []
    for i, t in enumerate(ts):
        x_t = corrupt(x0, float(t), mask_id, seed + i, keep)
        row = []
        for j, s in enumerate(loops):
            sh = analyze_attention(model, x_t, float(t), int(s), mask_id)
            row.append(sh)
            if n_m:
                m = sh.mid(n_m)  # [S, n_m]
                mid[i, j, :s] = m
                mid_last[i, j] = m[-1].mean()
            mean_all[i, j] = sh.to_masked.mean()
            frac[i] = sh.masked_key_fraction
        shares.append(row)
    return AttentionSweep(
        [float(t) for t in ts], [int(s) for s in loops], n_m, mid, mid_last, mean_all, frac, shares
    )


# --------------------------------------------------------------------------- the experiment (CLI entry)


@dataclass
class AttentionConfig:
    """Which masking levels t and loop counts S to sweep, on how many validation rows / test boards."""

    name: str = "laptop"
    ts: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    loops: Optional[list[int]] = None  # null: {1, 2, 4, ..., 2 S_max} of the checkpoint
    batch_size: int = 32  # rows (text) or boards (Sudoku)
    seed: int = 0

    def validate(self) -> "AttentionConfig":
        if not self.ts or any(not 0.0 < float(t) <= 1.0 for t in self.ts):
            raise ConfigError(f"ts={self.ts} must be masking levels in (0, 1]")
        if self.loops is not None and (not self.loops or any(int(s) < 1 for s in self.loops)):
            raise ConfigError(f"loops={self.loops} must be loop counts S >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        return self


PRESETS = {
    "laptop": AttentionConfig,
    "paper": lambda: AttentionConfig(
        name="paper", ts=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], batch_size=256
    ),
}


def load_attention_config(spec: str | Path = "laptop") -> AttentionConfig:
    return load_experiment_config(spec, PRESETS, "attention").validate()


def load_for_analysis(path: str | Path, n_rows: int):
    """(model, x0 [N, T], mask_id, keep or None, S_max, kind) from a run / checkpoint folder: the first
    ``n_rows`` validation rows of its data (text), or validation boards with their givens kept (Sudoku)."""
    model, tok, cfg = load_model(path, ema=None)
    if cfg.model.wrapped:
        raise ConfigError(
            f"the attention analysis reads the library's own attention blocks; {str(path)!r} is a "
            f"loopified {cfg.model.backbone} model"
        )
    data = prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len)
    if data.val.shape[0] == 0:
        raise DataError(
            "the validation split holds no full row; use a larger corpus or a shorter max_seq_len"
        )
    x0 = torch.from_numpy(data.val[:n_rows].astype(np.int64))
    keep = None if data.val_frozen is None else torch.from_numpy(data.val_frozen[:n_rows])
    return model, x0, tok.mask_id, keep, cfg.diffusion.max_loops, cfg.data.format


def run_attention(
    checkpoint: str | Path, cfg: AttentionConfig, out: str | Path, log: Log = print
) -> dict:
    """Sweep t and S for a checkpoint; write attention.json, two heatmaps and two line plots."""
    cfg.validate()
    out = Path(out)
    model, x0, mask_id, keep, s_max, kind = load_for_analysis(checkpoint, cfg.batch_size)
    loops = [int(s) for s in (cfg.loops or default_loop_grid(max(s_max, 1)))]
    log(
        f"attention sweep on {len(x0)} {'boards' if kind == 'sudoku' else 'rows'}: t in {cfg.ts}, S in {loops}"
    )
    sweep = attention_sweep(model, x0, mask_id, cfg.ts, loops, cfg.seed, keep)
    results = {
        "experiment": "attention",
        "checkpoint": str(checkpoint),
        "kind": kind,
        "config": asdict(cfg),
        "machine": machine_info(),
        "s_max_trained": s_max,
        "n_layers": model.config.n_layers,
        "n_h": model.config.n_h,
        "n_m": model.config.n_m,
        "n_o": model.config.n_o,
        "sweep": sweep.to_dict(),
    }
    t_labels = [f"t={t:g}" for t in sweep.ts]
    j = len(loops) - 1  # the largest S
    s_top = loops[j]
    if sweep.n_m:
        plot_attention_heatmap(
            np.nanmean(sweep.mid[:, j], axis=-1).T,
            [f"loop {k + 1}" for k in range(s_top)],
            t_labels,
            out / "attention_heatmap_loops.png",
            f"masked->masked attention share, mid block (mean of {sweep.n_m} layers), S={s_top}",
            "masking level t",
            "loop iteration",
        )
    layer_rows = sweep.shares[0][j]
    labels = [
        f"{st} L{ly}" + (f" k={k + 1}" if k >= 0 else "")
        for st, ly, k in zip(layer_rows.stage, layer_rows.layer, layer_rows.loop)
    ]
    plot_attention_heatmap(
        np.stack([sweep.shares[i][j].to_masked for i in range(len(sweep.ts))], axis=1),
        labels,
        t_labels,
        out / "attention_heatmap_layers.png",
        f"masked->masked attention share per layer application, S={s_top}",
        "masking level t",
        "layer (execution order)",
    )
    ref = {lbl: float(f) for lbl, f in zip(t_labels, sweep.masked_key_fraction)}
    plot_lines(
        loops,
        {lbl: sweep.mid_last[i] for i, lbl in enumerate(t_labels)},
        out / "attention_vs_S.png",
        "loop count S",
        "masked->masked share (mid block, last loop)",
        "dotted: share of keys that are masked (uniform attention)",
        ref,
        log2x=True,
    )
    plot_lines(
        list(range(1, s_top + 1)),
        {lbl: np.nanmean(sweep.mid[i, j], axis=-1) for i, lbl in enumerate(t_labels)},
        out / "attention_vs_loop.png",
        "loop iteration k",
        "masked->masked share (mid block)",
        f"S={s_top}; dotted: share of keys that are masked",
        ref,
    )
    results["figures"] = [
        "attention_heatmap_loops.png",
        "attention_heatmap_layers.png",
        "attention_vs_S.png",
        "attention_vs_loop.png",
    ]
    write_json(out / "attention.json", results)
    (out / "summary.md").write_text(attention_markdown(results))
    return results


def attention_markdown(results: dict) -> str:
    sw = results["sweep"]
    lines = [
        "| t | masked keys | " + " | ".join(f"S={s}" for s in sw["loops"]) + " |",
        "|---|---|" + "---|" * len(sw["loops"]),
    ]
    for i, t in enumerate(sw["ts"]):
        lines.append(
            f"| {t:g} | {sw['masked_key_fraction'][i]:.3f} | "
            + " | ".join(
                "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
                for v in sw["mid_last"][i]
            )
            + " |"
        )
    return (
        "Masked->masked attention share of the mid block at the last loop iteration (mean over its layers and "
        "heads); 'masked keys' is the share under uniform attention.\n\n" + "\n".join(lines) + "\n"
    )
