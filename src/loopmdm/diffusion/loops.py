"""Training distributions of the loop count S (how many times the mid block runs in a step): the interface, the
paper's S ~ Uniform{1..S_max} and the fixed S of a plain MDM (S = 1).

``sample(gen, step)`` draws from a given ``torch.Generator`` (checkpointed by the trainer) and may use the step
number, so every rank draws the same S and a resumed run draws what an uninterrupted one would. ``pmf()`` gives
the FLOP accounting E[F(S)]. The other distributions a config can name (balanced, log-normal Poisson,
FLOP-proportional, a curriculum) and ``make_loop_distribution`` are in ``loop_variants``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from ..registry import Registry


class LoopDistribution:
    """Base class: ``sample(gen, step)`` draws one S >= 1; ``pmf()`` gives P(S = s) for FLOP accounting."""

    def sample(self, gen: torch.Generator, step: int = 0) -> int:
        raise NotImplementedError

    def pmf(self) -> dict[int, float]:
        raise NotImplementedError

    def mean(self) -> float:
        """E[S]."""
        return sum(s * p for s, p in self.pmf().items())

    def max(self) -> int:
        """The largest S this distribution draws (S_max)."""
        return max(self.pmf())

    def expect(self, f: Callable[[int], float]) -> float:
        """E[f(S)], e.g. the expected training FLOPs per token."""
        return sum(p * f(s) for s, p in self.pmf().items())

    def expect_over(self, f: Callable[[int], float], steps: int) -> float:
        """sum over steps 0..steps-1 of E_k[f(S)], e.g. the expected training FLOPs of a whole run."""
        return steps * self.expect(f)

    @classmethod
    def from_config(
        cls, cfg, total_steps: Optional[int] = None, seed: int = 0
    ) -> "LoopDistribution":
        """Build from a ``DiffusionConfig`` (its ``s_max`` / ``s_fixed`` / ``s_mean``)."""
        raise NotImplementedError


LOOP_DISTRIBUTIONS: Registry[type[LoopDistribution]] = Registry("loop distribution")


@LOOP_DISTRIBUTIONS.register("uniform")
class UniformLoops(LoopDistribution):
    """S ~ Uniform{1..S_max} (paper default); E[S] = (S_max + 1) / 2."""

    def __init__(self, s_max: int):
        self.s_max = s_max

    @classmethod
    def from_config(cls, cfg, total_steps=None, seed=0):
        return cls(cfg.s_max)

    def sample(self, gen, step=0):
        return int(torch.randint(1, self.s_max + 1, (1,), generator=gen).item())

    def pmf(self):
        return {s: 1.0 / self.s_max for s in range(1, self.s_max + 1)}


@LOOP_DISTRIBUTIONS.register("fixed")
class FixedLoops(LoopDistribution):
    """S = s every step (s = 1 is the plain, non-looped MDM)."""

    def __init__(self, s: int):
        self.s = s

    @classmethod
    def from_config(cls, cfg, total_steps=None, seed=0):
        return cls(cfg.s_fixed)

    def sample(self, gen, step=0):
        return self.s

    def pmf(self):
        return {self.s: 1.0}
