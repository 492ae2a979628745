"""Turning the network's logits into the distribution a token is drawn from, and drawing it in float64.

    p(x_0^i | x_t)  (SUBS: never the mask)  ->  temperature  ->  top-k  ->  top-p (nucleus)

Temperature 0 means greedy (argmax). Draws use one uniform number per position and the inverse CDF
in float64, so a sampler consumes the same random numbers whatever the vocabulary size or the
filter, and low-precision rounding cannot bias the categorical draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..model.fields import check_int, check_number
from ..model.subs import no_mask_logits


@dataclass(frozen=True)
class TokenFilter:
    """temperature >= 0 (0 = greedy); top_k >= 1 keeps the k most likely tokens; top_p in (0, 1] keeps the
    smallest set of most likely tokens whose probability reaches p. None disables top-k / top-p."""

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None

    def __post_init__(self):
        check_number(self.temperature, "temperature", ge=0, hint=" (0 = greedy)")
        if self.top_k is not None:
            check_int(self.top_k, "top_k", 1, " (or None to disable)")
        if self.top_p is not None:
            check_number(self.top_p, "top_p", gt=0, le=1, hint=" (or None to disable)")

    def log_probs(self, logits: torch.Tensor, mask_id: int) -> torch.Tensor:
        """Filtered log-probabilities [M, V] float64 for logits [M, V] of masked positions (SUBS: the mask
        token gets probability 0)."""
        z = no_mask_logits(logits, mask_id).double()  # [M, V]
        if self.temperature == 0:
            return _one_hot_log(z.argmax(dim=-1), z.shape[-1], z.dtype)
        z = torch.log_softmax(z / self.temperature, dim=-1)
        if self.top_k is not None and self.top_k < z.shape[-1]:
            keep = torch.zeros_like(z, dtype=torch.bool).scatter_(
                -1, z.topk(self.top_k, dim=-1).indices, True
            )
            z = torch.log_softmax(z.masked_fill(~keep, -math.inf), dim=-1)
        if self.top_p is not None and self.top_p < 1.0:
            z = torch.log_softmax(_nucleus(z, self.top_p), dim=-1)
        return z


@dataclass(frozen=True)
class BannedTokens(TokenFilter):
    """A ``TokenFilter`` whose candidates never include the ids in ``banned`` (e.g. pad / BOS / EOS when filling
    answer positions, or anything but the digits of a Sudoku board)."""

    banned: tuple[int, ...] = ()

    def log_probs(self, logits: torch.Tensor, mask_id: int) -> torch.Tensor:
        if self.banned:
            ban = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            ban[list(self.banned)] = True
            logits = logits.masked_fill(ban, -math.inf)
        return super().log_probs(logits, mask_id)


def _one_hot_log(idx: torch.Tensor, V: int, dtype) -> torch.Tensor:
    out = torch.full((*idx.shape, V), -math.inf, dtype=dtype, device=idx.device)
    return out.scatter_(-1, idx[..., None], 0.0)


def _nucleus(logp: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest prefix of tokens sorted by probability whose mass reaches p (at least one)."""
    sorted_logp, order = logp.sort(dim=-1, descending=True)
    # mass of strictly more likely tokens
    mass_before = sorted_logp.exp().cumsum(dim=-1) - sorted_logp.exp()
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logp.masked_fill(drop, -math.inf)


def draw(logp: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF categorical draw: one index per row of logp [M, V] (float64) from uniforms u [M] in [0, 1).
    A token with probability 0 is never drawn."""
    if logp.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logp.device)
    probs = (logp - logp.max(dim=-1, keepdim=True).values).exp()  # [M, V] float64, max 1
    cdf = probs.cumsum(dim=-1)
    target = (1.0 - u.double().to(logp.device, non_blocking=True)) * cdf[:, -1]  # in (0, total]
    idx = torch.searchsorted(cdf, target[:, None]).squeeze(-1)  # first index with cdf >= target
    return idx.clamp_max(logp.shape[-1] - 1)
