"""Where the looped block sits: the registry of loop placements (early, early-middle, middle, late, all) that
turn a layer count L and a block size n_m into (n_h, n_m, n_o), used by the ablation and its config check."""

from __future__ import annotations

from typing import Callable

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import Registry
from .common import clone

LOOP_PLACEMENTS: Registry[Callable[[int, int], tuple[int, int, int]]] = Registry("loop placement")


@LOOP_PLACEMENTS.register("early")
def _early(n_layers: int, n_m: int) -> tuple[int, int, int]:
    """Loop the first n_m layers (n_h = 0)."""
    return 0, n_m, n_layers - n_m


@LOOP_PLACEMENTS.register("early-middle")
def _early_middle(n_layers: int, n_m: int) -> tuple[int, int, int]:
    """The paper's default: one head layer, then the looped block (layers 1..n_m)."""
    return 1, n_m, n_layers - n_m - 1


@LOOP_PLACEMENTS.register("middle")
def _middle(n_layers: int, n_m: int) -> tuple[int, int, int]:
    """The looped block centred in the stack."""
    n_h = (n_layers - n_m) // 2
    return n_h, n_m, n_layers - n_m - n_h


@LOOP_PLACEMENTS.register("late")
def _late(n_layers: int, n_m: int) -> tuple[int, int, int]:
    """The last n_m layers (n_o = 0: the looped block feeds the LM head)."""
    return n_layers - n_m, n_m, 0


@LOOP_PLACEMENTS.register("all")
def _all(n_layers: int, n_m: int) -> tuple[int, int, int]:
    """Loop the whole network (n_m = L, ignoring the requested n_m)."""
    return 0, n_layers, 0


def place_loop(model: ModelConfig, placement: str, n_m: int) -> ModelConfig:
    """A copy of ``model`` with the looped block of n_m layers at ``placement`` (same L, same parameters)."""
    L = model.n_layers
    if not 1 <= n_m <= L:
        raise ConfigError(f"n_m={n_m} must be in 1..{L} (the model has {L} layers)")
    n_h, n_m2, n_o = LOOP_PLACEMENTS.get(placement)(L, n_m)
    if min(n_h, n_o) < 0:
        raise ConfigError(f"placement {placement!r} with n_m={n_m} does not fit in {L} layers")
    out = clone(model)
    out.n_h, out.n_m, out.n_o = n_h, n_m2, n_o
    return out
