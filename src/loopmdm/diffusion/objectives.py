"""Training objectives behind one registry: the MDLM continuous-time NELBO (optionally conditional on frozen
positions); the autoregressive next-token loss of the evaluator model registers in ``autoregressive.py``.

    L = E_t E_{x_t} [ sum_i 1[x_t^i = mask] * (-alpha'_t / (1 - alpha_t)) * (-log p_theta(x_0^i | x_t)) ]

An objective owns its randomness: ``draw(n, L, gen)`` returns the ``Noise`` of a batch of n rows (times t and
one uniform per position), drawn once over the *global* batch, so that data-parallel ranks and accumulation
micro-batches slice their rows of it and one process gets exactly the same numbers (``Noise.rows``).
``loss(model, batch, loops, noise)`` then needs no generator.

The loss never waits for the device: the forward process q(x_t | x_0) and the positions that enter the loss are
found on the host from the batch and noise as the trainer draws them (``loopmdm.diffusion.positions``), and only
what the model needs moves to it.

The times t come from the objective's time sampler (``loopmdm.diffusion.timesteps``: uniform by default, or a
bell / P-POTS density, with importance weights ``Noise.w`` = u(t) / p(t) under ``t_weighting = "exact"``);
``complementary_masks`` pairs rows (``pair_rows`` + ``draw``). Evaluation always uses ``for_evaluation()``: the
standard unbiased NELBO with uniform t, whatever the training sampler.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model.subs import no_mask_logits
from ..registry import Registry
from .positions import LossPositions, host_array, model_device, on_host
from .schedules import NoiseSchedule, get_schedule
from .timesteps import TimeSampler, UniformTime, make_time_sampler

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
    u[b, i] < 1 - alpha_{t_b} (and it is not frozen). ``w`` [B] (optional): an extra factor of each row's NELBO
    weight, the importance weight u(t) / p(t) of a non-uniform time sampler under ``t_weighting = "exact"`` (None:
    1, the uniform sampler); the loss multiplies -alpha'_t / (1 - alpha_t) by it (``nelbo_weight``)."""

    t: torch.Tensor
    u: torch.Tensor
    w: Optional[torch.Tensor] = None

    def rows(self, sl: slice) -> "Noise":
        return Noise(self.t[sl], self.u[sl], None if self.w is None else self.w[sl])

    def to(self, device) -> "Noise":
        """On ``device``, from the host without waiting (a non-blocking copy)."""
        return Noise(
            *(
                None if v is None else v.to(device, non_blocking=True)
                for v in (self.t, self.u, self.w)
            )
        )

    def host(self) -> "Noise":
        """On the host (itself when it is: the trainer's noise)."""
        return Noise(*(None if v is None else on_host(v) for v in (self.t, self.u, self.w)))

    def nelbo_weight(self, schedule: NoiseSchedule) -> torch.Tensor:
        """[B]: each row's weight of a masked token's cross-entropy, -alpha'_t / (1 - alpha_t) times ``w``."""
        weight = schedule.weight(self.t)
        return weight if self.w is None else weight * self.w.to(weight.dtype)


@dataclass
class LossOutput:
    """``loss``: the scalar to minimise; ``nll_sum`` / ``n_tokens``: the NELBO numerator (nats, summed over the
    scored tokens) and the number of scored tokens, for exact averaging whatever the loss weighting;
    ``scores`` [B, L]: the model's probability of the true token at each masked position (0 elsewhere), set
    when the objective's ``score_tokens`` asks for it (PUMA ranks positions by it) and gradients are on."""

    loss: torch.Tensor
    nll_sum: torch.Tensor
    n_tokens: int
    scores: Optional[torch.Tensor] = None


def host_batch(batch: Batch) -> Batch:
    """``batch`` with its tensors on the host (``on_host``)."""
    return Batch(on_host(batch.x0), None if batch.frozen is None else on_host(batch.frozen))


def sample_t(
    n: int, gen: torch.Generator, antithetic: bool = True, eps: float = 1e-3
) -> torch.Tensor:
    """n diffusion times t in [eps, 1). Antithetic / low-discrepancy: one uniform offset u, then
    t_i = (u + i / n) mod 1, so the batch covers [0, 1) evenly (MDLM). The ``uniform`` time sampler's draws."""
    return UniformTime(eps).sample(n, gen, antithetic)


def q_sample(batch: Batch, noise: Noise, alpha_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Forward process: x_t [B, L], each non-frozen token of x0 replaced by the mask with probability
    1 - alpha_t [B] (decided by the uniforms of ``noise``)."""
    move = noise.u < (1.0 - alpha_t)[:, None]  # [B, L]
    if batch.frozen is not None:
        move &= ~batch.frozen
    return torch.where(move, torch.full_like(batch.x0, mask_id), batch.x0)


class Objective:
    """A training objective: ``draw`` the noise of a batch, then ``loss(model, batch, loops, noise)``.
    ``deep_supervision``: ``"none"`` (the loss on the final loop's output, the paper's), ``"all"`` (the mean of
    the losses on every loop's output h_1..h_S, as R-MDM and TRM supervise) or ``"random"`` (h_S and a random
    half of the earlier loops); validation stays final-loop."""

    deep_supervision = "none"
    score_tokens = False  # training only: LossOutput.scores for progressive unmasking

    def __init__(
        self,
        schedule: NoiseSchedule,
        mask_id: int,
        antithetic: bool = True,
        t_eps: float = 1e-3,
        loss_weight: str = "elbo",
        t_sampler: Optional[TimeSampler] = None,
        t_weighting: str = "exact",
        complementary_masks: bool = False,
    ):
        self.schedule, self.mask_id, self.antithetic, self.t_eps = (
            schedule,
            mask_id,
            antithetic,
            t_eps,
        )
        self.loss_weight = loss_weight
        # the density of t
        self.t_sampler = t_sampler if t_sampler is not None else UniformTime(t_eps)
        # "exact": Noise.w = u(t) / p(t); "paper": no importance weight
        self.t_weighting = t_weighting
        # rows 2k, 2k+1: one sequence, complementary masks
        self.complementary_masks = complementary_masks

    def for_evaluation(self) -> "Objective":
        """This objective as evaluation uses it: the standard unbiased NELBO estimate, uniform t and one
        independent mask per row, whatever the training time sampler / weighting / complementary masks."""
        if self.t_sampler.is_uniform and not self.complementary_masks:
            return self
        out = copy.copy(self)
        out.t_sampler, out.t_weighting, out.complementary_masks = (
            UniformTime(self.t_eps),
            "exact",
            False,
        )
        return out

    def pair_rows(self, batch: Batch) -> Batch:
        """The batch the noise of ``draw`` applies to: with complementary masks, row 2k + 1 holds row 2k's
        sequence (B / 2 distinct sequences, each twice); otherwise ``batch`` itself. The trainer calls it on the
        global batch before slicing it over ranks and micro-batches (a pair split between two micro-batches or
        ranks still enters the same optimizer step)."""
        if not self.complementary_masks:
            return batch
        check_pairs(batch.x0.shape[0])
        x0 = batch.x0.clone()
        x0[1::2] = x0[0::2]
        frozen = None
        if batch.frozen is not None:
            frozen = batch.frozen.clone()
            frozen[1::2] = frozen[0::2]
        return Batch(x0, frozen)

    def draw(self, n: int, seq_len: int, gen: torch.Generator) -> Optional[Noise]:
        """The noise of n rows of length seq_len (None for objectives without any)."""
        return None

    def loss(self, model, batch: Batch, loops: int, noise: Optional[Noise]) -> LossOutput:
        raise NotImplementedError

    def predicted_fraction(self) -> float:
        """The expected share of positions the LM head and the loss run on (for FLOP accounting)."""
        raise NotImplementedError


OBJECTIVES: Registry[type[Objective]] = Registry("objective")


def check_pairs(n: int) -> None:
    if n % 2:
        raise ConfigError(
            f"diffusion.complementary_masks=true pairs the rows of a batch, but this batch has {n} rows; "
            "make train.batch_size (the global batch) even"
        )


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
        """Times t [n] from the time sampler (low-discrepancy) and uniforms u [n, L]; ``w`` [n] the importance
        weights u(t) / p(t) (``t_weighting = "exact"`` with a non-uniform sampler, else None).

        Complementary masks (MIRROR-style, arXiv 2511.18159): rows come in pairs (2k, 2k + 1) that hold the same
        sequence (``pair_rows``); the second row's uniforms are 1 - u of the first and its time the reflection
        t' = 1 + eps - t (``TimeSampler.reflect``), so under the log-linear schedule the second row masks exactly
        the positions the first keeps: every position is masked once per pair when t + t' = 1 (t_eps = 0), and
        at least once, twice with probability eps, otherwise. The pair's times come from the low-discrepancy grid
        of n / 2 points and its reflection; the second row's time has density p(1 + eps - t), so its importance
        weight is the first row's. MIRROR's released code (StableDLLM) keeps the same t for both masks (mask 1:
        u < p, mask 2: u > 1 - p); we reflect t as well, which makes the two masks an exact partition."""
        sampler = self.t_sampler
        weighted = self.t_weighting == "exact" and not sampler.is_uniform
        if not self.complementary_masks:
            t = sampler.sample(n, gen, self.antithetic)  # [n]
            return Noise(
                t, torch.rand((n, seq_len), generator=gen), sampler.weight(t) if weighted else None
            )
        check_pairs(n)
        t1 = sampler.sample(n // 2, gen, self.antithetic)  # [n/2]
        u1 = torch.rand((n // 2, seq_len), generator=gen)  # [n/2, L]
        t = torch.stack([t1, sampler.reflect(t1)], 1).reshape(n)
        u = torch.stack([u1, 1.0 - u1], 1).reshape(n, seq_len)
        w = sampler.weight(t1).repeat_interleave(2) if weighted else None
        return Noise(t, u, w)

    def predicted_fraction(self, grid: int = 4096) -> float:
        """E_t[1 - alpha_t] under the training time sampler (t ~ U[t_eps, 1) by default): the expected share of
        (non-frozen) positions the LM head runs on. With complementary masks, half the rows use the reflected t."""

        def masked(t):
            return 1.0 - self.schedule.alpha(t)

        frac = self.t_sampler.mean_of(masked, grid)
        if self.complementary_masks:
            frac = 0.5 * (frac + self.t_sampler.mean_of(masked, grid, reflected=True))
        return frac

    def loss(self, model, batch, loops, noise):
        """The NELBO of ``batch`` under ``noise``, both best on the host (as the trainer passes them): x_t and the
        masked positions are then found without a device sync, and x_t, t and the positions move to the model's
        device (device tensors are first copied back, a sync)."""
        device = model_device(model, batch.x0.device)
        batch, noise = host_batch(batch), noise.host()
        # [B, L] on the host
        x_t = q_sample(batch, noise, self.schedule.alpha(noise.t), self.mask_id)
        n_tokens = self._n_tokens(batch)
        noise, x_t_dev = noise.to(device), x_t.to(device, non_blocking=True)
        if not sparse_capable(model):
            return self.nelbo(
                model(x_t_dev, noise.t, loops=loops),
                batch.to(device),
                x_t_dev,
                noise.t,
                noise.w,
                n_tokens,
            )
        pos = LossPositions.of(host_array(x_t) == self.mask_id)
        labels = pos.labels(batch.x0).to(device, non_blocking=True)  # [K]
        pos = pos.to(device)
        valid = pos.valid.float()  # [K]
        # [K]: 0 at the padding
        w = noise.nelbo_weight(self.schedule).index_select(0, pos.rows(x_t.shape[1])) * valid
        g = w / max(n_tokens, 1) if self.loss_weight == "elbo" else valid * (1.0 / max(pos.n, 1))
        deep = (
            {"supervise": self.supervised_loops(loops)}
            if self.deep_supervision != "none" and loops > 1 and torch.is_grad_enabled()
            else {}
        )
        loss, ce = model(
            x_t_dev,
            noise.t,
            loops=loops,
            predict=pos.index,
            labels=labels,
            label_weights=g,
            exclude=self.mask_id,
            **deep,
        )
        scores = None
        if self.score_tokens and torch.is_grad_enabled():
            # p(x0 | x_t) at the loss positions; the padding repeats a real position and its value
            p_true = torch.exp(-ce.detach().float())  # [K]
            scores = x_t_dev.new_zeros(x_t.shape, dtype=torch.float).view(-1)
            scores = scores.index_put_((pos.index,), p_true).view(x_t.shape)  # [B, L]
        return LossOutput(
            loss=loss, nll_sum=(ce * w).sum().detach(), n_tokens=n_tokens, scores=scores
        )

    def supervised_loops(self, loops: int) -> list[int]:
        """The loop counts whose outputs get the loss: every k in 1..S (``all``), or S plus each earlier k with
        probability 1/2 (``random``, drawn on the CPU from the global generator, which checkpoints save)."""
        if self.deep_supervision == "all":
            return list(range(1, loops + 1))
        keep = (torch.rand(loops - 1) < 0.5).numpy()  # CPU draw, read on the host: no device sync
        return [k + 1 for k, on in enumerate(keep) if on] + [loops]

    @staticmethod
    def _n_tokens(batch: Batch) -> int:
        """The scored (not frozen) tokens of ``batch``, counted on the host."""
        if batch.frozen is None:
            return batch.x0.numel()
        return batch.frozen.numel() - int(np.count_nonzero(host_array(batch.frozen)))

    def nelbo(
        self,
        logits: torch.Tensor,
        batch: Batch,
        x_t: torch.Tensor,
        t: torch.Tensor,
        w: Optional[torch.Tensor] = None,
        n_tokens: Optional[int] = None,
    ) -> LossOutput:
        """The same loss from full logits [B, L, V] at x_t (models without sparse prediction; the reference the
        sparse path is tested against): only masked positions contribute (SUBS copies the rest). ``w`` [B]: the
        importance weights of a non-uniform t sampler (``Noise.w``), None for uniform t; ``n_tokens``: the scored
        tokens when the caller counted them (else counted here)."""
        # [B, L]
        ce = F.cross_entropy(
            no_mask_logits(logits, self.mask_id).transpose(1, 2), batch.x0, reduction="none"
        )
        masked = x_t == self.mask_id
        weight = self.schedule.weight(t)[:, None]  # [B, 1]
        if w is not None:
            weight = weight * w[:, None]
        nll_sum = torch.where(masked, weight * ce, torch.zeros_like(ce)).sum()
        n_tokens = self._n_tokens(batch) if n_tokens is None else n_tokens
        if self.loss_weight == "uniform":
            loss = torch.where(masked, ce, torch.zeros_like(ce)).sum() / masked.sum().clamp_min(1)
        else:
            loss = nll_sum / max(n_tokens, 1)
        scores = None
        if self.score_tokens and torch.is_grad_enabled():
            scores = torch.where(masked, torch.exp(-ce.detach().float()), 0.0)  # [B, L]
        return LossOutput(loss=loss, nll_sum=nll_sum.detach(), n_tokens=n_tokens, scores=scores)


def predicted_fraction(diffusion) -> float:
    """The expected share of (non-frozen) positions the LM head runs on under a ``DiffusionConfig``'s objective
    (E_t[1 - alpha_t] for the MDM, 1 for AR): what FLOP accounting multiplies the head's cost by."""
    return make_objective(diffusion, mask_id=0).predicted_fraction()


def make_objective(diffusion, mask_id: int, antithetic: Optional[bool] = None) -> Objective:
    """The objective a ``DiffusionConfig`` describes (objective, schedule, antithetic t, t_eps, loss weight, time
    sampler and its weighting, complementary masks); ``antithetic`` overrides the config's (evaluation always uses
    antithetic t: the lowest-variance estimate; ``loopmdm.eval.nelbo`` also takes ``for_evaluation()``: uniform t).
    """
    anti = diffusion.antithetic if antithetic is None else antithetic
    return OBJECTIVES.get(diffusion.objective)(
        get_schedule(diffusion.schedule),
        mask_id,
        anti,
        diffusion.t_eps,
        diffusion.loss_weight,
        t_sampler=make_time_sampler(diffusion),
        t_weighting=getattr(diffusion, "t_weighting", "exact"),
        complementary_masks=getattr(diffusion, "complementary_masks", False),
    )
