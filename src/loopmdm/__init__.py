"""LoopMDM: looped masked diffusion language models.

head (n_h layers) -> mid block (n_m layers, shared weights, run S times) -> tail (n_o layers),
trained with the MDLM NELBO and a random loop count S; S is a knob at inference.
"""

from .config import (
    DataConfig,
    DiffusionConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_config,
    preset,
)
from .errors import CheckpointError, ConfigError, DataError, LoopMDMError
from .model import LoopMDM

__all__ = [
    "LoopMDM",
    "ModelConfig",
    "DiffusionConfig",
    "DataConfig",
    "TrainConfig",
    "RunConfig",
    "load_config",
    "preset",
    "LoopMDMError",
    "ConfigError",
    "DataError",
    "CheckpointError",
]
__version__ = "0.1.0"
