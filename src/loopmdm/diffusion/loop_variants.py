"""The loop-count distributions beyond the paper's uniform one, and ``make_loop_distribution``, which builds the
one a ``DiffusionConfig`` names (``loop_dist``).

Huginn draws S from a log-normal Poisson; the balanced uniform draws each S once per block of S_max steps (exact
compute matching); ``flop_proportional`` draws S with p(S) proportional to 1 / F(S), F(S) the training FLOPs of a
step at S (affine in S: F(S) = a + b S), so every S in 1..S_max gets the same expected share of the training
compute; the trainer passes F (``make_loop_distribution(..., flops_fn=...)``, from ``loopmdm.model.flops``);
``balanced_flop_proportional`` draws it as one stratified sample of the run (exact compute matching).

Any of them can be given a curriculum (``diffusion.loop_curriculum_steps``, ``CurriculumLoops``): the largest
S ramps up from 1 to S_max over the first steps, so the mean loop count grows over training, as McLeish et al.
do when they retrofit recurrence onto a trained model (arXiv 2511.07384). The stage of a step is a function of
the step number alone, so resume stays exact.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..errors import ConfigError
from .loops import LOOP_DISTRIBUTIONS, LoopDistribution, UniformLoops


@LOOP_DISTRIBUTIONS.register("lognormal_poisson")
class LogNormalPoissonLoops(LoopDistribution):
    """Huginn: tau ~ N(log(mean) - sigma^2/2, sigma), S = 1 + Poisson(exp(tau)), clipped to [1, S_max]."""

    sigma = 0.5

    def __init__(self, s_mean: float, s_max: int):
        self.s_mean, self.s_max = s_mean, s_max
        self._pmf = self._estimate_pmf()

    @classmethod
    def from_config(cls, cfg, total_steps=None, seed=0):
        return cls(cfg.s_mean, cfg.s_max)

    def _draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        mu = math.log(max(self.s_mean - 1.0, 1e-3)) - 0.5 * self.sigma**2
        tau = torch.randn(n, generator=gen) * self.sigma + mu
        s = 1 + torch.poisson(tau.exp(), generator=gen).long()
        return s.clamp(1, self.s_max)

    def sample(self, gen, step=0):
        return int(self._draw(1, gen).item())

    def _estimate_pmf(self, n: int = 200_000) -> dict[int, float]:
        s = self._draw(n, torch.Generator().manual_seed(1234))
        counts = torch.bincount(s, minlength=self.s_max + 1).double() / n
        return {i: float(counts[i]) for i in range(1, self.s_max + 1) if counts[i] > 0}

    def pmf(self):
        return self._pmf


@LOOP_DISTRIBUTIONS.register("flop_proportional")
class FlopProportionalLoops(LoopDistribution):
    """p(S) proportional to 1 / F(S) on 1..S_max, F(S) the training FLOPs of a step at S: every loop count gets the
    same expected share of the compute (p(S) F(S) is constant), so the cheap small S are drawn more often than
    under the uniform distribution and the expensive large ones less. F(S) = a + b S is affine in S (base cost a,
    per-loop cost b, with the loss head at the expected masked share): ``flops_fn(S)``, e.g.
    ``lambda s: train_flops_per_token(model_cfg, s, seq_len, predicted_fraction)`` as the trainer passes it.
    Without ``flops_fn`` F(S) is taken proportional to S (the loop-dominated limit a = 0, p(S) proportional to
    1 / S), which overweights small S when the head, tail and LM head are not negligible. E[F] = S_max / sum_S
    1 / F(S), the harmonic mean of F over 1..S_max; the draw is one uniform through the CDF of ``gen``."""

    needs_flops = True

    def __init__(self, s_max: int, flops_fn: Optional[Callable[[int], float]] = None):
        self.s_max = s_max
        cost = {
            s: float(flops_fn(s)) if flops_fn is not None else float(s) for s in range(1, s_max + 1)
        }
        bad = [s for s, c in cost.items() if not (math.isfinite(c) and c > 0)]
        if bad:
            raise ConfigError(
                f"loop_dist='flop_proportional': the FLOPs of a step at S={bad[0]} are "
                f"{cost[bad[0]]!r}; they must be a positive number for every S in 1..{s_max}"
            )
        z = sum(1.0 / c for c in cost.values())
        self._pmf = {s: (1.0 / c) / z for s, c in cost.items()}
        self._cdf = torch.tensor(list(self._pmf.values()), dtype=torch.float64).cumsum(0)

    @classmethod
    def from_config(cls, cfg, total_steps=None, seed=0, flops_fn=None):
        return cls(cfg.s_max, flops_fn)

    def sample(self, gen, step=0):
        u = torch.rand(1, generator=gen, dtype=torch.float64)
        return (
            int(
                torch.searchsorted(self._cdf, u * self._cdf[-1], right=True).clamp(
                    max=self.s_max - 1
                )
            )
            + 1
        )

    def pmf(self):
        return self._pmf


@LOOP_DISTRIBUTIONS.register("balanced_flop_proportional")
class BalancedFlopProportionalLoops(FlopProportionalLoops):
    """``flop_proportional`` drawn as one stratified sample of the whole run, for exact compute matching: with
    n = ``total_steps``, the loop counts of the n steps are the inverse CDF at (u + k) / n, k = 0..n-1 (one
    uniform u: systematic sampling), in a random order. Each S appears within one of n p(S) times, so the run
    spends within about one step's F(S_max) - F(1) of its expected FLOPs (independent draws missed it by up to
    8% at 63 steps). A function of (seed, total_steps) alone, so a resumed run draws what an uninterrupted one
    would; without ``total_steps`` (or past it) the independent draw."""

    def __init__(
        self,
        s_max: int,
        flops_fn: Optional[Callable[[int], float]] = None,
        total_steps: Optional[int] = None,
        seed: int = 0,
    ):
        super().__init__(s_max, flops_fn)
        self.total_steps, self.seed = total_steps, seed
        self._plan: Optional[list[int]] = None

    @classmethod
    def from_config(cls, cfg, total_steps=None, seed=0, flops_fn=None):
        return cls(cfg.s_max, flops_fn, total_steps, seed)

    def sample(self, gen, step=0):
        n = self.total_steps
        if n is None or not 0 <= step < n:
            return super().sample(gen, step)
        if self._plan is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7)
            u = torch.rand(1, generator=g, dtype=torch.float64)
            q = (u + torch.arange(n, dtype=torch.float64)) / n  # [n] quantiles in (0, 1)
            s = torch.searchsorted(self._cdf / self._cdf[-1], q, right=True).clamp(
                max=self.s_max - 1
            )
            self._plan = (s[torch.randperm(n, generator=g)] + 1).tolist()  # [n] S of each step
        return self._plan[step]


@LOOP_DISTRIBUTIONS.register("balanced")
class BalancedUniformLoops(UniformLoops):
    """S ~ Uniform{1..S_max} at every step, drawn as shuffled blocks of S_max steps that hold each S once.

    Each step's S is still uniform, but the loop counts of every complete block add up to exactly
    S_max (S_max + 1) / 2, so cumulative training FLOPs follow their expectation and runs can be matched in
    total compute (a variance reduction, like antithetic t). With ``total_steps`` known, the last, incomplete
    block is made of random pairs (s, S_max + 1 - s) (plus the middle value when its length is odd), so the run
    ends within half a loop iteration of its expected FLOPs. The block of step k is a function of (seed, k // S_max)
    alone, so a resumed run draws exactly the loop counts of an uninterrupted one without extra state."""

    def __init__(self, s_max: int, total_steps: Optional[int] = None, seed: int = 0):
        super().__init__(s_max)
        self.total_steps, self.seed = total_steps, seed

    @classmethod
    def from_config(cls, cfg, total_steps=None, seed=0):
        return cls(cfg.s_max, total_steps, seed)

    def sample(self, gen, step=0):
        n = self.s_max
        block, pos = divmod(step, n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + block)
        left = None if self.total_steps is None else self.total_steps - block * n
        if left is not None and 0 < left < n:
            return self._final_block(left, g)[pos]
        return int(torch.randperm(n, generator=g)[pos]) + 1

    def _final_block(self, r: int, gen: torch.Generator) -> list[int]:
        n = self.s_max
        lows = (torch.randperm(n // 2, generator=gen) + 1).tolist()[: r // 2]
        out = [v for s in lows for v in (s, n + 1 - s)]
        if r % 2:
            mid = (n + 1) // 2 + (
                int(torch.randint(0, 2, (1,), generator=gen)) if n % 2 == 0 else 0
            )
            out.append(mid)
        return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


class CurriculumLoops(LoopDistribution):
    """A curriculum over S: during the first ``steps`` training steps the loop count is drawn from
    ``stage(c)``, the same distribution with its largest S capped at c, where c ramps linearly from 1 to S_max
    (c_k = 1 + floor((S_max - 1) k / steps) at step k, so step 0 runs S = 1, the loopified model's exact
    regime); from step ``steps`` on it is ``final``. The mean loop count thus grows over training. ``pmf()``
    is the final distribution (what evaluation and sampling default to); ``pmf_at(step)`` the one a step uses.

    stage(c) returns the distribution capped at c (built once per c). Deterministic per step: the stage of step k
    depends on k alone, and the draw on the trainer's checkpointed generator."""

    def __init__(
        self, final: LoopDistribution, stage: Callable[[int], LoopDistribution], steps: int
    ):
        self.final, self.steps, self.s_max = final, steps, final.max()
        self._stage, self._stages = stage, {}

    def cap(self, step: int) -> int:
        """The largest S of step ``step`` (S_max once the ramp is over)."""
        if step >= self.steps:
            return self.s_max
        return 1 + (self.s_max - 1) * max(step, 0) // self.steps

    def stage(self, step: int) -> LoopDistribution:
        """The distribution step ``step`` draws from."""
        c = self.cap(step)
        if step >= self.steps or c >= self.s_max:
            return self.final
        if c not in self._stages:
            self._stages[c] = self._stage(c)
        return self._stages[c]

    def sample(self, gen, step=0):
        return self.stage(step).sample(gen, step)

    def pmf(self):
        return self.final.pmf()

    def pmf_at(self, step: int) -> dict[int, float]:
        return self.stage(step).pmf()

    def expect_over(self, f: Callable[[int], float], steps: int) -> float:
        ramp = min(steps, self.steps)
        total = sum(self.stage(k).expect(f) for k in range(ramp))
        return total + max(0, steps - ramp) * self.final.expect(f)


def _capped(cfg, cap: int):
    """A copy of a ``DiffusionConfig`` whose loop distribution stops at S = cap."""
    import copy

    c = copy.copy(cfg)
    c.s_max = cap
    c.s_fixed = min(cfg.s_fixed, cap)
    c.s_mean = max(1.0, cfg.s_mean * cap / max(cfg.s_max, 1))
    return c


def check_support(dist: LoopDistribution, name: str, cap: Optional[int] = None) -> LoopDistribution:
    """``dist`` itself when every S it can draw is in 1..cap, else a one-line ``ConfigError`` (a step with S = 0
    would skip the mid block; S above the cap breaks the memory and FLOP budget the run was sized for)."""
    support = [s for s, p in dist.pmf().items() if p > 0]
    low, high = min(support, default=0), max(support, default=0)
    if low < 1:
        raise ConfigError(
            f"loop distribution {name!r} can draw S={low}; every training step runs the loop at least "
            "once (S >= 1)"
        )
    if cap is not None and high > cap:
        raise ConfigError(
            f"loop distribution {name!r} can draw S={high}, above its cap {cap} (diffusion.s_max, or "
            "s_fixed for 'fixed'); raise the cap or lower the distribution's S"
        )
    return dist


def make_loop_distribution(
    cfg,
    total_steps: Optional[int] = None,
    seed: int = 0,
    flops_fn: Optional[Callable[[int], float]] = None,
) -> LoopDistribution:
    """The distribution a ``DiffusionConfig`` names (``loop_dist``), with its curriculum when
    ``loop_curriculum_steps`` > 0; ``total_steps`` / ``seed`` are used by the balanced distribution, ``flops_fn``
    (the training FLOPs of a step at S) by ``flop_proportional`` (without it: F(S) proportional to S). Its support
    is checked: S >= 1 and S <= its cap (``check_support``)."""
    cls = LOOP_DISTRIBUTIONS.get(cfg.loop_dist)

    def build(c, ts):
        if getattr(cls, "needs_flops", False):
            return cls.from_config(c, ts, seed, flops_fn=flops_fn)
        return cls.from_config(c, ts, seed)

    cap = cfg.s_fixed if cfg.loop_dist == "fixed" else cfg.s_max
    final = check_support(build(cfg, total_steps), cfg.loop_dist, cap)
    steps = getattr(cfg, "loop_curriculum_steps", 0) or 0
    if steps <= 0 or final.max() <= 1:
        return final
    return CurriculumLoops(final, lambda c: build(_capped(cfg, c), None), steps)
