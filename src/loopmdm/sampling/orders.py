"""Unmasking orders: which masked positions a confidence-based step commits first. One registry serves the
``confidence`` and ``semi_ar`` samplers and the Sudoku decoder (``loopmdm.eval.sudoku``).

Each order scores candidates: ``score(probs [M, V], tokens [M], u [M]) -> [M]`` (higher = committed first),
where probs is the model's p_theta(x_0 | x_t) (SUBS, before temperature / top-k / top-p), tokens the drawn
candidate of each position and u a uniform per position.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..registry import Registry

Order = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ORDERS: Registry[Order] = Registry("unmasking order")


@ORDERS.register("probability")
def probability(probs: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The probability of the drawn token (LLaDA's low-confidence remasking, greedy: top-probability)."""
    return probs.gather(-1, tokens[:, None]).squeeze(-1)


@ORDERS.register("margin")
def margin(probs: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 probability (Kim et al. 2025: 18.5% -> 89.5% of Sudoku boards by this order alone)."""
    top = probs.topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


@ORDERS.register("entropy")
def entropy(probs: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Negative entropy of the position's distribution (most certain first)."""
    return (probs * probs.clamp_min(1e-300).log()).sum(-1)


@ORDERS.register("random")
def random(probs: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """A uniformly random order (the control)."""
    return u
