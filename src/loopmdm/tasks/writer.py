"""``write_task``: a task folder - ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` and ``task.json`` (family,
every generator parameter, seed, row counts per split and level, the heuristic baseline) - written atomically
and idempotently: the same parameters again leave the folder as it is; a non-empty folder holding anything
else is refused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError, LoopMDMError
from ..fileio import atomic_write_text
from .base import check_count, family_of, make_splits

SPLITS = ("train", "val", "test")
TASK_FILE = "task.json"
FORMAT_VERSION = 1


def split_stats(rows: list[dict], level_field: str, heuristic) -> dict:
    """Row count, rows per level and the heuristic's mean exact-match accuracy per level."""
    per_level = Counter(r[level_field] for r in rows)
    acc: dict[int, float] = {}
    for r in rows:
        acc[r[level_field]] = acc.get(r[level_field], 0.0) + heuristic(r)
    return {
        "rows": len(rows),
        "per_level": {str(k): per_level[k] for k in sorted(per_level)},
        "heuristic_accuracy": {str(k): acc[k] / per_level[k] for k in sorted(per_level)},
    }


def read_spec(folder: Path) -> Optional[dict]:
    """The ``spec`` of an existing task folder, or None (no or unreadable ``task.json``)."""
    try:
        return json.loads((folder / TASK_FILE).read_text()).get("spec")
    except (OSError, ValueError, AttributeError):
        return None


def with_defaults(fam, spec: Optional[dict]) -> Optional[dict]:
    """A task spec read from an older ``task.json`` with the parameters it predates filled in with the family's
    defaults (what that version generated), so that a newer generator parameter does not orphan the folder."""
    try:
        if spec is None or spec["family"] != fam.name:
            return spec
        levels = sorted(set(spec["train_levels"]) | set(spec["test_levels"]))
        return json.loads(json.dumps({**spec, "params": fam.resolve(levels, spec["params"])}))
    except (KeyError, TypeError, ValueError, LoopMDMError):
        return spec


def jsonl(rows: list[dict]) -> str:
    """Rows as JSON lines."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_task(
    folder: str | Path,
    family: str,
    *,
    n_train: int = 1000,
    n_val: int = 100,
    n_test: int = 100,
    train_levels: Optional[Sequence[int]] = None,
    test_levels: Optional[Sequence[int]] = None,
    seed: int = 0,
    **params,
) -> dict:
    """Write a task folder (rows per level: ``n_train`` / ``n_val`` at ``train_levels``, ``n_test`` at
    ``test_levels``; None: the family's defaults; ``params``: the family's generator parameters) and return
    its ``task.json`` content plus ``"written"`` (False when the folder already held this very task and was
    left as it is). ConfigError if ``folder`` is a file, or a non-empty folder that is not a task folder of
    the same parameters."""
    fam = family_of(family)
    default_train, default_test = fam.default_levels(params)
    train_levels = [int(v) for v in (default_train if train_levels is None else train_levels)]
    test_levels = [int(v) for v in (default_test if test_levels is None else test_levels)]
    counts = {
        "train": check_count(n_train, "--train"),
        "val": check_count(n_val, "--val"),
        "test": check_count(n_test, "--test"),
    }
    resolved = fam.resolve(sorted(set(train_levels) | set(test_levels)), params)
    spec = json.loads(
        json.dumps(
            {
                "family": fam.name,
                "params": resolved,
                "seed": int(seed),
                "train_levels": train_levels,
                "test_levels": test_levels,
                "rows_per_level": counts,
            }
        )
    )
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; pass a new or empty folder")
    if folder.is_dir() and any(folder.iterdir()):
        old = with_defaults(fam, read_spec(folder))
        if old != spec:
            why = "holds no task.json" if old is None else "holds a task with other parameters"
            raise ConfigError(f"--out {folder} is not empty and {why}; pass a new or empty folder")
        if all((folder / f"{s}.jsonl").is_file() for s in SPLITS):
            return {**json.loads((folder / TASK_FILE).read_text()), "written": False}
    splits = make_splits(fam, n_train, n_val, n_test, train_levels, test_levels, seed, **resolved)
    rows = dict(zip(SPLITS, splits))
    info = {
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "format": fam.row_format(resolved),
        "level_field": fam.level_field,
        "heuristic": fam.heuristic_name,
        "tasks": sorted({r["task"] for split in rows.values() for r in split}),
        "splits": {
            s: split_stats(rows[s], fam.level_field, fam.heuristic_accuracy) for s in SPLITS
        },
    }
    for s in SPLITS:
        atomic_write_text(folder / f"{s}.jsonl", jsonl(rows[s]))
    # task.json last: it marks the folder complete
    atomic_write_text(folder / TASK_FILE, json.dumps(info, indent=2) + "\n")
    return {**info, "written": True}
