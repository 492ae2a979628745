"""MDLM's SUBS parameterization of p_theta(x_0 | x_t): the mask token is never predicted, and an unmasked
position copies its input token. The one implementation every objective, sampler and exporter uses."""

from __future__ import annotations

import math
from typing import Optional

import torch


def no_mask_logits(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """float32 logits [..., V] with the mask token set to -inf (a copy; the input is not changed)."""
    out = logits.float().clone() if logits.dtype == torch.float32 else logits.float()
    out[..., mask_id] = -math.inf
    return out


def subs_log_probs(logits: torch.Tensor, x_t: Optional[torch.Tensor], mask_id: int) -> torch.Tensor:
    """log p_theta(x_0 | x_t) [B, T, V] in float32 from raw logits [B, T, V]: no mass on the mask token and,
    where x_t [B, T] is not the mask (if given), all mass on the input token."""
    logp = torch.log_softmax(no_mask_logits(logits, mask_id), dim=-1)
    if x_t is None:
        return logp
    unmasked = x_t != mask_id  # [B, T]
    if unmasked.any():
        copy = torch.full_like(logp[unmasked], -math.inf)
        copy.scatter_(-1, x_t[unmasked][:, None], 0.0)
        logp[unmasked] = copy
    return logp
