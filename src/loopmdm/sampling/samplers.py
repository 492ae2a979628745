"""Samplers: how a masked canvas becomes text over T denoising steps. One small class each, in ``SAMPLERS``.

* ``ancestral`` (MDLM): from t to s < t every still-masked token is revealed with probability
  (alpha_s - alpha_t) / (1 - alpha_t), its value drawn from p_theta(x_0 | x_t); revealed tokens never change.
* ``cached`` (MDLM's cached ancestral sampler): the same, but a sample whose tokens did not change since its
  last network evaluation reuses that prediction instead of calling the network. Both samplers draw the
  same random numbers at every step (two uniforms per position: reveal, token), so with a model whose
  prediction depends on x_t only (``time_conditioning='none'``) and a loop policy without memory, the
  tokens are identical under the same seed. With adaLN time conditioning the reused prediction was made
  at an earlier t (MDLM's approximation) and tokens can differ.
* ``confidence`` (LLaDA / Dream): at each step draw a candidate for every masked position, then keep the
  k_i most confident (by an order of ``loopmdm.sampling.orders.ORDERS``: ``probability``, ``margin`` of the
  top two, negative ``entropy``, or ``random`` as a control); k_i is precomputed from the noise schedule
  (``transfer_counts``). The network is told the t at which the schedule masks the canvas's masked fraction.
* ``semi_ar``: left-to-right blocks of ``block_length`` positions, confidence unmasking inside each block.

``confidence`` and ``semi_ar`` take the fast-sampling options:

* ``threshold`` in (0, 1] (parallel decoding, Fast-dLLM): each step commits every candidate whose confidence
  (the ``probability`` or ``margin`` order) exceeds it, and at least the schedule's k_i (at least one), so the
  number of steps adapts: with T = L (one token per step otherwise) it ends as soon as nothing is masked;
* ``cache`` (``none``, ``prefix``, ``dual``, ``delayed``, ``loops``), ``refresh``, ``delay``: approximate
  key / value caching through head, every loop of the mid block and tail (``loopmdm.sampling.kvcache``).

Every sampler works on a ``Session`` that owns the canvas, the RNG, the compute meter and the trajectory.

A denoising step does not wait for the device: the random numbers are drawn on the host, and the host follows which
positions are masked (ancestral: exactly, since the reveals are decided by host uniforms; confidence: how many per
row, since each step reveals k_i of them), so the positions a step reads are gathered by integer indices of a size
the host knows (``marked_positions``), never by boolean masks. A confidence threshold reveals a data-dependent
number: then each step reads the masked counts once.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..diffusion.schedules import NoiseSchedule
from ..errors import ConfigError
from ..model.fields import check_int, check_number
from ..registry import Registry
from .cache_modes import cache_mode
from .filters import draw
from .kvcache import KVCache
from .orders import ORDERS
from .runner import marked_positions
from .session import Session, scatter_flat

FAST_SAMPLERS = "confidence and semi_ar"
_FAST = f"an option of the samplers {FAST_SAMPLERS}"


class Sampler:
    """Base class: ``run(session)`` fills every mask of ``session.x`` (revealed tokens never change)."""

    #: what ``build`` adds to the error for an option this sampler does not take but another one does
    option_hints = {
        "threshold": f"parallel decoding by confidence threshold is {_FAST}",
        "cache": f"key / value caching is {_FAST}",
        "refresh": f"key / value caching is {_FAST}",
        "delay": f"key / value caching is {_FAST}",
        "block_length": "blocks are an option of semi_ar",
        "order": f"unmasking orders are {_FAST}",
    }

    def run(self, session: Session) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


SAMPLERS: Registry[type[Sampler]] = Registry("sampler")


def time_grid(steps: int) -> torch.Tensor:
    """t_0 = 1 > t_1 > ... > t_T = 0, float64 [T + 1]."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


@SAMPLERS.register("ancestral")
class Ancestral(Sampler):
    """MDLM ancestral sampling; the network runs at every step (``cached`` skips unchanged samples)."""

    reuse = False
    granularity = "batch"

    def rows_to_evaluate(self, changed: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """Rows needing a network call (None = all rows in one batch; empty = none), from the rows whose tokens
        changed since the last call ``changed`` [N] (host; None before the first call)."""
        if not self.reuse or changed is None:
            return None
        if not changed.any():
            return np.zeros(0, dtype=np.int64)
        if self.granularity == "batch" or changed.all():
            return None
        return np.flatnonzero(changed)

    def run(self, s: Session) -> None:
        grid = time_grid(s.steps)
        ts, alpha = grid.numpy(), s.schedule.alpha(grid).double().numpy()
        # [N, L], followed on the host: the reveals are decided by host uniforms
        masked = s.host_state()[0]
        logits = loops = changed = None
        for i in range(s.steps):
            a_t, a_s = float(alpha[i]), float(alpha[i + 1])
            p_reveal = (a_s - a_t) / max(1.0 - a_t, 1e-12)
            # drawn every step, whatever runs
            u_reveal, u_token = (s.uniform_host(), s.uniform_host())
            rows = self.rows_to_evaluate(changed)
            if rows is None or len(rows):
                t = torch.full((s.N,), float(ts[i]), device=s.x.device)
                rows_dev = (
                    None
                    if rows is None
                    else torch.from_numpy(rows).to(s.x.device, non_blocking=True)
                )
                pred = s.predict(t, i, rows_dev)
                if rows is None:
                    logits, loops = pred.logits, pred.loops
                else:
                    logits[rows_dev], loops[rows_dev] = pred.logits, pred.loops
                changed = np.zeros(s.N, dtype=bool)
            reveal = masked & (u_reveal.numpy() < p_reveal)  # [N, L]
            index = np.flatnonzero(reveal)  # [M]
            if len(index):
                self.reveal_at(s, i, index, logits, loops, u_token)
                masked &= ~reveal
                changed |= reveal.any(1)
            if s.end_step(i):
                break

    @staticmethod
    def reveal_at(
        s: Session,
        step: int,
        index: np.ndarray,
        logits: torch.Tensor,
        loops: torch.Tensor,
        u_token: torch.Tensor,
    ) -> None:
        """Draw and write the tokens at the flat positions ``index`` [M] (host) from ``logits`` [N, L, V] and the
        host uniforms ``u_token`` [N, L]."""
        device = s.x.device
        flat = torch.from_numpy(index).to(device, non_blocking=True)  # [M]
        # [M]
        u = torch.from_numpy(u_token.numpy().reshape(-1)[index]).to(device, non_blocking=True)
        tokens, conf = s.draw_tokens(logits.reshape(-1, logits.shape[-1]).index_select(0, flat), u)
        where = scatter_flat(flat, torch.ones_like(flat, dtype=torch.bool), (s.N, s.L), False)
        s.reveal(
            step,
            where,
            scatter_flat(flat, tokens, (s.N, s.L), s.mask_id),
            loops,
            scatter_flat(flat, conf, (s.N, s.L)),
        )


@SAMPLERS.register("cached")
class CachedAncestral(Ancestral):
    """Ancestral sampling that reuses a sample's last prediction while its tokens are unchanged.
    granularity='row' evaluates only the samples that changed; 'batch' calls the network for the whole
    batch as soon as any sample changed (bitwise the same logits as uncached, fewer savings for N > 1)."""

    reuse = True

    def __init__(self, granularity: str = "row"):
        if not isinstance(granularity, str) or granularity not in ("row", "batch"):
            raise ConfigError(
                f"sampler option granularity={granularity!r} must be 'row' or 'batch'"
            )
        self.granularity = granularity


def transfer_counts(masked: torch.Tensor, steps: int, schedule: NoiseSchedule) -> torch.Tensor:
    """Tokens to reveal per step [N, T] for ``masked`` [N] masked tokens over T steps, following alpha_t
    (linear for the log-linear schedule, as LLaDA's precomputed counts): after step i a fraction
    alpha_{t_{i+1}} of them is revealed; each row sums to its masked count. Computed on the host; on
    ``masked``'s device."""
    host = masked if masked.device.type == "cpu" else masked.cpu()
    alpha = schedule.alpha(time_grid(steps)).double()[1:].clamp(0.0, 1.0)  # [T]
    cum = torch.round(host.double()[:, None] * alpha[None]).long()  # [N, T]
    cum[:, -1] = host
    cum = torch.cummax(cum, dim=1).values
    counts = torch.diff(cum, dim=1, prepend=torch.zeros_like(cum[:, :1]))
    return counts if masked.device.type == "cpu" else counts.to(masked.device, non_blocking=True)


class Unmasking:
    """What the host knows of confidence unmasking within ``candidates`` [N, L] (the positions a run of steps may
    fill): how many of them are still masked per row (``left`` [N]), and the tokens to reveal per step (``counts``
    [N, T], on the host and on the device). Without a threshold a step reveals exactly min(k_i, left) per row;
    with one, the counts are read back after the step (one sync)."""

    def __init__(self, s: Session, candidates: torch.Tensor, left: np.ndarray, steps: int):
        self.candidates, self.left = candidates, left
        # [N, T] on the host
        self.counts = transfer_counts(torch.from_numpy(left), steps, s.schedule)
        self.counts_dev = self.counts.to(s.x.device, non_blocking=True)

    def after_step(self, s: Session, step: int, threshold: Optional[float]) -> None:
        """Update ``left`` after step ``step`` (0-based within this run of steps)."""
        if threshold is None:
            self.left = self.left - np.minimum(self.counts[:, step].numpy(), self.left)
        else:
            self.left = (s.masked & self.candidates).sum(1).cpu().numpy()


def confidence_step(
    s: Session,
    step: int,
    unmasking: Unmasking,
    i: int,
    order: str,
    threshold: Optional[float] = None,
) -> None:
    """One LLaDA-style step (step ``i`` of ``unmasking``): predict, draw a token for every masked candidate, reveal
    the k_i [N] most confident. With ``threshold``, also every candidate whose score exceeds it, and at least one
    per row that has candidates."""
    u_token, u_order = s.uniform(), s.uniform()
    cand = unmasking.candidates & s.masked  # [N, L]
    m = int(unmasking.left.sum())
    pred = s.predict(s.time_of_canvas(), step)
    if not m:
        return
    flat = marked_positions(cand, m)  # [M]
    logits = pred.logits.reshape(-1, pred.logits.shape[-1]).index_select(0, flat)  # [M, V]
    tokens = draw(s.filt.log_probs(logits, s.mask_id), u_token.reshape(-1).index_select(0, flat))
    probs = s.model_probs(logits)
    conf = probs.gather(-1, tokens[:, None]).squeeze(-1)
    # [N, L]
    score = scatter_flat(
        flat,
        ORDERS.get(order)(probs, tokens, u_order.reshape(-1).index_select(0, flat)),
        (s.N, s.L),
        -math.inf,
    )
    rank = torch.empty_like(score, dtype=torch.long).scatter_(
        1,
        score.argsort(dim=1, descending=True, stable=True),
        torch.arange(s.L, device=s.x.device).expand(s.N, s.L),
    )
    keep = rank < unmasking.counts_dev[:, i, None]
    if threshold is not None:
        keep |= (score > threshold) | (rank == 0)
    s.reveal(
        step,
        cand & keep,
        scatter_flat(flat, tokens, (s.N, s.L), s.mask_id),
        pred.loops,
        scatter_flat(flat, conf, (s.N, s.L)),
    )


def _check_order(order: str) -> str:
    ORDERS.get(order)  # a one-line error naming the orders
    return order


THRESHOLD_ORDERS = ("probability", "margin")  # orders whose score is a confidence in [0, 1]


class FastOptions:
    """The options ``confidence`` and ``semi_ar`` share: parallel decoding by ``threshold`` and key / value
    caching (``cache``, ``refresh``, ``delay``; see ``loopmdm.sampling.kvcache``). ``name``: the registry name,
    which the cache modes are checked against."""

    name = ""

    def _fast(self, order: str, threshold, cache, refresh, delay) -> None:
        self.order = _check_order(order)
        self.threshold = (
            None
            if threshold is None
            else check_number(
                threshold,
                "sampler option threshold",
                gt=0,
                le=1,
                hint=" (a confidence: probability or margin)",
            )
        )
        if self.threshold is not None and self.order not in THRESHOLD_ORDERS:
            raise ConfigError(
                f"sampler option threshold compares a confidence in (0, 1]; use order="
                f"{' or order='.join(THRESHOLD_ORDERS)}, not order={order}"
            )
        self._cache = cache_mode(self.name, cache, refresh, delay)
        self.cache, self.refresh, self.delay = self._cache.name, self._cache.refresh, delay

    def start_cache(self, s: Session) -> None:
        """Give the session a key / value cache when one is asked for."""
        if self._cache.active:
            s.kv = KVCache(
                self._cache, s.denoiser.policy, s.N, s.L, s.x.device, model=s.denoiser.model
            )

    def done(self, unmasking: Unmasking) -> bool:
        """With a threshold the step count adapts: stop once no candidate is masked."""
        return self.threshold is not None and not unmasking.left.any()

    def unmask(
        self, s: Session, unmasking: Unmasking, first_step: int, steps: int
    ) -> tuple[int, bool]:
        """Run up to ``steps`` confidence steps (numbered from ``first_step``) on ``unmasking``, fewer once nothing
        is left. Returns (the steps taken, True when sampling may stop early: ``Session.end_step``)."""
        for i in range(steps):
            if self.done(unmasking):
                return i, False
            confidence_step(s, first_step + i, unmasking, i, self.order, self.threshold)
            unmasking.after_step(s, i, self.threshold)
            if s.end_step(first_step + i):
                return i + 1, True
        return steps, False


@SAMPLERS.register("confidence")
class Confidence(FastOptions, Sampler):
    """Confidence-based unmasking with a precomputed number of tokens per step (LLaDA / Dream).
    ``order``: probability | margin | entropy | random. Confidence is the model's own p_theta (before
    temperature / top-k / top-p), as in LLaDA; candidates are drawn from the filtered distribution.
    ``threshold`` / ``cache`` / ``refresh`` / ``delay``: fast sampling (see the module docstring)."""

    name = "confidence"

    def __init__(
        self,
        order: str = "probability",
        threshold: Optional[float] = None,
        cache: str = "none",
        refresh: Optional[int] = None,
        delay: Optional[int] = None,
    ):
        self._fast(order, threshold, cache, refresh, delay)

    def run(self, s: Session) -> None:
        self.start_cache(s)
        masked, free = s.host_state()
        self.unmask(s, Unmasking(s, s.free, (masked & free).sum(1), s.steps), 0, s.steps)


@SAMPLERS.register("semi_ar")
class SemiAutoregressive(FastOptions, Sampler):
    """Semi-autoregressive blocks: positions are cut into left-to-right blocks of ``block_length``; each
    block (that has positions to generate) gets an equal share of the T steps (the first ones one more when
    T does not divide) and is filled by confidence unmasking (``order``) before the next starts. With
    ``stop_at_eos`` generation stops after the block in which every sample's EOS is settled. A window that is
    not a multiple of ``block_length`` is padded: its last block is shorter (the report's notes say so).
    ``threshold`` / ``cache`` (also ``prefix`` and ``dual``) / ``refresh`` / ``delay``: fast sampling; with a
    threshold a block ends as soon as nothing in it is masked."""

    name = "semi_ar"

    def __init__(
        self,
        block_length: int = 32,
        order: str = "probability",
        threshold: Optional[float] = None,
        cache: str = "none",
        refresh: Optional[int] = None,
        delay: Optional[int] = None,
    ):
        self.block_length = check_int(block_length, "sampler option block_length")
        self._fast(order, threshold, cache, refresh, delay)

    def run(self, s: Session) -> None:
        self.start_cache(s)
        b = self.block_length
        if s.L % b:
            s.meter.note(
                f"semi_ar: the window of {s.L} positions is not a multiple of block_length={b}; it is "
                f"treated as padded to {-(-s.L // b) * b}, so its last block has only {s.L % b} positions "
                f"(windows of a multiple of {b} positions split evenly)"
            )
        # a block's steps reveal only in it: its masked count is known at its start
        masked, free = s.host_state()
        pos = torch.arange(s.L, device=s.x.device)
        starts = [start for start in range(0, s.L, b) if free[:, start : start + b].any()]
        if s.steps < len(starts):
            raise ConfigError(
                f"steps={s.steps} is fewer than the {len(starts)} blocks of block_length="
                f"{self.block_length}; raise steps or block_length"
            )
        per_block = [
            s.steps // len(starts) + (i < s.steps % len(starts)) for i in range(len(starts))
        ]
        step = 0
        for start, n in zip(starts, per_block):
            in_block = (pos >= start) & (pos < start + b)  # [L]
            if s.kv is not None:
                s.kv.begin_block(in_block)
            left = (masked & free)[:, start : start + b].sum(1)  # [N]
            taken, stop = self.unmask(s, Unmasking(s, s.free & in_block[None], left, n), step, n)
            if stop:
                return
            step += taken
