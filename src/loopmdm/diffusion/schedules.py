"""Noise schedules alpha_t for the absorbing-state process: P(token kept at time t) = alpha_t.

Each schedule is a tiny class returning (alpha_t, dalpha_t/dt) for t in [0, 1], with alpha_0 = 1
and alpha_1 = 0. MDLM's default is log-linear (alpha_t = 1 - t), the lowest-variance choice.
"""

from __future__ import annotations

import math

import torch

from ..registry import Registry


class NoiseSchedule:
    """Base class: subclasses implement ``alpha`` and ``dalpha``."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, alpha'_t) for a tensor of times t."""
        return self.alpha(t), self.dalpha(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """The NELBO weight -alpha'_t / (1 - alpha_t) of a masked token's cross-entropy."""
        alpha, dalpha = self(t)
        return -dalpha / (1.0 - alpha).clamp_min(1e-12)

    def t_for_masked_fraction(self, frac: torch.Tensor, iters: int = 40) -> torch.Tensor:
        """The time t in [0, 1] at which a token is masked with probability 1 - alpha_t = ``frac`` (float32, same
        shape): what a time-conditioned model must be told about a canvas with that share of positions masked.
        Bisection (alpha_t decreases from 1 at t = 0 to 0 at t = 1); subclasses with a closed form override it."""
        lo = torch.zeros_like(frac, dtype=torch.float64)
        hi = torch.ones_like(frac, dtype=torch.float64)
        target = frac.double()
        for _ in range(iters):
            mid = (lo + hi) / 2
            below = (1.0 - self.alpha(mid)) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return ((lo + hi) / 2).float()


SCHEDULES: Registry[type[NoiseSchedule]] = Registry("noise schedule")


@SCHEDULES.register("loglinear")
class LogLinear(NoiseSchedule):
    """alpha_t = 1 - t (MDLM's log-linear schedule); weight = 1 / t."""

    def alpha(self, t):
        return 1.0 - t

    def dalpha(self, t):
        return -torch.ones_like(t)

    def t_for_masked_fraction(self, frac, iters=40):
        return frac.float().clamp(0.0, 1.0)  # 1 - alpha_t = t


@SCHEDULES.register("cosine")
class Cosine(NoiseSchedule):
    """alpha_t = cos(pi t / 2)."""

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def dalpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


@SCHEDULES.register("linear")
class Linear(NoiseSchedule):
    """Linear in the log of alpha: alpha_t = exp(-sigma_max * t) rescaled so alpha_1 = 0."""

    sigma_max = 5.0

    def alpha(self, t):
        e = math.exp(-self.sigma_max)
        return (torch.exp(-self.sigma_max * t) - e) / (1.0 - e)

    def dalpha(self, t):
        e = math.exp(-self.sigma_max)
        return -self.sigma_max * torch.exp(-self.sigma_max * t) / (1.0 - e)


def get_schedule(name: str) -> NoiseSchedule:
    """Instantiate a registered schedule by name (``loglinear``, ``cosine``, ``linear``)."""
    return SCHEDULES.get(name)()
