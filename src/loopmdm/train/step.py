"""One training step as a function: forward and backward of this rank's rows of the global batch over
``grad_accum`` micro-batches, gradients synchronised on the last one, then clipped. The optimizer step is the
caller's (skipped when the loss or gradient norm is not finite, on the host or on the device).

Nothing here waits for the device: the loss and the gradient norm stay device tensors, which the trainer reads on
the host only at the steps it logs (``train.log_every``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as torch_dist

from ..diffusion import Batch, Noise, Objective
from ..runtime import autocast_context
from . import distributed
from .distributed import DistEnv


def train_step(
    model: torch.nn.Module,
    train_model: torch.nn.Module,
    objective: Objective,
    batch: Batch,
    noise: Optional[Noise],
    loops: int,
    *,
    grad_accum: int,
    precision: str,
    grad_clip: float,
    device: torch.device,
    dist: DistEnv,
    scores: Optional[list[torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` / ``noise``: this rank's rows (B_rank, with their t and uniforms), on the host (the objective finds
    the masked positions there and moves what the model needs to ``device``); ``train_model``: the module to run
    (DDP / FSDP wrapper, or ``model`` itself); ``model``: its parameters are clipped. Returns the loss of the global
    batch (averaged over ranks, float64 []) and the gradient norm before clipping ([]), both on the device.
    ``scores``: a list that receives each micro-batch's ``LossOutput.scores`` [micro, L] (progressive unmasking)."""
    micro = batch.x0.shape[0] // grad_accum
    total = torch.zeros((), dtype=torch.float64, device=device)
    for m in range(grad_accum):
        sl = slice(m * micro, (m + 1) * micro)
        with distributed.grad_sync(train_model, m == grad_accum - 1):
            with autocast_context(device, precision):
                out = objective.loss(
                    train_model, batch.rows(sl), loops, None if noise is None else noise.rows(sl)
                )
            (out.loss / grad_accum).backward()
        if scores is not None:
            scores.append(out.scores)
        total += out.loss.detach().double() / grad_accum
    max_norm = grad_clip if grad_clip > 0 else float("inf")  # inf: measure the norm, do not clip
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return mean_across_ranks(total, dist), norm.full_tensor() if hasattr(
        norm, "full_tensor"
    ) else norm


def mean_across_ranks(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The mean of a device scalar over ranks (an all-reduce queued on the device: the host does not wait). Any
    rank's non-finite loss makes every rank's mean non-finite, so all ranks skip such a step together."""
    if env.enabled:
        torch_dist.all_reduce(value)
        value = value / env.world_size
    return value
