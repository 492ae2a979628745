"""Running the looped network for one denoising step: head once, mid block as a loop policy decides, tail.

``LoopRunner`` is what a loop policy drives: each method runs real work and meters it, so the compute
report counts exactly what ran. Three kinds of mid-block iteration:

* ``full(h, k)``: all rows, all positions (the training-time loop);
* ``full(h, k, rows)``: only some rows (per-sample exit / per-sample loop counts);
* ``partial(h, k, active)``: only the positions marked active [B, L] (per-token exit). The other positions
  keep their state, and the active queries attend to their keys / values cached from their last update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..model import LoopContext
from .cached_attention import StackCache, stack_cache
from .report import ComputeMeter


def sub_context(ctx: LoopContext, rows: torch.Tensor) -> LoopContext:
    """The loop context restricted to batch rows ``rows`` [R]."""
    return LoopContext(
        h0=ctx.h0[rows],
        cond=None if ctx.cond is None else ctx.cond[rows],
        rope=ctx.rope,
        attn_mask=None if ctx.attn_mask is None else ctx.attn_mask[rows],
        causal=ctx.causal,
    )


def marked_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The flat indices [count] (row-major order) of the True entries of ``mask``, whose number ``count`` the host
    knows: a stable sort instead of ``nonzero``, so no device sync."""
    return torch.argsort((~mask).reshape(-1).to(torch.uint8), stable=True)[:count]


def padded_positions(mask: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions marked in each row of ``mask`` [R, L] (bool, at least one per row) as indices [R, K], K the
    largest count (as the host read it), in increasing order; rows with fewer are padded by repeating their first
    marked position (a repeated query computes the same values twice). Returns (positions [R, K], counts [R])."""
    counts = mask.sum(dim=1)  # [R]
    # marked positions first, [R, K]
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :K]
    valid = torch.arange(K, device=mask.device)[None] < counts[:, None]
    return torch.where(valid, order, order[:, :1]), counts


@dataclass
class LoopState:
    """What a loop policy sees at one network call: x [B, L] tokens of the evaluated rows, ``rows`` [B] their
    indices among the N samples, masked / free [B, L] (free = positions the sampler generates), the
    denoising step and the number of steps T."""

    x: torch.Tensor
    rows: torch.Tensor
    masked: torch.Tensor
    free: torch.Tensor
    step: int
    total_steps: int


class LoopRunner:
    """Executes mid-block iterations (and the tail) on a prelude context, metering every call."""

    def __init__(self, model, ctx: LoopContext, meter: ComputeMeter):
        self.model, self.ctx, self.meter = model, ctx, meter
        self.B, self.L = ctx.h0.shape[:2]
        # per mid block: {"k", "v"} [B, H, L, hd], for partial updates
        self.cache: Optional[list] = None

    def full(
        self, h: torch.Tensor, k: int, rows: Optional[torch.Tensor] = None, fill_cache: bool = False
    ):
        """Loop iteration k on every position of ``rows`` (all rows when None); returns the new h [B, L, D]."""
        if rows is None or rows.numel() == self.B:
            if fill_cache:
                self.cache = [{} for _ in range(len(self.model.mid))]
            out = self.model.loop_step(
                h, self.ctx, k, cache=stack_cache(self.cache if fill_cache else None)
            )
            self.meter.loop(self.B, self.L)
            return out
        if rows.numel() == 0:
            return h
        out = self.model.loop_step(h[rows], sub_context(self.ctx, rows), k)  # [R, L, D]
        self.meter.loop(int(rows.numel()), self.L)
        h = h.clone()
        h[rows] = out
        return h

    def partial(
        self, h: torch.Tensor, k: int, active: torch.Tensor, per_row: np.ndarray
    ) -> torch.Tensor:
        """Loop iteration k updating only positions ``active`` [B, L] (needs an earlier ``full(fill_cache=True)``);
        ``per_row`` [B]: their number in each row, as read on the host. Rows are padded to the same number K of
        query positions by repeating one of their active positions."""
        rows = torch.from_numpy(np.flatnonzero(per_row)).to(h.device, non_blocking=True)  # [R]
        if rows.numel() == 0:
            return h
        positions, counts = padded_positions(active[rows], int(per_row.max()))  # [R, K], [R]
        K = positions.shape[1]
        everything = rows.numel() == self.B
        ctx = self.ctx if everything else sub_context(self.ctx, rows)
        cache = (
            self.cache if everything else [{n: c[n][rows] for n in ("k", "v")} for c in self.cache]
        )
        D = h.shape[-1]
        idx = positions[..., None].expand(-1, -1, D)  # [R, K, D]
        h_rows = h if everything else h[rows]
        # [R, K, D]
        out = self.model.loop_step(
            h_rows.gather(1, idx), ctx, k, cache=StackCache(cache, positions)
        )
        h_rows = h_rows.scatter(1, idx, out)
        self.meter.loop(int(rows.numel()), K, updated=counts.sum())
        if everything:
            return h_rows
        for c, sc in zip(self.cache, cache):
            c["k"][rows], c["v"][rows] = sc["k"], sc["v"]
        h = h.clone()
        h[rows] = h_rows
        return h

    def coda(self, h: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tail + LM head: logits [R, L, V] for ``rows`` (all when None)."""
        if rows is None or rows.numel() == self.B:
            out = self.model.coda(h, self.ctx)
            self.meter.tail(self.B)
            return out
        out = self.model.coda(h[rows], sub_context(self.ctx, rows))
        self.meter.tail(int(rows.numel()))
        return out


@dataclass
class Prediction:
    """logits [B, L, V] (raw; SUBS and filters are applied by the sampler) and loops [B, L]: the mid-block
    updates each position received before the tail."""

    logits: torch.Tensor
    loops: torch.Tensor


class Denoiser:
    """p_theta(x_0 | x_t) at a loop policy: head (n_h layers) once, mid block under the policy, tail once."""

    def __init__(self, model, policy, meter: ComputeMeter, mask_id: int, free: torch.Tensor):
        self.model, self.policy, self.meter, self.mask_id, self.free = (
            model,
            policy,
            meter,
            mask_id,
            free,
        )

    @torch.no_grad()
    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        step: int,
        total_steps: int,
        rows: Optional[torch.Tensor] = None,
        kv=None,
    ) -> Prediction:
        """Predict for all N rows of x [N, L] (rows=None) or for ``rows`` [R] only; t [N] diffusion times.
        ``kv``: a key / value cache (``loopmdm.sampling.kvcache.KVCache``) that runs the call instead, computing
        only the positions it decides (all rows)."""
        if kv is not None:
            state = LoopState(
                x=x,
                rows=torch.arange(x.shape[0], device=x.device),
                masked=x == self.mask_id,
                free=self.free,
                step=step,
                total_steps=total_steps,
            )
            return kv.predict(self.model, self.policy, self.meter, x, t.float(), state)
        if rows is None:
            rows = torch.arange(x.shape[0], device=x.device)
            xr, tr, free = x, t, self.free
        else:
            xr, tr, free = x[rows], t[rows], self.free[rows]
        ctx = self.model.prelude(xr, tr.float())
        self.meter.network(xr.shape[0])
        state = LoopState(
            x=xr,
            rows=rows,
            masked=xr == self.mask_id,
            free=free,
            step=step,
            total_steps=total_steps,
        )
        return self.policy.run(LoopRunner(self.model, ctx, self.meter), state)
