"""Cross-entropy of the LM head without full-vocabulary logits in memory: ``linear_cross_entropy``.

For final hidden states h [N, D] at the positions that enter the loss, the head's weight W [V, D] and targets
y [N], it returns sum_i w_i * CE(h_i W^T, y_i) and the per-position CE (detached), computing the logits chunk by
chunk over positions. When gradients are needed, each chunk's gradients (softmax - one-hot, scaled by w_i) are
formed at once and only dL/dh [N, D] and dL/dW [V, D] are kept, so the peak memory of the loss is one chunk of
logits instead of B x T x V fp32 values. Matrix products follow the surrounding autocast (bf16 on CPU / CUDA);
the softmax and the sums are fp32. ``exclude`` (the mask id: SUBS) gets no probability mass.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

LOGITS_PER_CHUNK = 1 << 24  # fp32 logits held at once (64 MiB)


def chunk_rows(vocab_size: int, limit: int = LOGITS_PER_CHUNK) -> int:
    """Positions per chunk so that one chunk of logits holds at most ``limit`` values."""
    return max(1, limit // max(vocab_size, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, target, row_weight, exclude: Optional[int], chunk: int):
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        n = h.shape[0]
        ce_all = torch.empty(n, dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        for s in range(0, n, chunk):
            hc, yc = h[s:s + chunk], target[s:s + chunk]
            z = (hc @ weight.t()).float()  # [n_c, V]
            if exclude is not None:
                z[:, exclude] = -math.inf
            lse = torch.logsumexp(z, dim=-1)  # [n_c]
            ce_all[s:s + chunk] = lse - z.gather(1, yc[:, None]).squeeze(1)
            if need_grad:
                p = torch.exp(z.sub_(lse[:, None]))  # softmax, in place of z
                p[torch.arange(len(yc), device=p.device), yc] -= 1.0
                p.mul_(row_weight[s:s + chunk, None])
                grad_h[s:s + chunk] = p @ weight.to(p.dtype)
                grad_w.add_(p.t() @ hc.to(p.dtype))
        total = (ce_all * row_weight).sum()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.mark_non_differentiable(ce_all)
        return total, ce_all

    @staticmethod
    def backward(ctx, grad_total, grad_ce):
        grad_h, grad_w = ctx.saved_tensors
        gh = None if grad_h is None else (grad_h * grad_total).to(grad_h.dtype)
        gw = None if grad_w is None else grad_w * grad_total
        return gh, gw, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                         row_weight: Optional[torch.Tensor] = None, exclude: Optional[int] = None,
                         chunk: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i w_i CE_i, CE [N] detached) of logits h [N, D] @ weight [V, D]^T against target [N]; w defaults to 1.
    ``exclude``: a token id that gets no probability mass; ``chunk``: positions per chunk (default: 64 MiB of
    logits)."""
    w = torch.ones(h.shape[0], device=h.device) if row_weight is None else row_weight.float()
    return _LinearCrossEntropy.apply(h, weight, target, w, exclude, chunk or chunk_rows(weight.shape[0]))
