"""The exponential moving average of the weights, updated without host syncs.

``torch.optim.swa_utils.AveragedModel.update_parameters`` reads its update count on the host every step (to copy
the weights at the first update), a device sync. ``update_ema`` computes the same average with the count kept on
the device, and can leave the average as it is at a step that was skipped on the device (``DeviceGuard``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


@torch.no_grad()
def update_ema(ema, model: nn.Module, decay: float, keep: Optional[torch.Tensor] = None) -> None:
    """``ema.update_parameters(model)`` for an ``AveragedModel`` with ``get_ema_multi_avg_fn(decay)``, bit for bit:
    W_ema <- W_ema + w (W - W_ema) with w = 1 at the first update (a copy) and 1 - decay after it, w a device
    scalar. ``keep`` [] (1.0 / 0.0, on the device): 0 leaves the average and its count as they are (a skipped
    step). Buffers are copied from ``model``, as ``AveragedModel`` does without ``use_buffers``."""
    weight = torch.where(ema.n_averaged == 0, 1.0, 1.0 - decay)  # []
    if keep is not None:
        weight = weight * keep
    for avg, p in zip(ema.parameters(), model.parameters()):
        avg.lerp_(p.detach(), weight)
    for avg, b in zip(ema.module.buffers(), model.buffers()):
        avg.copy_(b)
    ema.n_averaged += 1 if keep is None else keep.long()
