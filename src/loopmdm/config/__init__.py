"""A run's configuration: typed sections (model / diffusion / data / train) in ``RunConfig``, named presets,
and loading from a preset, a YAML file and ``--set`` overrides. Saved as config.json beside every checkpoint."""

from ..model import ModelConfig
from ..model.fields import apply_dict
from .loading import load_config, parse_override, parse_yaml_value, read_yaml_file
from .presets import PRESETS, preset
from .sections import DataConfig, DiffusionConfig, RunConfig, SudokuDataConfig, TrainConfig

__all__ = [
    "RunConfig",
    "ModelConfig",
    "DiffusionConfig",
    "DataConfig",
    "SudokuDataConfig",
    "TrainConfig",
    "PRESETS",
    "preset",
    "load_config",
    "parse_override",
    "parse_yaml_value",
    "read_yaml_file",
    "apply_dict",
]
