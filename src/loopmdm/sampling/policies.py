"""Loop policies at inference: how many mid-block iterations S each network call runs, and where.

Each policy is one small class in the ``LOOP_POLICIES`` registry; ``run(runner, state)`` drives a
``LoopRunner`` (head output h_0 -> h_k = mid(h_{k-1}) ... -> tail) and returns the prediction with the
loop count each position received. Every policy keeps S within [s_min, s_max] (fixed: S itself).

* ``fixed``: S loops every step, S above the training S_max included.
* ``schedule``: S as a function of the fraction m of generated positions still masked (per sample):
  S = round(s_min + (s_max - s_min) * f(m)) with f one of ``SHAPES`` (the paper: loop gains concentrate
  at intermediate noise, hence the default ``hump``).
* ``converge``: per sample, stop when the relative change of the mid-block state at still-masked positions,
  ||h_k - h_{k-1}|| / ||h_{k-1}||, falls below ``threshold`` (criterion ``delta``), or when the KL between
  the predicted distributions of successive loops does (criterion ``kl``, which runs the tail after each
  loop: its cost is reported as coda_calls).
* ``per_token``: per position, stop updating a position once its relative state change is below
  ``threshold``; the others keep looping and attend to the frozen positions' cached keys / values.
* ``warm``: ``converge`` started from the previous step's final mid-block state at positions whose token did
  not change (newly revealed positions start from h_0), after FP-MGM's warm start.

Loop counts that depend on the data cost host reads: ``schedule`` one per call (the loop counts S), ``converge``,
``warm`` and ``per_token`` one per loop (which rows or positions still loop); ``fixed`` none.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ..errors import ConfigError
from ..model.fields import check_int, check_number
from ..registry import Registry
from .runner import LoopRunner, LoopState, Prediction

MAX_LOOPS = 1024  # loop iterations of one network call
# the tiny preset's training S_max; pass the checkpoint's diffusion.max_loops for other models
DEFAULT_LOOPS = 4

LOOP_POLICIES: Registry[type["LoopPolicy"]] = Registry("loop policy")


def _check_int(name: str, value, low: int = 1) -> int:
    """A loop count of one network call (loops, s_min, s_max): an integer in [low, MAX_LOOPS]."""
    return check_loops(
        check_int(value, f"loop policy option {name}", low), f"loop policy option {name}"
    )


def check_loops(s: int, what: str) -> int:
    """A loop count S of one network call: at most ``MAX_LOOPS`` (a typo there runs for hours)."""
    if s > MAX_LOOPS:
        raise ConfigError(
            f"{what}={s} exceeds the supported maximum of {MAX_LOOPS} loops; pass a smaller S "
            "(S_max of training is the usual scale, a few times it for extrapolation)"
        )
    return s


def _check_bounds(s_min, s_max) -> tuple[int, int]:
    s_min, s_max = _check_int("s_min", s_min), _check_int("s_max", s_max)
    if s_min > s_max:
        raise ConfigError(
            f"s_min={s_min} > s_max={s_max}; the loop count bounds need S_min <= S_max"
        )
    return s_min, s_max


def _check_threshold(value) -> float:
    return check_number(value, "loop policy option threshold", gt=0)


class LoopPolicy:
    """Base class. ``s_min`` / ``s_max`` bound the loops any position receives in one network call."""

    s_min: int = 1
    s_max: int = 1
    # can run with a key / value cache (``kvcache``): no per-position state of its own
    cacheable = True

    def reset(self, num_samples: int, seq_len: int) -> None:
        """Called once per ``generate`` before the first step (policies with memory clear it here)."""

    def run(self, runner: LoopRunner, state: LoopState) -> Prediction:
        raise NotImplementedError

    def describe(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@LOOP_POLICIES.register("fixed")
class Fixed(LoopPolicy):
    """S = ``loops`` mid-block iterations at every step (any S >= 1, also above the training S_max)."""

    def __init__(self, loops: int = DEFAULT_LOOPS):
        self.loops = _check_int("loops", loops)
        self.s_min = self.s_max = self.loops

    def run(self, runner, state):
        h = runner.ctx.h0  # [B, L, D]
        for k in range(self.loops):
            h = runner.full(h, k)
        loops = torch.full(state.x.shape, self.loops, dtype=torch.long, device=state.x.device)
        return Prediction(runner.coda(h), loops)


SHAPES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "hump": lambda m, c, w: torch.exp(-0.5 * ((m - c) / w) ** 2),  # peak at m = center
    "linear": lambda m, c, w: m,  # more loops when more is masked
    "inverse": lambda m, c, w: 1.0 - m,  # more loops near the end
    "constant": lambda m, c, w: torch.ones_like(m),  # always s_max
}


@LOOP_POLICIES.register("schedule")
class Schedule(LoopPolicy):
    """S = round(s_min + (s_max - s_min) * f(m)), m = fraction of the generated positions still masked
    (per sample), f = ``shape`` in {hump, linear, inverse, constant}; hump is a Gaussian bump of width
    ``width`` centred at ``center``."""

    def __init__(
        self,
        s_min: int = 1,
        s_max: int = DEFAULT_LOOPS,
        shape: str = "hump",
        center: float = 0.5,
        width: float = 0.25,
    ):
        self.s_min, self.s_max = _check_bounds(s_min, s_max)
        if not isinstance(shape, str) or shape not in SHAPES:
            raise ConfigError(
                f"unknown schedule shape {shape!r}; choose one of: {', '.join(SHAPES)}"
            )
        self.shape = shape
        self.center = check_number(center, "schedule option center", ge=0, le=1)
        self.width = check_number(width, "schedule option width", gt=0)

    def loops_for(self, masked_fraction: torch.Tensor) -> torch.Tensor:
        """Loop count per sample [B] for the fraction still masked [B]."""
        f = SHAPES[self.shape](masked_fraction.double(), self.center, self.width).clamp(0.0, 1.0)
        return torch.round(self.s_min + (self.s_max - self.s_min) * f).long()

    def run(self, runner, state):
        m = (state.masked & state.free).sum(1) / state.free.sum(1).clamp_min(1)  # [B]
        S = self.loops_for(m)  # [B]
        S_host = S.cpu().numpy()  # the call's one sync: which rows run loop k
        h = runner.ctx.h0
        for k in range(int(S_host.max())):
            h = runner.full(h, k, rows=host_rows(S_host > k, h.device))
        return Prediction(runner.coda(h), S[:, None].expand_as(state.x).clone())


def host_rows(mask: np.ndarray, device) -> torch.Tensor:
    """The indices [R] of the True entries of a host mask [B], on ``device`` (copied without waiting)."""
    return torch.from_numpy(np.flatnonzero(mask)).to(device, non_blocking=True)


def relative_change(
    new: torch.Tensor, old: torch.Tensor, where: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """||new - old|| / ||old|| per row [B] over the positions ``where`` [B, L] (all when None); states [B, L, D].
    A row with no such position scores 0 (nothing to predict: it exits at s_min)."""
    diff = (new - old).float().pow(2).sum(-1)  # [B, L]
    ref = old.float().pow(2).sum(-1)
    if where is not None:
        diff, ref = diff * where, ref * where
    return (diff.sum(1) / ref.sum(1).clamp_min(1e-12)).sqrt()


def token_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """||new - old|| / ||old|| per position [B, L]."""
    return (new - old).float().norm(dim=-1) / old.float().norm(dim=-1).clamp_min(1e-6)


def mean_kl(logp: torch.Tensor, logq: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """KL(p || q) averaged over positions ``where`` [B, L] per row [B]; logp, logq [B, L, V]."""
    kl = (logp.exp() * (logp - logq)).nan_to_num(0.0).sum(-1)  # [B, L]
    return (kl * where).sum(1) / where.sum(1).clamp_min(1)


@LOOP_POLICIES.register("converge")
class Converge(LoopPolicy):
    """Per-sample convergence exit: loop until the still-masked positions' state (``delta``) or predicted
    distribution (``kl``, needs two loops) changes by less than ``threshold``, within [s_min, s_max]."""

    criteria = ("delta", "kl")

    def __init__(
        self,
        threshold: float = 0.05,
        criterion: str = "delta",
        s_min: int = 1,
        s_max: int = DEFAULT_LOOPS,
    ):
        self.threshold = _check_threshold(threshold)
        if not isinstance(criterion, str) or criterion not in self.criteria:
            raise ConfigError(
                f"unknown convergence criterion {criterion!r}; choose one of: {', '.join(self.criteria)}"
            )
        self.criterion = criterion
        self.s_min, self.s_max = _check_bounds(s_min, s_max)

    def start(self, runner: LoopRunner, state: LoopState) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The state h [B, L, D] the loops start from, the most loops each row may run [B] and their maximum (host)."""
        limit = torch.full((state.x.shape[0],), self.s_max, dtype=torch.long, device=state.x.device)
        return runner.ctx.h0, limit, self.s_max

    def finish(self, h: torch.Tensor, state: LoopState, loops: torch.Tensor) -> None:
        """Called with the final mid-block state h [B, L, D] and the loops each row ran [B]."""

    def run(self, runner, state):
        B = state.x.shape[0]
        # a key / value cache computes only these positions [B, L]
        computed = getattr(runner, "queries", None)
        where = (state.masked if computed is None else state.masked & computed).float()  # [B, L]
        h, limit, most = self.start(runner, state)
        loops = torch.zeros(B, dtype=torch.long, device=h.device)
        live = limit > 0
        logits = prev_logp = None
        for k in range(most):
            live_host = live.cpu().numpy()  # the loop's one sync: which rows still loop
            if not live_host.any():
                break
            rows = host_rows(live_host, h.device)
            h_new = runner.full(h, k, rows=rows)
            loops[rows] += 1
            if self.criterion == "delta":
                score = relative_change(h_new[rows], h[rows], where[rows])  # [R]
            else:
                out = runner.coda(h_new, rows=rows)  # [R, L, V]
                if logits is None:
                    logits = torch.empty(B, *out.shape[1:], dtype=out.dtype, device=out.device)
                    prev_logp = torch.zeros(
                        B, *out.shape[1:], dtype=torch.float32, device=out.device
                    )
                logits[rows] = out
                logp = torch.log_softmax(out.float(), dim=-1)
                score = (
                    mean_kl(logp, prev_logp[rows], where[rows])
                    if k > 0
                    else torch.full_like(loops[rows], 1e9, dtype=torch.float)
                )
                prev_logp[rows] = logp
            h = h_new
            done = ((loops[rows] >= self.s_min) & (score < self.threshold)) | (
                loops[rows] >= limit[rows]
            )
            live[rows] = ~done
        self.finish(h, state, loops)
        if logits is None:
            logits = runner.coda(h)
        return Prediction(logits, loops[:, None].expand_as(state.x).clone())


@LOOP_POLICIES.register("per_token")
class PerToken(LoopPolicy):
    """Per-token exit: after each loop (at least s_min) a position whose relative state change
    ||h_k - h_{k-1}|| / ||h_{k-1}|| is below ``threshold`` stops being updated; the rest loop on (up to
    s_max), attending to the frozen positions through their cached keys / values. Compute is really saved:
    the mid block runs only on the active positions (FLOPs counted per position)."""

    cacheable = False

    def __init__(self, threshold: float = 0.05, s_min: int = 1, s_max: int = DEFAULT_LOOPS):
        self.threshold = _check_threshold(threshold)
        self.s_min, self.s_max = _check_bounds(s_min, s_max)

    def run(self, runner, state):
        h_prev = runner.ctx.h0
        h = runner.full(h_prev, 0, fill_cache=True)  # [B, L, D]; fills the key / value cache
        loops = torch.ones(state.x.shape, dtype=torch.long, device=h.device)  # [B, L]
        active = torch.ones_like(loops, dtype=torch.bool)
        for k in range(1, self.s_max):
            change = token_change(h, h_prev)  # [B, L] (0 for frozen positions)
            active &= ~((loops >= self.s_min) & (change < self.threshold))
            # the loop's one sync: which rows and how many positions loop
            per_row = active.sum(1).cpu().numpy()
            if not per_row.any():
                break
            h_prev, h = h, runner.partial(h, k, active, per_row)
            loops += active.long()
        return Prediction(runner.coda(h), loops)


@LOOP_POLICIES.register("warm")
class Warm(Converge):
    """``converge`` started from the previous step's final mid-block state at positions whose token is
    unchanged since that step (newly revealed positions and the first step start from the head output h_0).

    A warm-started state carries the loops already applied to it, so across steps its depth would grow without
    bound, far beyond the S the model was trained with (measured: the samples degrade badly). ``max_depth``
    (default: s_max) bounds it: no state ever has more than ``max_depth`` loops applied since its last start
    from h_0. A position is warm-started only when at least s_min loops remain in its budget, and a row runs
    at most as many loops as the budget of its deepest warm-started position leaves (and at most s_max)."""

    cacheable = False

    def __init__(
        self,
        threshold: float = 0.05,
        criterion: str = "delta",
        s_min: int = 1,
        s_max: int = DEFAULT_LOOPS,
        max_depth: Optional[int] = None,
    ):
        super().__init__(threshold, criterion, s_min, s_max)
        # the depth a warm state reaches over many steps, not the loops of one call: no MAX_LOOPS bound
        self.max_depth = (
            self.s_max
            if max_depth is None
            else check_int(max_depth, "loop policy option max_depth")
        )
        if self.max_depth < self.s_min:
            raise ConfigError(
                f"loop policy option max_depth={self.max_depth} is below s_min={self.s_min}; a "
                "state must be allowed at least s_min loops"
            )

    def reset(self, num_samples, seq_len):
        self._n = num_samples
        # [N, L, D] last final mid-block state of each sample
        self._h: Optional[torch.Tensor] = None
        self._x: Optional[torch.Tensor] = None  # [N, L] the tokens it was computed for
        self._depth: Optional[torch.Tensor] = None  # [N, L] loops applied to that state since h_0

    def start(self, runner, state):
        h0 = runner.ctx.h0
        B = state.x.shape[0]
        cap = min(self.s_max, self.max_depth)
        if getattr(self, "_h", None) is None:
            self._warm = torch.zeros(state.x.shape, dtype=torch.bool, device=h0.device)
            return h0, torch.full((B,), cap, dtype=torch.long, device=h0.device), cap
        depth = self._depth[state.rows]  # [B, L]
        # [B, L]
        self._warm = (self._x[state.rows] == state.x) & (depth + self.s_min <= self.max_depth)
        deepest = torch.where(self._warm, depth, torch.zeros_like(depth)).max(dim=1).values  # [B]
        # >= s_min by the choice of warm positions
        limit = (self.max_depth - deepest).clamp(max=cap)
        return (
            torch.where(self._warm[..., None], self._h[state.rows].to(h0.dtype), h0),
            limit,
            int(limit.max()),
        )

    def finish(self, h, state, loops):
        if getattr(self, "_h", None) is None:
            n = max(getattr(self, "_n", 0), int(state.rows.max()) + 1)
            self._h = torch.zeros(n, *h.shape[1:], dtype=h.dtype, device=h.device)
            self._x = torch.full((n, h.shape[1]), -1, dtype=torch.long, device=h.device)
            self._depth = torch.zeros(n, h.shape[1], dtype=torch.long, device=h.device)
        carried = torch.where(
            self._warm, self._depth[state.rows], torch.zeros_like(self._depth[state.rows])
        )
        self._h[state.rows] = h
        self._x[state.rows] = state.x
        self._depth[state.rows] = carried + loops[:, None]
