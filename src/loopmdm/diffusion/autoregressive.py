"""The autoregressive objective: next-token cross-entropy with the same backbone under a causal mask (the
evaluator model of generative perplexity, and an AR baseline). Registered as ``"ar"`` in ``OBJECTIVES``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .objectives import OBJECTIVES, LossOutput, Objective, host_batch, sparse_capable
from .positions import LossPositions, host_array, model_device


@OBJECTIVES.register("ar")
class Autoregressive(Objective):
    """Next-token cross-entropy with the same backbone under a causal mask (evaluator / AR baseline)."""

    def predicted_fraction(self) -> float:
        return 1.0

    def loss(self, model, batch, loops, noise=None):
        """The next-token NLL of ``batch`` (best on the host: the scored positions are then found without a
        device sync)."""
        device = model_device(model, batch.x0.device)
        batch = host_batch(batch)
        # [B, L-1]: the scored next tokens
        keep = (
            np.ones(batch.x0[:, 1:].shape, dtype=bool)
            if batch.frozen is None
            else ~host_array(batch.frozen)[:, 1:]
        )
        n_tokens = int(np.count_nonzero(keep))
        x0 = batch.x0.to(device, non_blocking=True)
        if sparse_capable(model):
            pos = LossPositions.of(keep)
            labels = pos.labels(batch.x0[:, 1:]).to(device, non_blocking=True)  # [K]
            pos = pos.to(device)
            nll_sum, _ = model(
                x0[:, :-1],
                loops=loops,
                predict=pos.index,
                labels=labels,
                label_weights=pos.valid.float(),
            )
        else:
            # [B, L-1]
            ce = F.cross_entropy(
                model(x0[:, :-1], loops=loops).float().transpose(1, 2), x0[:, 1:], reduction="none"
            )
            nll_sum = torch.where(
                torch.from_numpy(keep).to(device, non_blocking=True), ce, torch.zeros_like(ce)
            ).sum()
        return LossOutput(
            loss=nll_sum / max(n_tokens, 1), nll_sum=nll_sum.detach(), n_tokens=n_tokens
        )
