"""Conditional log-likelihood of a completion y given a prompt c, for downstream evaluation (lm-eval).

Masked diffusion (LLaDA / SMDM's Monte-Carlo ELBO over masked completions): draw k ~ U{1..n_y}
(n_y = |y|), mask a uniformly random k-subset M of the completion while the prompt stays visible, and

    -log p(y | c) <= E_k E_M [ (n_y / k) * sum_{i in M} -log p_theta(y_i | c, y_{not M}) ].

The k of the n Monte-Carlo samples are stratified (one uniform offset, then evenly spaced, as antithetic t),
which lowers the variance; with a fixed seed, completions of equal length share the same k and masks,
so comparing two candidate completions uses common random numbers. Time-conditioned models get the t
whose masking rate 1 - alpha_t equals k / n_y. Autoregressive checkpoints are scored exactly.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..model.subs import subs_log_probs
from .schedules import NoiseSchedule


def stratified_mask_counts(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """n draws of k in {1..length}, uniform marginally and evenly spread: k_j = floor(((u + j/n) mod 1) * n_y) + 1."""
    u = (
        torch.rand(1, generator=gen, dtype=torch.float64) + torch.arange(n, dtype=torch.float64) / n
    ) % 1.0
    return (u * length).floor().long().clamp(max=length - 1) + 1  # [n]


def random_subsets(k: torch.Tensor, length: int, gen: torch.Generator) -> torch.Tensor:
    """Boolean [n, length]: row j marks a uniformly random subset of size k[j] (the k smallest random keys)."""
    keys = torch.rand(len(k), length, generator=gen)  # [n, n_y]
    ranks = keys.argsort(dim=1).argsort(dim=1)
    return ranks < k[:, None]


@torch.no_grad()
def mdm_completion_nll(
    model,
    prompt: list[int],
    target: list[int],
    *,
    mask_id: int,
    loops: int,
    schedule: NoiseSchedule,
    mc_samples: int = 32,
    batch_size: int = 16,
    gen: Optional[torch.Generator] = None,
) -> float:
    """Monte-Carlo upper bound (nats) on -log p(target | prompt) under a masked diffusion model at S = loops.

    prompt / target: token ids (prompt + target must fit the model window); mc_samples: number of
    (k, M) draws; batch_size: network calls are batched this many samples at a time."""
    n_y = len(target)
    if n_y == 0:
        return 0.0
    gen = gen or torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    P = len(prompt)
    x0 = torch.tensor(list(prompt) + list(target), dtype=torch.long, device=device)  # [P + n_y]
    y = x0[P:]
    k_all = stratified_mask_counts(mc_samples, n_y, gen)  # [n]
    masks_all = random_subsets(k_all, n_y, gen).to(device)  # [n, n_y]
    total = 0.0
    for s in range(0, mc_samples, batch_size):
        k, m = k_all[s : s + batch_size].to(device), masks_all[s : s + batch_size]
        n = len(k)
        x_t = x0.repeat(n, 1)  # [n, P + n_y]
        x_t[:, P:] = torch.where(m, torch.full_like(m, mask_id, dtype=torch.long), y.expand(n, n_y))
        t = schedule.t_for_masked_fraction(k.double() / n_y).to(device)
        logits = model(x_t, t, loops=loops)  # [n, P + n_y, V]
        logp = subs_log_probs(logits[:, P:], x_t[:, P:], mask_id)  # [n, n_y, V]
        nll = -logp.gather(-1, y.expand(n, n_y)[..., None]).squeeze(-1)  # [n, n_y]
        nll = torch.where(m, nll, torch.zeros_like(nll))
        total += float((nll.sum(dim=1) * n_y / k.double()).sum())
    return total / mc_samples


@torch.no_grad()
def mdm_greedy_matches(
    model,
    prompt: list[int],
    target: list[int],
    *,
    mask_id: int,
    loops: int,
    schedule: NoiseSchedule,
) -> bool:
    """Would confidence-ordered greedy decoding (reveal the most confident masked position, its argmax, one per
    network call) produce ``target`` after ``prompt``? Stops at the first wrong reveal (revealed tokens never
    change), so a wrong continuation usually costs one call."""
    n_y = len(target)
    if n_y == 0:
        return True
    device = next(model.parameters()).device
    P = len(prompt)
    y = torch.tensor(target, dtype=torch.long, device=device)
    # [1, P + n_y]
    x = torch.tensor(list(prompt) + [mask_id] * n_y, dtype=torch.long, device=device)[None]
    for _ in range(n_y):
        masked = x[0, P:] == mask_id  # [n_y]
        frac = masked.float().mean()[None]
        t = schedule.t_for_masked_fraction(frac).to(device)
        logp = subs_log_probs(model(x, t, loops=loops)[:, P:], x[:, P:], mask_id)[0]  # [n_y, V]
        conf, pred = logp.max(dim=-1)  # [n_y]
        conf = torch.where(masked, conf, torch.full_like(conf, -math.inf))
        i = int(conf.argmax())
        if int(pred[i]) != int(y[i]):
            return False
        x[0, P + i] = pred[i]
    return True


@torch.no_grad()
def ar_completion_nll(
    model, prompt: list[int], target: list[int], *, loops: int
) -> tuple[float, bool]:
    """Exact -log p(target | prompt) under a causal (autoregressive) checkpoint, and whether greedy decoding
    would produce ``target``. The prompt must be non-empty (start it with BOS)."""
    if not target:
        return 0.0, True
    if not prompt:
        raise ValueError("an autoregressive score needs at least one prompt token (BOS)")
    device = next(model.parameters()).device
    # [1, P + n_y - 1]
    seq = torch.tensor(list(prompt) + list(target)[:-1], dtype=torch.long, device=device)[None]
    # [n_y, V]
    logp = torch.log_softmax(model(seq, loops=loops).float()[0, len(prompt) - 1 :], dim=-1)
    y = torch.tensor(target, dtype=torch.long, device=device)
    nll = -float(logp.gather(-1, y[:, None]).sum())
    return nll, bool((logp.argmax(dim=-1) == y).all())
