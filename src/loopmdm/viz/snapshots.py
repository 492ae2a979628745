"""A sampling run's trajectory as token ids after every denoising step, shared by the HTML and figure exports."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError


def require_trajectory(output) -> Any:
    """The output's trajectory, or a ConfigError telling how to record one."""
    traj = getattr(output, "trajectory", None)
    if traj is None:
        raise ConfigError(
            "this sample has no trajectory; generate it with record_trajectory=True "
            "(CLI: loopmdm sample ... --trajectory out.html)"
        )
    return traj


def step_snapshots(output, mask_id: int) -> list[torch.Tensor]:
    """Token ids [N, L] after each step: the recorded snapshots, or (MDLM samplers, where a revealed token
    never changes) rebuilt from the final tokens and each token's 0-based reveal step (-1 = given)."""
    traj = require_trajectory(output)
    if traj.snapshots:
        return [s.cpu() for s in traj.snapshots]
    final, rs = output.tokens.cpu(), traj.reveal_step.cpu()  # [N, L]
    return [
        torch.where(rs < k, final, torch.full_like(final, mask_id))
        for k in range(1, len(traj.loops_per_step) + 1)
    ]
