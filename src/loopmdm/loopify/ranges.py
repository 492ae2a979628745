"""``--loop-layers A:B``: which layers of the source become the looped mid block (zero-indexed, B exclusive, as
in Python slices: ``1:3`` loops layers 1 and 2, so the head has 1 layer and the tail the rest)."""

from __future__ import annotations

import re

from ..errors import ConfigError


def parse_loop_layers(text: str) -> tuple[int, int]:
    """``"1:3"`` -> (1, 3): zero-indexed layers A..B-1 (B exclusive, as in Python slices) form the mid block."""
    m = re.fullmatch(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*", str(text))
    if not m:
        raise ConfigError(
            f"--loop-layers {text!r} must look like A:B (zero-indexed layers A..B-1 are looped, B "
            "exclusive), e.g. --loop-layers 1:3 for layers 1 and 2"
        )
    return int(m.group(1)), int(m.group(2))


def check_loop_range(a: int, b: int, n_layers: int) -> tuple[int, int]:
    """(A, B) with 0 <= A < B <= L, or a one-line ``ConfigError`` saying what is wrong."""
    if a == b:
        raise ConfigError(
            f"--loop-layers {a}:{b} is empty (B is exclusive); loop at least one layer, e.g. "
            f"--loop-layers {a}:{a + 1}"
        )
    if a > b:
        raise ConfigError(
            f"--loop-layers {a}:{b} is reversed; write the first layer first, e.g. --loop-layers {b}:{a}"
        )
    if a < 0 or b > n_layers:
        raise ConfigError(
            f"--loop-layers {a}:{b} is outside the source's {n_layers} layers (0..{n_layers - 1}); pick "
            f"0 <= A < B <= {n_layers}"
        )
    return a, b
