"""MDLM ancestral sampling from an all-mask sequence over T denoising steps, at loop count S.

From time t to s < t every still-masked token is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t),
its value drawn from the SUBS prediction p_theta(x_0 | x_t); revealed tokens never change. Categorical
draws are done in float64 with the Gumbel-max trick (low-precision Gumbel noise biases samples).
"""

from __future__ import annotations

from typing import Optional

import torch

from .diffusion import subs_log_probs
from .schedules import NoiseSchedule


def gumbel_argmax(logp: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Draw one index per row of log-probabilities [..., V] (float64 Gumbel-max)."""
    u = torch.rand(logp.shape, generator=gen, dtype=torch.float64).to(logp.device)
    g = -torch.log(-torch.log(u.clamp_min(1e-300)))
    return (logp.double() + g).argmax(dim=-1)


@torch.no_grad()
def ancestral_sample(model, mask_id: int, num_samples: int, seq_len: int, steps: int, loops: int,
                     schedule: NoiseSchedule, gen: torch.Generator, temperature: float = 1.0,
                     prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Generate token ids [num_samples, seq_len].

    model: a LoopMDM; mask_id: the tokenizer's mask id; steps: T denoising steps; loops: S mid-block
    iterations per network call; schedule: alpha_t; prefix: optional prompt ids [P] kept fixed."""
    device = next(model.parameters()).device
    x = torch.full((num_samples, seq_len), mask_id, dtype=torch.long, device=device)  # [N, L]
    if prefix is not None and len(prefix):
        x[:, : len(prefix)] = prefix.to(device)
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        alpha_t, alpha_s = float(schedule.alpha(t)), float(schedule.alpha(s))
        logits = model(x, torch.full((num_samples,), float(t), device=device), loops=loops)  # [N, L, V]
        logp = subs_log_probs(logits / max(temperature, 1e-6), x, mask_id).double()
        reveal_prob = (alpha_s - alpha_t) / max(1.0 - alpha_t, 1e-12)
        u = torch.rand(x.shape, generator=gen, dtype=torch.float64).to(device)
        reveal = (x == mask_id) & (u < reveal_prob)
        x = torch.where(reveal, gumbel_argmax(logp, gen), x)
    return x
