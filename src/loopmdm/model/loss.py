"""Cross-entropy of the LM head without full-vocabulary logits in memory: ``linear_cross_entropy``.

For final hidden states h [N, D] at the positions that enter the loss, the head's weight W [V, D] and targets
y [N], it returns sum_i w_i * CE(h_i W^T, y_i) and the per-position CE (detached), computing the logits chunk by
chunk over positions. When gradients are needed, each chunk's gradients (softmax - one-hot, scaled by w_i) are
formed at once and only dL/dh [N, D] and dL/dW [V, D] are kept, so the peak memory of the loss is one chunk of
logits instead of B x T x V fp32 values. Matrix products follow the surrounding autocast (bf16 on CPU / CUDA);
the softmax and the sums over the vocabulary are fp32; dL/dW is summed over chunks in fp32 (one chunk: formed
in the matmul dtype and cast once). Without grad mode (validation) only the forward products run. One exp pass
per logit, no zero-filled buffers. ``exclude`` (the mask id: SUBS) gets no probability mass.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

# fp32 logits held at once: 64 MiB on CPU, 512 MiB on GPU
LOGITS_PER_CHUNK = {"cpu": 1 << 24, "cuda": 1 << 27}


def chunk_rows(vocab_size: int, limit: int = LOGITS_PER_CHUNK["cpu"]) -> int:
    """Positions per chunk so that one chunk of logits holds at most ``limit`` values."""
    return max(1, limit // max(vocab_size, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        h,
        weight,
        target,
        row_weight,
        exclude: Optional[int],
        chunk: int,
        dtype: torch.dtype,
        need_grad: bool,
    ):
        n = h.shape[0]
        # the matmul dtype, cast once per call (not per chunk)
        hq, wq = (h.to(dtype), weight.to(dtype))
        ce_all = torch.empty(n, dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(hq) if need_grad else None
        grad_w = None  # [V, D], set by the first chunk (no zero fill), then accumulated
        if n:  # equal chunks: no short tail chunk
            chunk = math.ceil(n / math.ceil(n / chunk))
        for s in range(0, n, chunk):
            hc, yc, wc = hq[s : s + chunk], target[s : s + chunk], row_weight[s : s + chunk]
            z = (hc @ wq.t()).float()  # [n_c, V]
            if exclude is not None:
                z[:, exclude] = -math.inf
            z_y = z.gather(1, yc[:, None]).squeeze(1)  # [n_c]
            top = z.amax(dim=-1, keepdim=True)  # [n_c, 1]
            p = z.sub_(top).exp_()  # unnormalised softmax, in place of z: one exp pass
            total_p = p.sum(dim=-1)  # [n_c]
            ce_all[s : s + chunk] = total_p.log() + top.squeeze(1) - z_y  # logsumexp(z) - z_y
            if need_grad:  # dCE/dz = softmax - one-hot = (p - total_p * one-hot) / total_p, times the row weight
                p[torch.arange(len(yc), device=p.device), yc] -= total_p
                scale = (wc / total_p)[:, None]
                pq = p.mul_(scale).to(dtype)  # [n_c, V]
                torch.mm(pq, wq, out=grad_h[s : s + chunk])  # [n_c, D]
                gw_c = pq.t() @ hc  # [V, D] in the matmul dtype
                if grad_w is None:
                    # several chunks: accumulate in fp32
                    grad_w = gw_c.float() if chunk < n else gw_c
                # in place, written as add(out=) to keep one buffer
                elif gw_c.dtype == grad_w.dtype:
                    torch.add(grad_w, gw_c, out=grad_w)
                else:
                    grad_w.add_(gw_c)
        total = (ce_all * row_weight).sum()
        if need_grad and grad_w is None:  # no positions: zero gradients
            grad_w = torch.zeros_like(wq)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.mark_non_differentiable(ce_all)
        ctx.h_dtype, ctx.used = h.dtype, False
        return total, ce_all

    @staticmethod
    def backward(ctx, grad_total, grad_ce):
        if ctx.used:
            raise RuntimeError(
                "linear_cross_entropy: one backward per forward (its gradient buffers are scaled in "
                "place); run the forward again instead of retain_graph=True"
            )
        ctx.used = True
        grad_h, grad_w = ctx.saved_tensors
        gh = None if grad_h is None else (grad_h * grad_total).to(ctx.h_dtype)
        # in place: the saved buffer is used once
        gw = None if grad_w is None else grad_w.mul_(grad_total)
        return gh, gw, None, None, None, None, None, None


def matmul_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the surrounding autocast gives matrix products on t's device (t's own dtype without autocast)."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    row_weight: Optional[torch.Tensor] = None,
    exclude: Optional[int] = None,
    chunk: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i w_i CE_i, CE [N] detached) of logits h [N, D] @ weight [V, D]^T against target [N]; w defaults to 1.
    ``exclude``: a token id that gets no probability mass; ``chunk``: positions per chunk (default: 64 MiB of
    logits on CPU, 512 MiB on CUDA). Under ``torch.no_grad`` only the forward products run."""
    w = torch.ones(h.shape[0], device=h.device) if row_weight is None else row_weight.float()
    dtype = matmul_dtype(h)
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    chunk = chunk or chunk_rows(
        weight.shape[0], LOGITS_PER_CHUNK.get(h.device.type, LOGITS_PER_CHUNK["cpu"])
    )
    with torch.autocast(h.device.type, enabled=False):  # dtypes are set by hand inside
        return _LinearCrossEntropy.apply(h, weight, target, w, exclude, chunk, dtype, need_grad)
