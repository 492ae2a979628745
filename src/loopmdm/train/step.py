"""One training step as a function: forward and backward of this rank's rows of the global batch over
``grad_accum`` micro-batches, gradients synchronised on the last one, then clipped. The optimizer step is the
caller's (it is taken only when the loss and gradient norm are finite)."""

from __future__ import annotations

from typing import Optional

import torch

from ..diffusion import Batch, Noise, Objective
from ..runtime import autocast_context
from . import distributed
from .distributed import DistEnv


def train_step(model: torch.nn.Module, train_model: torch.nn.Module, objective: Objective, batch: Batch,
               noise: Optional[Noise], loops: int, *, grad_accum: int, precision: str, grad_clip: float,
               device: torch.device, dist: DistEnv) -> tuple[float, float]:
    """``batch`` / ``noise``: this rank's rows (B_rank, with their t and uniforms); ``train_model``: the module to
    run (DDP / FSDP wrapper, or ``model`` itself); ``model``: its parameters are clipped. Returns the loss of
    the global batch (averaged over ranks) and the gradient norm before clipping."""
    micro = batch.x0.shape[0] // grad_accum
    total = 0.0
    for m in range(grad_accum):
        sl = slice(m * micro, (m + 1) * micro)
        rows = batch.rows(sl).to(device)
        with distributed.grad_sync(train_model, m == grad_accum - 1):
            with autocast_context(device, precision):
                out = objective.loss(train_model, rows, loops, None if noise is None else noise.rows(sl))
            (out.loss / grad_accum).backward()
        total += float(out.loss.detach()) / grad_accum
    total = distributed.mean_across_ranks(total, dist)
    max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: measure the norm, do not clip
    return total, distributed.as_float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
