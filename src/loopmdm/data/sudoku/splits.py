"""Built-in puzzles: train / validation / test splits from the generator, disjoint by solution grid, cached as
JSONL so that every run with the same settings sees the same boards."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Callable, NamedTuple

from ...model.fields import check_int
from .files import read_puzzles, write_jsonl
from .grid import Givens, SudokuPair, check_givens, generate_puzzle

SPLITS_VERSION = 2  # bump when the generator or the split order changes


class Splits(NamedTuple):
    train: list[SudokuPair]
    val: list[SudokuPair]
    test: list[SudokuPair]


def make_splits(n_train: int, n_val: int, n_test: int, givens: Givens, seed: int) -> Splits:
    """Puzzles whose solution grids never repeat, within or across splits. Drawn from one seeded generator in the
    order test, train, validation: the test split does not change with ``n_train`` / ``n_val``, and the training
    split does not change with ``n_val``."""
    sizes = {
        "test": check_int(n_test, "n_test", 0),
        "train": check_int(n_train, "n_train", 0),
        "val": check_int(n_val, "n_val", 0),
    }
    lo, hi = check_givens(givens)
    rng = random.Random(check_int(seed, "seed", 0))
    seen: set[str] = set()
    out: dict[str, list[SudokuPair]] = {}
    for name, size in sizes.items():
        split: list[SudokuPair] = []
        while len(split) < size:
            pair = generate_puzzle((lo, hi), rng)
            if pair.solution not in seen:
                seen.add(pair.solution)
                split.append(pair)
        out[name] = split
    return Splits(out["train"], out["val"], out["test"])


def cache_paths(
    cache_dir: str | os.PathLike, n_train: int, n_val: int, n_test: int, givens: Givens, seed: int
) -> dict[str, Path]:
    lo, hi = check_givens(givens)
    stem = f"sudoku-v{SPLITS_VERSION}-train{n_train}-val{n_val}-test{n_test}-givens{lo}-{hi}-seed{seed}"
    return {name: Path(cache_dir) / f"{stem}.{name}.jsonl" for name in Splits._fields}


def load_or_generate(
    cache_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    n_test: int,
    givens: Givens,
    seed: int,
    log: Callable[[str], None] = lambda s: None,
) -> Splits:
    """The splits from the cache folder, or generated with ``make_splits`` and saved there."""
    paths = cache_paths(cache_dir, n_train, n_val, n_test, givens, seed)
    lo, hi = check_givens(givens)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    if all(p.is_file() for p in paths.values()):
        loaded = {k: read_puzzles(str(p)).pairs for k, p in paths.items()}
        if all(len(loaded[k]) == sizes[k] for k in sizes):
            return Splits(**loaded)
    t0 = time.perf_counter()
    splits = make_splits(n_train, n_val, n_test, givens, seed)
    for name, path in paths.items():
        write_jsonl(getattr(splits, name), path)
    log(
        f"generated {n_train} / {n_val} / {n_test} Sudoku puzzles with {lo}-{hi} givens in "
        f"{time.perf_counter() - t0:.0f}s (cached in {Path(cache_dir)})"
    )
    return splits
