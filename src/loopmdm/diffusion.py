"""The MDLM continuous-time objective: absorbing-state forward process, SUBS parameterization, NELBO.

    L = E_t E_{x_t} [ sum_i 1[x_t^i = mask] * (-alpha'_t / (1 - alpha_t)) * (-log p_theta(x_0^i | x_t)) ]

and the autoregressive (next-token) objective of the evaluator model, behind one small registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .registry import Registry
from .schedules import NoiseSchedule


def sample_t(n: int, gen: torch.Generator, antithetic: bool = True, eps: float = 1e-3,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """n diffusion times t in [eps, 1). Antithetic / low-discrepancy: one uniform offset u, then
    t_i = (u + i / n) mod 1, so the batch covers [0, 1) evenly (MDLM). Pass the *global* batch size
    and slice per rank under data parallelism."""
    if antithetic:
        u = (torch.rand(1, generator=gen) + torch.arange(n) / n) % 1.0  # [n]
    else:
        u = torch.rand(n, generator=gen)
    return (eps + (1.0 - eps) * u).to(device)


def q_sample(x0: torch.Tensor, alpha_t: torch.Tensor, mask_id: int, gen: torch.Generator) -> torch.Tensor:
    """Forward process: each token of x0 [B, T] is replaced by the mask with probability 1 - alpha_t [B]."""
    u = torch.rand(x0.shape, generator=gen).to(x0.device)  # [B, T]
    move = u < (1.0 - alpha_t)[:, None]
    return torch.where(move, torch.full_like(x0, mask_id), x0)


def subs_log_probs(logits: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS parameterization: log p_theta(x_0 | x_t) [B, T, V] in float32.
    The mask token gets zero probability; unmasked positions copy their input token."""
    logits = logits.float().clone()
    logits[..., mask_id] = -math.inf
    logp = torch.log_softmax(logits, dim=-1)
    unmasked = x_t != mask_id  # [B, T]
    if unmasked.any():
        copy = torch.full_like(logp[unmasked], -math.inf)
        copy.scatter_(-1, x_t[unmasked][:, None], 0.0)
        logp[unmasked] = copy
    return logp


@dataclass
class LossOutput:
    """``loss``: the scalar to minimise (NELBO per token); ``nll_sum`` / ``n_tokens``: for exact averaging."""

    loss: torch.Tensor
    nll_sum: torch.Tensor
    n_tokens: int


class Objective:
    """A training objective: ``loss(model, x0, loops, gen, t=None)``."""

    def __init__(self, schedule: NoiseSchedule, mask_id: int, antithetic: bool = True, t_eps: float = 1e-3):
        self.schedule = schedule
        self.mask_id = mask_id
        self.antithetic = antithetic
        self.t_eps = t_eps

    def loss(self, model, x0: torch.Tensor, loops: int, gen: torch.Generator,
             t: Optional[torch.Tensor] = None, loss_mask: Optional[torch.Tensor] = None) -> LossOutput:
        raise NotImplementedError


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


@OBJECTIVES.register("mdm")
class MaskedDiffusion(Objective):
    """MDLM NELBO with SUBS and the -alpha'_t / (1 - alpha_t) weight."""

    def loss(self, model, x0, loops, gen, t=None, loss_mask=None):
        B = x0.shape[0]
        if t is None:
            t = sample_t(B, gen, self.antithetic, self.t_eps, x0.device)
        alpha_t = self.schedule.alpha(t)
        x_t = q_sample(x0, alpha_t, self.mask_id, gen)
        logits = model(x_t, t, loops=loops)  # [B, T, V]
        return self.nelbo(logits, x0, x_t, t, loss_mask)

    def nelbo(self, logits, x0, x_t, t, loss_mask=None) -> LossOutput:
        """NELBO per token from logits at x_t: only masked positions contribute (SUBS copies the rest)."""
        logits = logits.float()
        logits[..., self.mask_id] = -math.inf  # SUBS: never predict the mask
        ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # [B, T]
        weight = self.schedule.weight(t)[:, None]  # [B, 1]
        masked = x_t == self.mask_id
        keep = torch.ones_like(masked) if loss_mask is None else loss_mask.bool()
        nll = torch.where(masked & keep, weight * ce, torch.zeros_like(ce))
        n_tokens = int(keep.sum())
        nll_sum = nll.sum()
        return LossOutput(loss=nll_sum / max(n_tokens, 1), nll_sum=nll_sum.detach(), n_tokens=n_tokens)


@OBJECTIVES.register("ar")
class Autoregressive(Objective):
    """Next-token cross-entropy with the same backbone under a causal mask (evaluator / AR baseline)."""

    def loss(self, model, x0, loops, gen, t=None, loss_mask=None):
        logits = model(x0[:, :-1], loops=loops)  # [B, T-1, V]
        ce = F.cross_entropy(logits.float().transpose(1, 2), x0[:, 1:], reduction="none")  # [B, T-1]
        keep = torch.ones_like(ce, dtype=torch.bool) if loss_mask is None else loss_mask[:, 1:].bool()
        nll_sum = torch.where(keep, ce, torch.zeros_like(ce)).sum()
        n_tokens = int(keep.sum())
        return LossOutput(loss=nll_sum / max(n_tokens, 1), nll_sum=nll_sum.detach(), n_tokens=n_tokens)


def make_objective(name: str, schedule: NoiseSchedule, mask_id: int, antithetic: bool = True,
                   t_eps: float = 1e-3) -> Objective:
    return OBJECTIVES.get(name)(schedule, mask_id, antithetic, t_eps)
