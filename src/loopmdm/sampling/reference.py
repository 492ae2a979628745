"""The reference sampler: MDLM ancestral sampling from a LoopMDM as one pure function, to read before the
production samplers (``loopmdm.sampling.samplers``), which add caches, loop policies, parallel decoding and
compute reports around the same loop. ``tests/test_reference_sampler.py`` checks that it returns exactly the
tokens of ``generate(model, tok, sampler="ancestral", policy="fixed", policy_options={"loops": S})``.

    x = reference_sample(model, mask_id=tok.mask_id, num_samples=4, length=128, steps=64, loops=8)
"""

from __future__ import annotations

import torch

from ..diffusion.schedules import NoiseSchedule, get_schedule
from ..model.subs import no_mask_logits


@torch.no_grad()
def reference_sample(
    model,
    mask_id: int,
    *,
    num_samples: int,
    length: int,
    steps: int,
    loops: int,
    schedule: NoiseSchedule | str = "loglinear",
    temperature: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Sample token ids [N, L] by unmasking an all-mask sequence over T denoising steps.

    model: a ``LoopMDM`` (``model(x_t, t, loops=S)`` -> logits [N, L, V]), in eval mode on its device.
    mask_id: the mask token's id (the tokenizer's ``mask_id``).
    num_samples: N rows sampled together; length: L tokens per row (at most ``model.config.max_seq_len``).
    steps: T; the times run t_0 = 1 > t_1 > ... > t_T = 0 on an even grid.
    loops: S, how many times the mid block runs in every network call (any S >= 1, also above the training
        S_max).
    schedule: alpha_t, the probability that a token is still clean at time t (the checkpoint's
        ``diffusion.schedule``).
    temperature: divides the logits before the draw; 0 is greedy.
    seed: one CPU generator draws every random number, two float64 uniforms per position and step.
    """
    schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    # x_1: all masked [N, L]
    x = torch.full((num_samples, length), mask_id, dtype=torch.long, device=device)
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # [T + 1]
    alpha = schedule.alpha(ts).double()
    for i in range(steps):
        # a token still masked at t_i is revealed by t_{i+1} with probability (alpha_s - alpha_t) / (1 - alpha_t)
        p_reveal = (float(alpha[i + 1]) - float(alpha[i])) / max(1.0 - float(alpha[i]), 1e-12)
        u_reveal = torch.rand(x.shape, generator=gen, dtype=torch.float64).to(device)  # [N, L]
        u_token = torch.rand(x.shape, generator=gen, dtype=torch.float64).to(device)  # [N, L]
        t = torch.full((num_samples,), float(ts[i]), device=device)  # [N]
        logits = model(x, t, loops=loops)  # head -> mid block x S -> tail: [N, L, V]
        reveal = (x == mask_id) & (u_reveal < p_reveal)  # [N, L]
        if not reveal.any():
            continue
        # [M, V]; SUBS: the mask is never drawn
        z = no_mask_logits(logits[reveal], mask_id).double()
        x[reveal] = draw_categorical(z, u_token[reveal], temperature)
    return x


def draw_categorical(z: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per row of logits z [M, V] (float64): greedy at temperature 0, else the inverse CDF of
    softmax(z / temperature) at the uniforms u [M]."""
    if temperature == 0:
        return z.argmax(dim=-1)
    logp = torch.log_softmax(z / temperature, dim=-1)
    probs = (logp - logp.max(dim=-1, keepdim=True).values).exp()  # [M, V], max 1
    cdf = probs.cumsum(dim=-1)
    # first index with cdf >= target
    idx = torch.searchsorted(cdf, ((1.0 - u) * cdf[:, -1])[:, None]).squeeze(-1)
    return idx.clamp_max(z.shape[-1] - 1)
