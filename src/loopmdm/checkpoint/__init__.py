"""Checkpoints: safetensors + JSON only (never pickle), written atomically (``save``), verified and loaded
(``load``), in the run-folder layout of ``layout``."""

from .layout import LATEST, REQUIRED, list_checkpoints, read_latest, step_of
from .load import (
    checked_weights,
    load_config_file,
    load_json,
    load_model,
    load_safetensors,
    load_tokenizer_file,
    load_weights,
    resolve_checkpoint,
    uses_ema,
    verify_checkpoint,
)
from .save import flatten_optimizer, prune_checkpoints, save_checkpoint, unflatten_optimizer

__all__ = [
    "save_checkpoint",
    "load_model",
    "resolve_checkpoint",
    "verify_checkpoint",
    "load_safetensors",
    "load_json",
    "load_config_file",
    "load_tokenizer_file",
    "checked_weights",
    "load_weights",
    "uses_ema",
    "list_checkpoints",
    "read_latest",
    "step_of",
    "prune_checkpoints",
    "flatten_optimizer",
    "unflatten_optimizer",
    "LATEST",
    "REQUIRED",
]
