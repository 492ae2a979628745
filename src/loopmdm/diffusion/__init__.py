"""The diffusion side of a masked diffusion LM: noise schedules alpha_t, the training objectives (MDLM NELBO,
conditional on frozen positions, or autoregressive) with their noise, training distributions of the diffusion time
t (uniform, bell, P-POTS; ``timesteps``) and of the loop count S, and the Monte-Carlo likelihood of completions.
SUBS itself is ``loopmdm.model.subs``."""

from ..model.subs import no_mask_logits, subs_log_probs
from .autoregressive import Autoregressive
from .loop_variants import (
    BalancedUniformLoops,
    CurriculumLoops,
    FlopProportionalLoops,
    LogNormalPoissonLoops,
    check_support,
    make_loop_distribution,
)
from .loops import LOOP_DISTRIBUTIONS, FixedLoops, LoopDistribution, UniformLoops
from .objectives import (
    LOSS_WEIGHTS,
    OBJECTIVES,
    Batch,
    LossOutput,
    MaskedDiffusion,
    Noise,
    Objective,
    make_objective,
    predicted_fraction,
    q_sample,
    sample_t,
)
from .schedules import SCHEDULES, NoiseSchedule, get_schedule
from .timesteps import (
    T_WEIGHTINGS,
    TIME_SAMPLERS,
    BellTime,
    PPOTSTime,
    TimeSampler,
    UniformTime,
    check_time_sampling,
    estimate_ppots_weights,
    make_time_sampler,
)

__all__ = [
    "SCHEDULES",
    "NoiseSchedule",
    "get_schedule",
    "OBJECTIVES",
    "Objective",
    "MaskedDiffusion",
    "Autoregressive",
    "Batch",
    "Noise",
    "LossOutput",
    "LOSS_WEIGHTS",
    "make_objective",
    "predicted_fraction",
    "sample_t",
    "q_sample",
    "LOOP_DISTRIBUTIONS",
    "LoopDistribution",
    "UniformLoops",
    "FixedLoops",
    "LogNormalPoissonLoops",
    "BalancedUniformLoops",
    "FlopProportionalLoops",
    "CurriculumLoops",
    "make_loop_distribution",
    "check_support",
    "TIME_SAMPLERS",
    "TimeSampler",
    "UniformTime",
    "BellTime",
    "PPOTSTime",
    "T_WEIGHTINGS",
    "make_time_sampler",
    "check_time_sampling",
    "estimate_ppots_weights",
    "subs_log_probs",
    "no_mask_logits",
]
