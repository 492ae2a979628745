"""The state of one sampling run (``Session``): the canvas, what is still masked, the RNG, the denoiser, the compute
meter and the trajectory; every sampler of ``loopmdm.sampling.samplers`` works on one."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from ..diffusion.schedules import NoiseSchedule
from ..model.subs import no_mask_logits
from .filters import TokenFilter, draw
from .kvcache import KVCache
from .report import ComputeMeter, StepInfo, TrajectoryRecorder
from .runner import Denoiser, Prediction


class Session:
    """One sampling run: canvas x [N, L] (mask where still to generate), free [N, L] (positions to
    generate), the token filter, the generator (all draws in float64 on CPU), the denoiser and meters."""

    def __init__(
        self,
        x: torch.Tensor,
        free: torch.Tensor,
        mask_id: int,
        denoiser: Denoiser,
        meter: ComputeMeter,
        filt: TokenFilter,
        schedule: NoiseSchedule,
        steps: int,
        gen: torch.Generator,
        eos_id: Optional[int] = None,
        stop_at_eos: bool = False,
        recorder: Optional[TrajectoryRecorder] = None,
        on_step: Optional[Callable] = None,
    ):
        self.x, self.free, self.mask_id = x, free, mask_id
        self.denoiser, self.meter, self.filt, self.schedule = denoiser, meter, filt, schedule
        self.steps, self.gen, self.eos_id = steps, gen, eos_id
        self.stop_at_eos = stop_at_eos and eos_id is not None
        self.recorder, self.on_step = recorder, on_step
        self.N, self.L = x.shape
        self.kv: Optional[KVCache] = None  # a key / value cache, when the sampler runs with one

    # ---------------------------------------------------------------- helpers samplers share
    def uniform_host(self) -> torch.Tensor:
        """One float64 uniform per position [N, L], drawn on CPU from the session's generator."""
        return torch.rand((self.N, self.L), generator=self.gen, dtype=torch.float64)

    def uniform(self) -> torch.Tensor:
        """``uniform_host`` on the canvas's device (copied without waiting)."""
        return self.uniform_host().to(self.x.device, non_blocking=True)

    @property
    def masked(self) -> torch.Tensor:
        return self.x == self.mask_id  # [N, L]

    def host_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(masked, free) [N, L] read on the host: one sync, when a sampler starts; it then follows its reveals."""
        both = torch.stack([self.masked, self.free]).cpu().numpy()  # [2, N, L]
        return both[0], both[1]

    def predict(
        self, t: torch.Tensor, step: int, rows: Optional[torch.Tensor] = None
    ) -> Prediction:
        """Network prediction for all rows (rows=None) or some; t [N] diffusion times."""
        if self.kv is not None:
            return self.denoiser(self.x, t, step, self.steps, rows, kv=self.kv)
        return self.denoiser(self.x, t, step, self.steps, rows)

    def draw_tokens(
        self, logits: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [M] drawn from filtered p_theta for logits [M, V] with uniforms u [M], and the model's
        unfiltered probability of each drawn token [M] (its confidence)."""
        tokens = draw(self.filt.log_probs(logits, self.mask_id), u)
        return tokens, self.model_probs(logits).gather(-1, tokens[:, None]).squeeze(-1)

    def model_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """p_theta(x_0 | x_t) [M, V] float64 under SUBS (mask excluded), before temperature / filters."""
        return torch.softmax(no_mask_logits(logits, self.mask_id).double(), dim=-1)

    def time_of_canvas(self) -> torch.Tensor:
        """t [N] for a canvas whose generated positions are partly masked: the time at which the schedule masks
        that fraction of them (the model was trained on x_t at t). Samplers that do not follow a time grid
        (confidence, semi-AR) call the network at this t."""
        frac = ((self.masked & self.free).sum(1).double() / self.free.sum(1).clamp_min(1)).clamp(
            1e-3, 1.0
        )
        return self.schedule.t_for_masked_fraction(frac)

    def reveal(
        self,
        step: int,
        where: torch.Tensor,
        tokens: torch.Tensor,
        loops: torch.Tensor,
        confidence: torch.Tensor,
    ) -> None:
        """Write ``tokens`` [N, L] at the positions ``where`` [N, L] (bool); loops / confidence [N, L] for the
        record."""
        self.x.copy_(torch.where(where, tokens, self.x))
        if self.recorder is not None:
            self.recorder.reveal(step, where, loops, confidence)

    def end_step(self, step: int) -> bool:
        """Close step ``step``: meter, trajectory, streaming callback. True when sampling may stop early
        (``stop_at_eos`` and every sample has an EOS with nothing masked before it)."""
        loops = self.meter.end_step()
        if self.recorder is not None:
            self.recorder.end_step(self.x, loops, self.meter.report.flops)
        if self.on_step is not None:
            self.on_step(
                StepInfo(
                    step=step,
                    total_steps=self.steps,
                    tokens=self.x.clone(),
                    revealed=~self.masked,
                    loops=loops,
                    flops_so_far=self.meter.report.flops,
                )
            )
        return self.stop_at_eos and bool(self.finished_rows().all())

    def finished_rows(self) -> torch.Tensor:
        """[N] True where a generated EOS is revealed and no generated position before it is still masked."""
        eos = (self.x == self.eos_id) & self.free
        first = first_true(eos)  # [N] (L when none)
        pos = torch.arange(self.L, device=self.x.device)[None]
        pending = (self.masked & (pos < first[:, None])).any(1)
        return eos.any(1) & ~pending


def scatter_flat(
    index: torch.Tensor, values: torch.Tensor, shape: tuple[int, int], fill=0
) -> torch.Tensor:
    """[N, L] holding ``values`` [M] at the flat positions ``index`` [M] and ``fill`` elsewhere."""
    out = torch.full((shape[0] * shape[1],), fill, dtype=values.dtype, device=values.device)
    return out.index_copy_(0, index, values).view(shape)


def first_true(a: torch.Tensor) -> torch.Tensor:
    """Index of the first True per row of a [N, L] bool tensor, L where there is none."""
    L = a.shape[1]
    idx = torch.where(
        a, torch.arange(L, device=a.device)[None], torch.full_like(a, L, dtype=torch.long)
    )
    return idx.min(dim=1).values
