"""Training distributions of the loop count S (how many times the mid block runs in a step).

The paper draws S ~ Uniform{1..S_max} per training step; Huginn draws from a log-normal Poisson.
Every distribution draws from a given ``torch.Generator`` so that all ranks draw the same S.
"""

from __future__ import annotations

import math

import torch

from .config import DiffusionConfig
from .registry import Registry


class LoopDistribution:
    """Base class: ``sample(gen)`` draws one S >= 1; ``pmf()`` gives P(S = s) for FLOP accounting."""

    def sample(self, gen: torch.Generator) -> int:
        raise NotImplementedError

    def pmf(self) -> dict[int, float]:
        raise NotImplementedError

    def mean(self) -> float:
        """E[S]."""
        return sum(s * p for s, p in self.pmf().items())

    def max(self) -> int:
        """The largest S this distribution draws (S_max)."""
        return max(self.pmf())

    def expect(self, f) -> float:
        """E[f(S)], e.g. the expected training FLOPs per token."""
        return sum(p * f(s) for s, p in self.pmf().items())


LOOP_DISTRIBUTIONS: Registry[type[LoopDistribution]] = Registry("loop distribution")


@LOOP_DISTRIBUTIONS.register("uniform")
class UniformLoops(LoopDistribution):
    """S ~ Uniform{1..S_max} (paper default); E[S] = (S_max + 1) / 2."""

    def __init__(self, cfg: DiffusionConfig):
        self.s_max = cfg.s_max

    def sample(self, gen):
        return int(torch.randint(1, self.s_max + 1, (1,), generator=gen).item())

    def pmf(self):
        return {s: 1.0 / self.s_max for s in range(1, self.s_max + 1)}


@LOOP_DISTRIBUTIONS.register("fixed")
class FixedLoops(LoopDistribution):
    """S = s_fixed every step (s_fixed = 1 is the plain, non-looped MDM)."""

    def __init__(self, cfg: DiffusionConfig):
        self.s = cfg.s_fixed

    def sample(self, gen):
        return self.s

    def pmf(self):
        return {self.s: 1.0}


@LOOP_DISTRIBUTIONS.register("lognormal_poisson")
class LogNormalPoissonLoops(LoopDistribution):
    """Huginn: tau ~ N(log(mean) - sigma^2/2, sigma), S = 1 + Poisson(exp(tau)), clipped to [1, S_max]."""

    sigma = 0.5

    def __init__(self, cfg: DiffusionConfig):
        self.s_mean = cfg.s_mean
        self.s_max = cfg.s_max
        self._pmf = self._estimate_pmf()

    def _draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        mu = math.log(max(self.s_mean - 1.0, 1e-3)) - 0.5 * self.sigma**2
        tau = torch.randn(n, generator=gen) * self.sigma + mu
        s = 1 + torch.poisson(tau.exp(), generator=gen).long()
        return s.clamp(1, self.s_max)

    def sample(self, gen):
        return int(self._draw(1, gen).item())

    def _estimate_pmf(self, n: int = 200_000) -> dict[int, float]:
        s = self._draw(n, torch.Generator().manual_seed(1234))
        counts = torch.bincount(s, minlength=self.s_max + 1).double() / n
        return {i: float(counts[i]) for i in range(1, self.s_max + 1) if counts[i] > 0}

    def pmf(self):
        return self._pmf


def get_loop_distribution(cfg: DiffusionConfig) -> LoopDistribution:
    """Instantiate ``cfg.loop_dist`` from the registry."""
    return LOOP_DISTRIBUTIONS.get(cfg.loop_dist)(cfg)
