"""Noise schedules alpha_t for the absorbing-state process: P(token kept at time t) = alpha_t.

Each schedule is a tiny class returning (alpha_t, dalpha_t/dt) for t in [0, 1], with alpha_0 = 1
and alpha_1 = 0. MDLM's default is log-linear (alpha_t = 1 - t), the lowest-variance choice.
"""

from __future__ import annotations

import math

import torch

from .registry import Registry


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


SCHEDULES: Registry[type[NoiseSchedule]] = Registry("noise schedule")


@SCHEDULES.register("loglinear")
class LogLinear(NoiseSchedule):
    """alpha_t = 1 - t (MDLM's log-linear schedule); weight = 1 / t."""

    def alpha(self, t):
        return 1.0 - t

    def dalpha(self, t):
        return -torch.ones_like(t)


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
