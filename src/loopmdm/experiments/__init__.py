"""Reproductions of the paper's experiments at any scale, one entry point each:

- ``compute_matched``: (a) same-size MDM vs (b) LoopMDM vs (c) deeper MDM at equal training FLOPs, the
  FLOPs ratio, final NELBO at several S, and the loop-placement / n_m ablation;
- ``sudoku_exp``: MDM vs LoopMDM on built-in Sudoku puzzles at equal training FLOPs;
- ``attention``: how much attention masked positions pay to other masked positions, per layer and loop;
- ``loopify``: loopifying a trained MDM / BERT and fine-tuning with random S vs fine-tuning it as it is, at
  equal extra training FLOPs.

Each has a ``laptop`` configuration (sized for 2 CPU cores) and, except ``loopify``, a ``paper`` one (the
GPU-scale run).
"""

from .curves import Curve, flops_ratio, flops_to_reach, read_curve, spread

__all__ = ["Curve", "flops_ratio", "flops_to_reach", "read_curve", "spread"]
