"""The optimizer and its schedule: AdamW (no weight decay on embeddings, norms and biases; fused on CPU and
CUDA) and a linear warmup followed by a cosine decay to ``train.min_lr_ratio`` of the peak learning rate."""

from __future__ import annotations

import math

import torch


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, tc, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters with ``train.weight_decay`` on the matrices that are not embeddings; the
    fused implementation on CPU and CUDA where the installed PyTorch has it (one kernel over all parameters instead
    of the default per-tensor loop)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    groups = [
        {"params": decay, "weight_decay": tc.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=tc.lr, betas=tuple(tc.betas), fused=device.type in ("cpu", "cuda")
    )


def make_scheduler(optimizer: torch.optim.Optimizer, tc) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
    )
