"""Sudoku's validity-preserving symmetries, applied to a batch of boards: digit relabelling, permutations of the
bands, of the rows inside each band, of the stacks and of the columns inside each stack, and transposition.
Each board of the batch gets its own random transform; a solved grid stays solved and its givens stay its
givens."""

from __future__ import annotations

from functools import partial
from typing import Optional

import numpy as np

DIGIT_IDS = np.arange(1, 10)  # token ids of the digits 1..9 (the Sudoku tokenizer's)


def _line_order(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 9] row (or column) orders: a band permutation and a permutation inside each band."""
    bands = np.argsort(rng.random((n, 3)), axis=1)  # [n, 3]
    inner = np.argsort(rng.random((n, 3, 3)), axis=2)  # [n, 3, 3]
    return (bands[:, :, None] * 3 + inner).reshape(n, 9)


def cell_permutation(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 81] source cell of every target cell: row order x column order, transposed for half the boards."""
    rows, cols = _line_order(rng, n), _line_order(rng, n)  # [n, 9] each
    idx = rows[:, :, None] * 9 + cols[:, None, :]  # [n, 9, 9]
    flip = rng.random(n) < 0.5
    idx[flip] = idx[flip].transpose(0, 2, 1)
    return idx.reshape(n, 81)


def relabel_digits(
    x: np.ndarray, rng: np.random.Generator, digit_ids: np.ndarray = DIGIT_IDS
) -> np.ndarray:
    """x [B, 81] with the digits of each board relabelled by its own random permutation (other ids kept)."""
    n = x.shape[0]
    perm = np.argsort(rng.random((n, 9)), axis=1)  # [B, 9]: digit d -> digit perm[d]
    table = np.arange(max(int(x.max()), int(digit_ids.max())) + 1)[None].repeat(n, 0)  # [B, V]
    table[:, digit_ids] = digit_ids[perm]
    return np.take_along_axis(table, x.astype(np.int64), 1)


def augment_boards(
    x: np.ndarray, frozen: Optional[np.ndarray], rng: np.random.Generator, geometry: bool = True
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """x [B, 81] solved boards (digit token ids), frozen [B, 81] givens -> the same boards under one random
    symmetry each: digits relabelled and (``geometry``) cells permuted; the givens move with their cells."""
    x = relabel_digits(x, rng)
    if not geometry:
        return x, frozen
    idx = cell_permutation(rng, x.shape[0])
    return np.take_along_axis(x, idx, 1), None if frozen is None else np.take_along_axis(
        frozen, idx, 1
    )


#: data.sudoku.augment -> the batch transform (None: no augmentation)
AUGMENTS = {"all": augment_boards, "digits": partial(augment_boards, geometry=False), "none": None}
