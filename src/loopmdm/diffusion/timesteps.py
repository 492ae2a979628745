"""Training distributions of the diffusion time t (under the log-linear schedule, the masking rate) behind one
registry, ``TIME_SAMPLERS``, and the importance weights that keep the NELBO unbiased under them.

The MDLM NELBO is an expectation over t ~ U[eps, 1) (density u(t) = 1 / (1 - eps)). A sampler draws t from another
density p(t) on [eps, 1) instead. ``diffusion.t_weighting`` then says what is trained:

- ``"exact"``: every row's NELBO weight -alpha'_t / (1 - alpha_t) is multiplied by u(t) / p(t) (``Noise.w``), so the
  loss stays an unbiased estimate of the same NELBO; only its variance (and what the gradient noise looks like)
  changes;
- ``"paper"``: no importance weight; the objective becomes the NELBO integrand reweighted by p(t) / u(t), which is
  how the papers that propose these samplers train (no longer a bound on the likelihood: validation always uses
  the uniform sampler, ``Objective.for_evaluation``).

Draws stay low-discrepancy: one uniform offset o and the grid v_i = (o + i / n) mod 1 (MDLM's antithetic t, or n
independent uniforms when ``antithetic`` is off), then t_i = F^{-1}(v_i), the sampler's inverse CDF. The uniform
sampler is exactly today's ``sample_t`` (the same generator calls and float operations, bit for bit).

Samplers (``density(t)`` on [eps, 1), ``icdf(v)``, ``sample(n, gen)``; parameters from
``diffusion.t_sampler_params``, checked by ``check_params`` with one-line errors):

- ``uniform``: t ~ U[eps, 1) (the default; no parameters).
- ``bell``: a bell-shaped density over t, after Hong et al., "Understanding and Accelerating the Training of Masked
  Diffusion Language Models" (arXiv 2605.13026), which trains MDMs with "bell-shaped time sampling" to counter the
  locality bias of language. Their exact density could not be read here (only the abstract), so the shape is OUR
  choice: a normal N(mean, std) truncated to [eps, 1) (``mean`` = 0.5, ``std`` = 0.2 by default). A truncated
  normal has a closed-form CDF and inverse CDF (so draws keep the low-discrepancy grid exactly) and one width
  parameter; at std = 0.2 the density at the ends of [0, 1) is ~4 % of its peak (importance weights up to ~11
  under ``"exact"``); std -> infinity is the uniform sampler.
- ``ppots``: the variance-minimising t-sampler of P-POTS (Jia et al., "Bringing Stability to Diffusion:
  Decomposing and Reducing Variance of Training Masked Diffusion Models", arXiv 2511.18159, "a Pareto-optimal
  t-sampler that minimizes training variance by sampling harder t values more often with appropriately smaller
  update steps"). Its released code (github.com/Qwen-Applications/StableDLLM, ``estimate_w.py`` / ``fit_p_of_t``)
  estimates, before training, w(t) = sqrt(Var[L_t] + E[L_t]^2) = sqrt(E[L_t^2]) of the per-sample weighted loss L_t
  on a grid of t (with the model being fine-tuned), fits a parametric density to w, mixes it with the uniform
  (``mix_uniform``) and trains with t ~ p and importance weight 1 / p(t). p*(t) proportional to sqrt(E[L_t^2]) is the
  density that minimises the second moment of the importance-weighted loss. Here p is piecewise constant over K
  equal bins of [eps, 1), proportional to the given ``w`` (K values, e.g. from ``estimate_ppots_weights``) and
  mixed with the uniform: p = (1 - mix) w / integral(w) + mix u (the code's "lightweight fallback" that treats w as
  the unnormalised density, without its 7-parameter fit). It is FIXED by the config, not adapted from the training
  losses: a sampler whose state changes with training would need its own checkpointed state for an exact resume,
  while a fixed one needs none (re-estimate it between runs, or between a run and its fine-tuning).

Under ``"exact"`` a sampler whose weight u/p exceeds ``MAX_IMPORTANCE_WEIGHT`` (1000) somewhere on [eps, 1) is
refused at validation (e.g. a bell with std = 0.1: weights ~7e4 near t = 1, an estimator of useless variance).

Complementary masks (``diffusion.complementary_masks``, ``MaskedDiffusion.draw``) pair rows; ``reflect`` gives the
second row's time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..model.fields import parse_number, short
from ..registry import Registry

T_WEIGHTINGS = ("exact", "paper")
MAX_PPOTS_BINS = 4096
# "exact" weighting refuses samplers whose u/p exceeds this somewhere on [eps, 1)
MAX_IMPORTANCE_WEIGHT = 1000.0


def unit_grid(n: int, gen: torch.Generator, antithetic: bool = True) -> torch.Tensor:
    """n numbers in [0, 1) (float32): one uniform offset o, then (o + i / n) mod 1, so the batch covers [0, 1)
    evenly (MDLM's antithetic t); or n independent uniforms. The generator calls of today's ``sample_t``."""
    if antithetic:
        return (torch.rand(1, generator=gen) + torch.arange(n) / n) % 1.0  # [n]
    return torch.rand(n, generator=gen)


@dataclass(frozen=True)
class Param:
    """One parameter of a sampler: default, allowed range [lo, hi] (``lo_open``: lo excluded), what it means.
    ``list_of``: a list of that many numbers at least (each in [lo, hi]) instead of one number."""

    default: Any
    lo: float
    hi: float
    doc: str
    lo_open: bool = False
    list_of: int = 0


class TimeSampler:
    """A density p(t) on [eps, 1): ``density(t)``, the inverse CDF ``icdf(v)``, ``sample(n, gen)`` (low-discrepancy
    through ``unit_grid``), ``weight(t)`` = u(t) / p(t) (the importance weight of ``t_weighting = "exact"``)."""

    params: dict[str, Param] = {}
    is_uniform = False

    def __init__(self, eps: float = 1e-3, **params):
        self.eps = float(eps)
        p = check_params(self._name(), params, self.params)
        for k, v in p.items():
            setattr(self, k, v)

    @classmethod
    def _name(cls) -> str:
        return next((n for n in TIME_SAMPLERS if TIME_SAMPLERS.get(n) is cls), cls.__name__)

    def density(self, t: torch.Tensor) -> torch.Tensor:
        """p(t) (float64), 0 outside [eps, 1]."""
        raise NotImplementedError

    def icdf(self, v: torch.Tensor) -> torch.Tensor:
        """t = F^{-1}(v) in [eps, 1) for v in [0, 1) (float64)."""
        raise NotImplementedError

    def sample(self, n: int, gen: torch.Generator, antithetic: bool = True) -> torch.Tensor:
        """n times t [n] (float32) from p: the inverse CDF of ``unit_grid``."""
        return self.icdf(unit_grid(n, gen, antithetic).double()).float()

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """u(t) / p(t) [same shape, float32]: the importance weight that makes a draw from p an unbiased draw of
        the uniform NELBO integral (u = 1 / (1 - eps))."""
        return (1.0 / ((1.0 - self.eps) * self.density(t.double()))).float()

    def max_weight(self, grid: int = 65536) -> float:
        """The largest importance weight u(t) / p(t) over [eps, 1] (on a fine grid and at both ends)."""
        t = torch.linspace(self.eps, 1.0, grid, dtype=torch.float64)
        return float(self.weight(t).double().max())

    def reflect(self, t: torch.Tensor) -> torch.Tensor:
        """1 + eps - t: the reflection of [eps, 1) about its middle (the time of a complementary row). A row timed
        reflect(t) with t ~ p has density p(1 + eps - t), so its importance weight is ``weight`` of the first row."""
        return (1.0 + self.eps) - t

    def mean_of(self, f, grid: int = 4096, reflected: bool = False) -> float:
        """E_p[f(t)] by the midpoint rule (``reflected``: under the reflected density p(1 + eps - t))."""
        t = self.eps + (1.0 - self.eps) * (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
        w = self.density(self.reflect(t) if reflected else t)
        # exactly 1 for the uniform sampler, so its numbers stay those of a plain mean
        w = w / w.mean()
        return float((f(t) * w).mean())


TIME_SAMPLERS: Registry[type[TimeSampler]] = Registry("time sampler")


@TIME_SAMPLERS.register("uniform")
class UniformTime(TimeSampler):
    """t ~ U[eps, 1): MDLM's sampler (the default)."""

    is_uniform = True

    def density(self, t):
        t = t.double()
        inside = (t >= self.eps) & (t <= 1.0)
        return torch.where(inside, torch.full_like(t, 1.0 / (1.0 - self.eps)), torch.zeros_like(t))

    def icdf(self, v):
        return self.eps + (1.0 - self.eps) * v.double()

    def sample(self, n, gen, antithetic=True):
        # the float32 ops of ``sample_t``
        return self.eps + (1.0 - self.eps) * unit_grid(n, gen, antithetic)

    def weight(self, t):
        return torch.ones_like(t, dtype=torch.float32)


@TIME_SAMPLERS.register("bell")
class BellTime(TimeSampler):
    """A bell over t: N(mean, std) truncated to [eps, 1) (our choice of bell, see the module docstring)."""

    params = {
        "mean": Param(0.5, 0.0, 1.0, "the peak of the bell", lo_open=True),
        "std": Param(0.2, 0.05, 10.0, "the width of the bell (large: uniform)"),
    }

    def _ends(self):
        a = torch.tensor((self.eps - self.mean) / self.std, dtype=torch.float64)
        b = torch.tensor((1.0 - self.mean) / self.std, dtype=torch.float64)
        return a, b, torch.special.ndtr(b) - torch.special.ndtr(a)

    def density(self, t):
        t = t.double()
        _, _, z = self._ends()
        x = (t - self.mean) / self.std
        p = torch.exp(-0.5 * x * x) / (math.sqrt(2 * math.pi) * self.std * z)
        return torch.where((t >= self.eps) & (t <= 1.0), p, torch.zeros_like(p))

    def icdf(self, v):
        v = v.double()
        a, b, _ = self._ends()
        lower = torch.special.ndtri(
            torch.special.ndtr(a) + v * (torch.special.ndtr(b) - torch.special.ndtr(a))
        )
        # the upper half through the survival function, which keeps its precision near t = 1
        upper = -torch.special.ndtri(
            (1.0 - v) * torch.special.ndtr(-a) + v * torch.special.ndtr(-b)
        )
        t = self.mean + self.std * torch.where(v <= 0.5, lower, upper)
        return t.clamp(self.eps, math.nextafter(1.0, 0.0))


@TIME_SAMPLERS.register("ppots")
class PPOTSTime(TimeSampler):
    """P-POTS-style variance-minimising sampler: p piecewise constant over K equal bins of [eps, 1), proportional
    to ``w`` (the root mean square of the weighted per-row loss in each bin, ``estimate_ppots_weights``), mixed
    with the uniform by ``mix``."""

    params = {
        "w": Param(None, 0.0, 1e12, "sqrt(E[L_t^2]) of the weighted loss per t-bin", list_of=2),
        "mix": Param(0.05, 0.0, 1.0, "share of the uniform density mixed in (bounds u/p by 1/mix)"),
    }

    def __init__(self, eps: float = 1e-3, **params):
        super().__init__(eps, **params)
        w = torch.tensor(self.w, dtype=torch.float64)
        k = len(w)
        self.width = (1.0 - self.eps) / k
        # [K] density per bin
        self.q = (1.0 - self.mix) * w / (w.sum() * self.width) + self.mix / (1.0 - self.eps)
        self.cdf = torch.cat(
            [torch.zeros(1, dtype=torch.float64), torch.cumsum(self.q * self.width, 0)]
        )
        self.cdf = self.cdf / self.cdf[-1]  # [K + 1]

    def _bin(self, t):
        return ((t - self.eps) / self.width).floor().long().clamp(0, len(self.q) - 1)

    def density(self, t):
        t = t.double()
        p = self.q[self._bin(t)]
        return torch.where((t >= self.eps) & (t <= 1.0), p, torch.zeros_like(p))

    def icdf(self, v):
        v = v.double()
        # q[k] > 0
        k = torch.searchsorted(self.cdf[1:].contiguous(), v, right=True).clamp(0, len(self.q) - 1)
        lo = self.eps + k * self.width
        t = lo + (v - self.cdf[k]) / self.q[k]
        return torch.minimum(t.clamp_min(lo), lo + self.width).clamp(
            self.eps, math.nextafter(1.0, 0.0)
        )


# --------------------------------------------------------------------------- configuration


def _number(path: str, value: Any, spec: Param, range_text: str) -> float:
    if isinstance(value, str):
        value = parse_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}={short(value)} must be a number; use {range_text}")
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    if not math.isfinite(x) or x > spec.hi or x < spec.lo or (spec.lo_open and x == spec.lo):
        raise ConfigError(f"{path}={short(value)} is out of range; use {range_text}")
    return x


def check_params(name: str, params: Optional[dict], specs: dict[str, Param]) -> dict[str, Any]:
    """The parameters of sampler ``name`` with defaults filled in and numbers normalised (numeric strings parsed),
    or a one-line ``ConfigError`` naming the key and its range."""
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ConfigError(
            f"diffusion.t_sampler_params={short(params)} must be a mapping of name -> value"
        )
    unknown = [k for k in params if k not in specs]
    if unknown:
        valid = ", ".join(specs) if specs else "none (leave t_sampler_params empty)"
        raise ConfigError(
            f"unknown diffusion.t_sampler_params key {short(unknown[0])} for t_sampler={name!r}; "
            f"valid keys: {valid}"
        )
    out: dict[str, Any] = {}
    for key, spec in specs.items():
        path = f"diffusion.t_sampler_params.{key}"
        lo = "<" if spec.lo_open else "<="
        range_text = f"{spec.lo:g} {lo} {key} <= {spec.hi:g} ({spec.doc})"
        value = params.get(key, spec.default)
        if spec.list_of:
            if value is None:
                raise ConfigError(
                    f"t_sampler={name!r} needs {path}: a list of >= {spec.list_of} numbers >= 0, "
                    f"{spec.doc} (loopmdm.diffusion.timesteps.estimate_ppots_weights measures them)"
                )
            if (
                not isinstance(value, (list, tuple))
                or not spec.list_of <= len(value) <= MAX_PPOTS_BINS
            ):
                raise ConfigError(
                    f"{path}={short(value)} must be a list of {spec.list_of}..{MAX_PPOTS_BINS} numbers "
                    f">= 0 ({spec.doc})"
                )
            value = [
                _number(path, v, spec, f"numbers in [{spec.lo:g}, {spec.hi:g}]") for v in value
            ]
            if sum(value) <= 0:
                raise ConfigError(
                    f"{path}={short(value)} sums to 0; give at least one positive value"
                )
        else:
            value = _number(path, value, spec, range_text)
        out[key] = value
    return out


def make_time_sampler(diffusion) -> TimeSampler:
    """The sampler a ``DiffusionConfig`` names (``t_sampler``, ``t_sampler_params``, ``t_eps``)."""
    cls = TIME_SAMPLERS.get(getattr(diffusion, "t_sampler", "uniform"))
    return cls(diffusion.t_eps, **(getattr(diffusion, "t_sampler_params", None) or {}))


def check_time_sampling(diffusion) -> dict[str, Any]:
    """Validate the time-sampling keys of a ``DiffusionConfig`` (one-line errors); returns the normalised
    ``t_sampler_params`` (defaults left out, numbers parsed)."""
    cls = TIME_SAMPLERS.get(diffusion.t_sampler)
    if diffusion.t_weighting not in T_WEIGHTINGS:
        raise ConfigError(
            f"diffusion.t_weighting={short(diffusion.t_weighting)} is unknown; use one of "
            f"{', '.join(T_WEIGHTINGS)} (exact: importance weights u(t)/p(t), an unbiased NELBO; "
            "paper: none)"
        )
    given = diffusion.t_sampler_params
    full = check_params(diffusion.t_sampler, given, cls.params)
    if (
        diffusion.t_weighting == "exact"
        and cls is PPOTSTime
        and full["mix"] == 0
        and min(full["w"]) == 0
    ):
        raise ConfigError(
            "diffusion.t_sampler_params.w has a 0 and mix=0: that t-bin is never drawn, so the exact "
            "NELBO weighting cannot cover it; make every w positive or set mix > 0"
        )
    if diffusion.t_weighting == "exact" and not cls.is_uniform:
        top = cls(diffusion.t_eps, **full).max_weight()
        if not top <= MAX_IMPORTANCE_WEIGHT:
            raise ConfigError(
                f"diffusion.t_sampler={diffusion.t_sampler!r} with these t_sampler_params has importance "
                f"weights u(t)/p(t) up to {top:.3g} > {MAX_IMPORTANCE_WEIGHT:g} (t_weighting='exact'), "
                "so the NELBO estimate's variance explodes; widen the density (std, mix) or use "
                "t_weighting='paper'"
            )
    return {k: full[k] for k in given}


# --------------------------------------------------------------------------- P-POTS estimate


@torch.no_grad()
def estimate_ppots_weights(
    model,
    rows,
    objective,
    loops: int,
    bins: int = 16,
    batch_size: int = 16,
    max_batches: Optional[int] = 4,
    repeats: int = 4,
    seed: int = 0,
) -> list[float]:
    """P-POTS' w(t) on ``bins`` equal bins of [eps, 1): sqrt of the mean of L^2 over the draws that fell in the
    bin, L being one row's NELBO estimate per token at its t (uniform, antithetic t; the MDM ``objective``'s
    schedule, mask and frozen-free rows [N, L] as numpy ints). Pass the result as
    ``diffusion.t_sampler_params.w`` with ``t_sampler = "ppots"``. Bins that no draw reached get the mean of the
    others."""
    import numpy as np

    from ..model.subs import no_mask_logits

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    evaluator = objective.for_evaluation()
    gen = torch.Generator().manual_seed(seed)
    s1 = torch.zeros(bins, dtype=torch.float64)
    s2 = torch.zeros(bins, dtype=torch.float64)
    count = torch.zeros(bins, dtype=torch.float64)
    n_batches = (
        math.ceil(len(rows) / batch_size)
        if max_batches is None
        else min(math.ceil(len(rows) / batch_size), max_batches)
    )
    eps = objective.t_eps
    try:
        for _ in range(repeats):
            for b in range(n_batches):
                x0 = torch.from_numpy(
                    np.asarray(rows[b * batch_size : (b + 1) * batch_size], dtype=np.int64)
                )
                x0 = x0.to(device)
                noise = evaluator.draw(x0.shape[0], x0.shape[1], gen).to(device)
                # [B, L] (q_sample's rule)
                masked = noise.u < (1.0 - objective.schedule.alpha(noise.t))[:, None]
                x_t = torch.where(masked, torch.full_like(x0, objective.mask_id), x0)
                logits = model(x_t, noise.t, loops=loops).float()
                # [B, L]
                ce = torch.nn.functional.cross_entropy(
                    no_mask_logits(logits, objective.mask_id).transpose(1, 2), x0, reduction="none"
                )
                # [B]
                per_row = (
                    (
                        torch.where(masked, ce, torch.zeros_like(ce)).sum(1)
                        * objective.schedule.weight(noise.t)
                        / x0.shape[1]
                    )
                    .double()
                    .cpu()
                )
                k = (
                    ((noise.t.double().cpu() - eps) / ((1.0 - eps) / bins))
                    .floor()
                    .long()
                    .clamp(0, bins - 1)
                )
                s1.index_add_(0, k, per_row)
                s2.index_add_(0, k, per_row * per_row)
                count.index_add_(0, k, torch.ones_like(per_row))
    finally:
        model.train(was_training)
    seen = count > 0
    w = torch.sqrt(s2 / count.clamp_min(1))
    w[~seen] = w[seen].mean() if seen.any() else 1.0
    return [float(x) for x in w]
