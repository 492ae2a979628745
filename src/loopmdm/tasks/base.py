"""What every task family shares: the ``TASKS`` registry, the ``TaskFamily`` interface, drawing distinct rows,
and ``make_splits`` (train / val / test that share no row).

A family turns ``levels`` (depths, sizes: the easy-to-hard axis) into rows: ``generate(n_per_level, levels,
seed, **params)`` draws exactly ``n_per_level`` rows at every level, all distinct (a row's key is its prompt,
or its text for infill rows). ``check(row)`` recomputes the correct answer from the row's own text with an
evaluator of its own, and ``heuristic_accuracy(row)`` is the expected exact-match accuracy of the family's
trivial baseline (``heuristic_name``) on that row.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ..errors import ConfigError, LoopMDMError
from ..registry import Registry

# How many draws per wanted row before a level is declared exhausted (too few distinct rows exist).
ATTEMPTS_PER_ROW = 20


class TaskFamily:
    """The interface of a task family (``TASKS.get(name)`` returns an instance)."""

    name: str = ""
    heuristic_name: str = ""
    level_field: str = "level"

    def resolve(self, levels: Sequence[int], params: dict) -> dict:
        """Every generator parameter, defaults filled in and validated for ``levels`` (ConfigError if bad);
        ``resolve(levels, resolve(levels, p)) == resolve(levels, p)``."""
        raise NotImplementedError

    def default_levels(self, params: dict) -> tuple[list[int], list[int]]:
        """(train levels, test levels) used when the caller gives none."""
        raise NotImplementedError

    def row_format(self, params: dict) -> str:
        """``"prompt-answer"`` or ``"infill"``."""
        raise NotImplementedError

    def generate(
        self,
        n_per_level: int,
        levels: Sequence[int],
        seed: int,
        *,
        exclude: Optional[Iterable[str]] = None,
        **params,
    ) -> list[dict]:
        """``n_per_level`` distinct rows at every level, none whose key is in ``exclude``, shuffled."""
        raise NotImplementedError

    def check(self, row: dict) -> str:
        """The correct answer recomputed from the row's text: the answer string, or the infill targets'
        characters concatenated."""
        raise NotImplementedError

    def heuristic_accuracy(self, row: dict) -> float:
        """Expected exact-match accuracy of the trivial heuristic on ``row``, in [0, 1]."""
        raise NotImplementedError


TASKS: Registry[TaskFamily] = Registry("task family")


def row_key(row: dict) -> str:
    """The string that identifies a row across splits: its prompt, or its text (infill)."""
    return row["prompt"] if "prompt" in row else row["text"]


def target_text(row: dict) -> str:
    """What the model must produce: the answer, or the infill spans' characters concatenated."""
    if "prompt" in row:
        return row["answer"]
    return "".join(row["text"][s:e] for s, e in row["targets"])


def check_levels(levels: Sequence[int], flag: str, low: int, high: int, why: str = "") -> list[int]:
    """``levels`` as a list of distinct integers in [low, high] (ConfigError naming ``flag``, and ``why`` the
    range is what it is, otherwise)."""
    out = list(levels)
    if not out:
        raise ConfigError(f"{flag} is empty; pass e.g. {flag} {low},{low + 1}")
    for v in out:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= high:
            raise ConfigError(
                f"{flag} {v!r} is out of range{f' ({why})' if why else ''}; pass integers from "
                f"{low} to {high}"
            )
    if len(set(out)) != len(out):
        raise ConfigError(f"{flag} {out} repeats a level; pass each level once")
    return [int(v) for v in out]


MAX_ROWS = 10_000_000  # rows of one split (a typo past it would fill the memory before any file is written)


def check_count(n: int, flag: str) -> int:
    """A row count in [0, MAX_ROWS] (ConfigError naming ``flag`` otherwise)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(
            f"{flag} {n!r} is not a row count; pass an integer >= 0, e.g. {flag} 1000"
        )
    if n > MAX_ROWS:
        raise ConfigError(f"{flag} {n:,} rows is more than the supported {MAX_ROWS:,}; pass fewer")
    return int(n)


def draw_distinct(
    rng: random.Random, n: int, draw: Callable[[random.Random], dict], seen: set[str], what: str
) -> list[dict]:
    """``n`` rows from ``draw(rng)`` whose keys are not in ``seen`` (added to it); ConfigError if the draws
    keep repeating (fewer distinct rows exist than asked for)."""
    rows: list[dict] = []
    attempts = ATTEMPTS_PER_ROW * n + 100
    while len(rows) < n:
        if attempts == 0:
            raise ConfigError(
                f"found only {len(rows)} distinct rows of {n} asked for at {what}; ask for "
                f"fewer rows per level (--train / --val / --test) or drop that level"
            )
        attempts -= 1
        row = draw(rng)
        key = row_key(row)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def split_seed(seed: int, split: int) -> int:
    """An independent seed for split ``split`` (0 train, 1 val, 2 test) of a task with seed ``seed``."""
    return int(np.random.SeedSequence([int(seed), split]).generate_state(1)[0])


def family_of(family: str | TaskFamily) -> TaskFamily:
    """A family by name (one-line ConfigError for an unknown name) or the family itself."""
    return TASKS.get(family) if isinstance(family, str) else family


def make_splits(
    family: str | TaskFamily,
    n_train: int,
    n_val: int,
    n_test: int,
    train_levels: Optional[Sequence[int]] = None,
    test_levels: Optional[Sequence[int]] = None,
    seed: int = 0,
    **params,
) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, val, test) rows: ``n_train`` / ``n_val`` rows per level of ``train_levels``, ``n_test`` rows
    per level of ``test_levels`` (which may hold harder levels: out of distribution; None: the family's
    defaults); no key in two splits (val and test are drawn excluding every earlier split's keys). ``params``
    are resolved once for all levels together, so every split is drawn from the same generator (e.g. the same
    program depth for ``vars`` queries)."""
    fam = family_of(family)
    default_train, default_test = fam.default_levels(params)
    train_levels = list(default_train if train_levels is None else train_levels)
    test_levels = list(default_test if test_levels is None else test_levels)
    counts = [
        check_count(n_train, "--train"),
        check_count(n_val, "--val"),
        check_count(n_test, "--test"),
    ]
    params = fam.resolve(sorted(set(train_levels) | set(test_levels)), params)
    seen: set[str] = set()
    splits = []
    for i, (n, levels) in enumerate(zip(counts, [train_levels, train_levels, test_levels])):
        rows = fam.generate(n, levels, split_seed(seed, i), exclude=seen, **params)
        seen.update(row_key(r) for r in rows)
        splits.append(rows)
    return splits[0], splits[1], splits[2]


def family_for_task(task: object) -> Optional[TaskFamily]:
    """The family that writes rows of ``task`` (``"vars-arith"``, ``"prefix-sum"``, ...), or None."""
    if not isinstance(task, str):
        return None
    name = task.split("-", 1)[0]
    return TASKS.get(name) if name in TASKS else None


def heuristic_for(
    rows: Sequence[dict],
) -> tuple[Optional[Callable[[dict], Optional[float]]], Optional[str]]:
    """(heuristic, its name) for rows written by this package (their ``task`` field names the family): the
    heuristic gives a row's expected exact-match accuracy, None for a row of no known task or one it cannot
    parse. (None, None) when no row belongs to a known task."""
    families = {f.name: f for f in (family_for_task(r.get("task")) for r in rows) if f is not None}
    if not families:
        return None, None

    def heuristic(row: dict) -> Optional[float]:
        fam = family_for_task(row.get("task"))
        if fam is None:
            return None
        try:
            return fam.heuristic_accuracy(row)
        except (LoopMDMError, KeyError, TypeError, ValueError, IndexError):
            return None

    return heuristic, "; ".join(f"{n}: {families[n].heuristic_name}" for n in sorted(families))
