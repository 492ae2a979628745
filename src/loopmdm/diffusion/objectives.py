"""Training objectives behind one registry: the MDLM continuous-time NELBO (optionally conditional on frozen
positions) and the autoregressive next-token loss of the evaluator model.

    L = E_t E_{x_t} [ sum_i 1[x_t^i = mask] * (-alpha'_t / (1 - alpha_t)) * (-log p_theta(x_0^i | x_t)) ]

An objective owns its randomness: ``draw(n, L, gen)`` returns the ``Noise`` of a batch of n rows (times t and
one uniform per position), drawn once over the *global* batch, so that data-parallel ranks and accumulation
micro-batches slice their rows of it and one process gets exactly the same numbers (``Noise.rows``).
``loss(model, batch, loops, noise)`` then needs no generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..model.subs import no_mask_logits
from ..registry import Registry
from .schedules import NoiseSchedule, get_schedule

LOSS_WEIGHTS = ("elbo", "uniform")


@dataclass
class Batch:
    """Clean rows x0 [B, L]; ``frozen`` [B, L] (bool, optional): given positions (a prompt, Sudoku givens) that
    are never masked and never scored, which makes the objective conditional p(x | given)."""

    x0: torch.Tensor
    frozen: Optional[torch.Tensor] = None

    def rows(self, sl: slice) -> "Batch":
        return Batch(self.x0[sl], None if self.frozen is None else self.frozen[sl])

    def to(self, device) -> "Batch":
        frozen = None if self.frozen is None else self.frozen.to(device, non_blocking=True)
        return Batch(self.x0.to(device, non_blocking=True), frozen)


@dataclass
class Noise:
    """The randomness of one batch: times t [B] and uniforms u [B, L]; position i of row b is masked when
    u[b, i] < 1 - alpha_{t_b} (and it is not frozen)."""

    t: torch.Tensor
    u: torch.Tensor

    def rows(self, sl: slice) -> "Noise":
        return Noise(self.t[sl], self.u[sl])

    def to(self, device) -> "Noise":
        return Noise(self.t.to(device), self.u.to(device))


@dataclass
class LossOutput:
    """``loss``: the scalar to minimise; ``nll_sum`` / ``n_tokens``: the NELBO numerator (nats, summed over the
    scored tokens) and the number of scored tokens, for exact averaging whatever the loss weighting."""

    loss: torch.Tensor
    nll_sum: torch.Tensor
    n_tokens: int


def sample_t(n: int, gen: torch.Generator, antithetic: bool = True, eps: float = 1e-3) -> torch.Tensor:
    """n diffusion times t in [eps, 1). Antithetic / low-discrepancy: one uniform offset u, then
    t_i = (u + i / n) mod 1, so the batch covers [0, 1) evenly (MDLM)."""
    if antithetic:
        u = (torch.rand(1, generator=gen) + torch.arange(n) / n) % 1.0  # [n]
    else:
        u = torch.rand(n, generator=gen)
    return eps + (1.0 - eps) * u


def q_sample(batch: Batch, noise: Noise, alpha_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Forward process: x_t [B, L], each non-frozen token of x0 replaced by the mask with probability
    1 - alpha_t [B] (decided by the uniforms of ``noise``)."""
    move = noise.u < (1.0 - alpha_t)[:, None]  # [B, L]
    if batch.frozen is not None:
        move &= ~batch.frozen
    return torch.where(move, torch.full_like(batch.x0, mask_id), batch.x0)


class Objective:
    """A training objective: ``draw`` the noise of a batch, then ``loss(model, batch, loops, noise)``."""

    def __init__(self, schedule: NoiseSchedule, mask_id: int, antithetic: bool = True, t_eps: float = 1e-3,
                 loss_weight: str = "elbo"):
        self.schedule, self.mask_id, self.antithetic, self.t_eps = schedule, mask_id, antithetic, t_eps
        self.loss_weight = loss_weight

    def draw(self, n: int, seq_len: int, gen: torch.Generator) -> Optional[Noise]:
        """The noise of n rows of length seq_len (None for objectives without any)."""
        return None

    def loss(self, model, batch: Batch, loops: int, noise: Optional[Noise]) -> LossOutput:
        raise NotImplementedError

    def predicted_fraction(self) -> float:
        """The expected share of positions the LM head and the loss run on (for FLOP accounting)."""
        raise NotImplementedError


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


def sparse_capable(model) -> bool:
    """True when ``model`` (or the module a data-parallel wrapper holds) takes ``predict`` / ``labels`` in forward
    (``LoopMDM``): the loss then never forms full-vocabulary logits."""
    return getattr(getattr(model, "module", model), "sparse_prediction", False)


@OBJECTIVES.register("mdm")
class MaskedDiffusion(Objective):
    """MDLM NELBO with SUBS and the -alpha'_t / (1 - alpha_t) weight (``loss_weight='elbo'``, the NELBO per
    token), or the mean cross-entropy over masked positions (``'uniform'``). Frozen positions of the batch stay
    unmasked and unscored: the conditional NELBO of the rest given them. Only masked positions enter the loss,
    so the LM head runs only there (sparse prediction) and the cross-entropy is computed chunk by chunk."""

    def draw(self, n, seq_len, gen):
        t = sample_t(n, gen, self.antithetic, self.t_eps)  # [n]
        return Noise(t, torch.rand((n, seq_len), generator=gen))  # [n, L]

    def predicted_fraction(self, grid: int = 4096) -> float:
        """E_t[1 - alpha_t], t ~ U[t_eps, 1): the expected share of (non-frozen) positions the LM head runs on."""
        t = self.t_eps + (1.0 - self.t_eps) * (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
        return float((1.0 - self.schedule.alpha(t)).mean())

    def loss(self, model, batch, loops, noise):
        noise = noise.to(batch.x0.device)
        x_t = q_sample(batch, noise, self.schedule.alpha(noise.t), self.mask_id)
        if not sparse_capable(model):
            return self.nelbo(model(x_t, noise.t, loops=loops), batch, x_t, noise.t)
        masked = x_t == self.mask_id  # [B, L]
        w = self.schedule.weight(noise.t)[masked.nonzero()[:, 0]]  # [N]: the NELBO weight of each masked position
        n_tokens = self._n_tokens(batch)
        g = w / max(n_tokens, 1) if self.loss_weight == "elbo" else torch.full_like(w, 1.0 / max(len(w), 1))
        loss, ce = model(x_t, noise.t, loops=loops, predict=masked, labels=batch.x0[masked], label_weights=g,
                         exclude=self.mask_id)
        return LossOutput(loss=loss, nll_sum=(ce * w).sum().detach(), n_tokens=n_tokens)

    @staticmethod
    def _n_tokens(batch: Batch) -> int:
        return int(batch.x0.numel() if batch.frozen is None else (~batch.frozen).sum())

    def nelbo(self, logits: torch.Tensor, batch: Batch, x_t: torch.Tensor, t: torch.Tensor) -> LossOutput:
        """The same loss from full logits [B, L, V] at x_t (models without sparse prediction; the reference the
        sparse path is tested against): only masked positions contribute (SUBS copies the rest)."""
        ce = F.cross_entropy(no_mask_logits(logits, self.mask_id).transpose(1, 2), batch.x0,
                             reduction="none")  # [B, L]
        masked = x_t == self.mask_id
        weight = self.schedule.weight(t)[:, None]  # [B, 1]
        nll_sum = torch.where(masked, weight * ce, torch.zeros_like(ce)).sum()
        n_tokens = self._n_tokens(batch)
        if self.loss_weight == "uniform":
            loss = torch.where(masked, ce, torch.zeros_like(ce)).sum() / masked.sum().clamp_min(1)
        else:
            loss = nll_sum / max(n_tokens, 1)
        return LossOutput(loss=loss, nll_sum=nll_sum.detach(), n_tokens=n_tokens)


@OBJECTIVES.register("ar")
class Autoregressive(Objective):
    """Next-token cross-entropy with the same backbone under a causal mask (evaluator / AR baseline)."""

    def predicted_fraction(self) -> float:
        return 1.0

    def loss(self, model, batch, loops, noise=None):
        x0 = batch.x0
        keep = torch.ones_like(x0[:, 1:], dtype=torch.bool) if batch.frozen is None else ~batch.frozen[:, 1:]
        n_tokens = int(keep.sum())
        if sparse_capable(model):
            nll_sum, _ = model(x0[:, :-1], loops=loops, predict=keep, labels=x0[:, 1:][keep])
        else:
            ce = F.cross_entropy(model(x0[:, :-1], loops=loops).float().transpose(1, 2), x0[:, 1:],
                                 reduction="none")  # [B, L-1]
            nll_sum = torch.where(keep, ce, torch.zeros_like(ce)).sum()
        return LossOutput(loss=nll_sum / max(n_tokens, 1), nll_sum=nll_sum.detach(), n_tokens=n_tokens)


def predicted_fraction(diffusion) -> float:
    """The expected share of (non-frozen) positions the LM head runs on under a ``DiffusionConfig``'s objective
    (E_t[1 - alpha_t] for the MDM, 1 for AR): what FLOP accounting multiplies the head's cost by."""
    return make_objective(diffusion, mask_id=0).predicted_fraction()


def make_objective(diffusion, mask_id: int, antithetic: Optional[bool] = None) -> Objective:
    """The objective a ``DiffusionConfig`` describes (objective, schedule, antithetic t, t_eps, loss weight);
    ``antithetic`` overrides the config's (evaluation always uses antithetic t: the lowest-variance estimate)."""
    anti = diffusion.antithetic if antithetic is None else antithetic
    return OBJECTIVES.get(diffusion.objective)(get_schedule(diffusion.schedule), mask_id, anti, diffusion.t_eps,
                                                diffusion.loss_weight)
