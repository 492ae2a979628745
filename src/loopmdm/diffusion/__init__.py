"""The diffusion side of a masked diffusion LM: noise schedules alpha_t, the training objectives (MDLM NELBO,
conditional on frozen positions, or autoregressive) with their noise, training distributions of the loop
count S, and the Monte-Carlo likelihood of completions. SUBS itself is ``loopmdm.model.subs``."""

from ..model.subs import no_mask_logits, subs_log_probs
from .loops import LOOP_DISTRIBUTIONS, BalancedUniformLoops, CurriculumLoops, FixedLoops, LogNormalPoissonLoops, \
    LoopDistribution, UniformLoops, make_loop_distribution
from .objectives import LOSS_WEIGHTS, OBJECTIVES, Autoregressive, Batch, LossOutput, MaskedDiffusion, Noise, \
    Objective, make_objective, predicted_fraction, q_sample, sample_t
from .schedules import SCHEDULES, NoiseSchedule, get_schedule

__all__ = [
    "SCHEDULES", "NoiseSchedule", "get_schedule", "OBJECTIVES", "Objective", "MaskedDiffusion", "Autoregressive",
    "Batch", "Noise", "LossOutput", "LOSS_WEIGHTS", "make_objective", "predicted_fraction", "sample_t", "q_sample",
    "LOOP_DISTRIBUTIONS", "LoopDistribution", "UniformLoops", "FixedLoops", "LogNormalPoissonLoops",
    "BalancedUniformLoops", "CurriculumLoops", "make_loop_distribution", "subs_log_probs", "no_mask_logits",
]
