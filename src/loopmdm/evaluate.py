"""Validation NELBO / perplexity bound at any loop count S, Monte-Carlo over t with a fixed seed."""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch

from .diffusion import Objective


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast when ``precision == 'bf16'`` (CPU or CUDA), otherwise a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate_nelbo(model, rows: np.ndarray, objective: Objective, loops: int, batch_size: int = 32,
                   max_batches: int | None = None, seed: int = 0, repeats: int = 1,
                   precision: str = "fp32") -> dict:
    """NELBO per token of packed rows [N, L] at S = loops, averaged over ``repeats`` draws of (t, x_t) per row.

    Returns ``nelbo`` (nats / token), ``ppl`` (the perplexity bound exp(NELBO)), ``bits_per_token``,
    ``stderr`` (standard error of the NELBO over batches) and ``tokens``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    n_batches = math.ceil(len(rows) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    per_batch, total_nll, total_tok = [], 0.0, 0
    for _ in range(repeats):
        for b in range(n_batches):
            x0 = torch.from_numpy(rows[b * batch_size:(b + 1) * batch_size].astype(np.int64)).to(device)
            with autocast_context(device, precision):
                out = objective.loss(model, x0, loops, gen)
            total_nll += float(out.nll_sum)
            total_tok += out.n_tokens
            per_batch.append(float(out.nll_sum) / max(out.n_tokens, 1))
    model.train(was_training)
    nelbo = total_nll / max(total_tok, 1)
    stderr = float(np.std(per_batch, ddof=1) / math.sqrt(len(per_batch))) if len(per_batch) > 1 else float("nan")
    return {"loops": loops, "nelbo": nelbo, "ppl": math.exp(min(nelbo, 50.0)),
            "bits_per_token": nelbo / math.log(2), "stderr": stderr, "tokens": total_tok}
