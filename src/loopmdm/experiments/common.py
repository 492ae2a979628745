"""Shared plumbing of the experiments: config presets / YAML files, the default grid of loop counts S, training a
run or reusing / resuming the one already in its folder, scores cached beside a run, and pooling per-seed score
records."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable, Mapping, Optional, TypeVar

import torch

from ..checkpoint import list_checkpoints, load_config_file, load_model, step_of
from ..config import RunConfig, apply_dict, read_yaml_file
from ..data import PreparedData
from ..errors import ConfigError, LoopMDMError
from ..model.fields import short
from ..train import train
from ..train.resume import config_diff
from .curves import read_curve

C = TypeVar("C")


def load_experiment_config(
    spec: str | Path, presets: Mapping[str, Callable[[], C]], kind: str
) -> C:
    """A named preset (``laptop``, ``paper``) or a YAML file. A file overrides the preset named by its
    optional top-level ``base:`` key (default ``laptop``); unknown keys are one-line ConfigErrors."""
    spec = str(spec)
    if spec in presets:
        return presets[spec]()
    if not Path(spec).expanduser().is_file():
        raise ConfigError(
            f"{kind} config {spec!r} is neither a preset ({', '.join(presets)}) nor a YAML file"
        )
    data = read_yaml_file(spec, f"{kind} config file")
    base = data.pop("base", "laptop")
    # a list or mapping (``base: [laptop]``) is no preset name, and unhashable
    if not isinstance(base, str) or base not in presets:
        raise ConfigError(
            f"{kind} config file {spec!r}: base={short(base)} is not a preset name; use one of "
            f"{', '.join(presets)}"
        )
    cfg = presets[base]()
    apply_dict(cfg, data)
    return cfg


def default_loop_grid(s_max: int) -> list[int]:
    """S in {1, 2, 4, ..., 2 * S_max} (powers of two, plus S_max and 2 * S_max themselves)."""
    grid = {1, s_max, 2 * s_max}
    s = 2
    while s < 2 * s_max:
        grid.add(s)
        s *= 2
    return sorted(grid)


def clone(obj: C) -> C:
    return copy.deepcopy(obj)


def train_or_reuse(
    rc: RunConfig,
    run_dir: str | Path,
    data: Optional[PreparedData] = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    trainer_cls=None,
) -> tuple[torch.nn.Module, bool]:
    """Train ``rc`` into ``run_dir``, or continue / reuse what is there: a finished run with the same config is
    reused, an unfinished one is resumed from its last checkpoint, and a run with another config is refused
    (naming the differences) rather than overwritten. Returns the trained model (EMA weights when kept) and
    whether a finished run was reused. ``trainer_cls``: passed to ``train``. A run stopped by a signal raises ``LoopMDMError`` (its last step is
    saved), so that no experiment evaluates a half-trained model as a finished one."""
    run_dir = Path(run_dir)
    kept = list_checkpoints(run_dir / "checkpoints")
    resume = None
    if kept:
        check_saved_config(load_config_file(kept[-1]).to_dict(), rc, run_dir)
        if step_of(kept[-1]) >= rc.train.max_steps:
            log(f"  reusing the finished run in {run_dir}")
            return load_model(run_dir, ema=None)[0], True
        log(f"  resuming {run_dir} from {kept[-1].name}")
        resume = run_dir
    # e.g. a study's own validation set
    extra = {} if trainer_cls is None else {"trainer_cls": trainer_cls}
    result = train(rc, run_dir, resume=resume, progress=progress, log=log, data=data, **extra)
    # a signal: the step is saved; evaluating this model as finished would be wrong
    if result.stopped_early:
        raise LoopMDMError(
            f"training of {str(run_dir)!r} stopped at step {result.step} of {rc.train.max_steps} "
            "(signal received); run the same command again to resume it"
        )
    return load_model(run_dir, ema=None)[0], False


def check_saved_config(saved: object, rc: RunConfig, run_dir: str | Path) -> None:
    """Refuse (one-line ConfigError naming the differences) the run in ``run_dir`` when its saved config (a
    dict as saved in JSON, read as the library reads configs today, so fields added since are their defaults)
    is not ``rc``; an unreadable one is a difference too."""
    try:
        diffs = config_diff(RunConfig.from_dict(saved).to_dict(), rc.to_dict())
    except (LoopMDMError, TypeError, ValueError, AttributeError) as e:
        diffs = [f"unreadable config: {e}"]
    if diffs:
        raise ConfigError(
            f"{str(run_dir)!r} holds a run with another config ({'; '.join(diffs[:3])}); "
            "delete that folder to retrain it, or choose another --out"
        )


def finished_curve(run_dir: Path, steps: int):
    """The validation curve (``curves.read_curve``) of a finished run that keeps no weights: its metrics.jsonl must
    reach ``steps``, else a one-line ConfigError (the record was copied without it, or the run never ended)."""
    path = Path(run_dir) / "metrics.jsonl"
    curve = read_curve(path) if path.is_file() else None
    if curve is None or curve.steps[-1:] != [steps]:
        raise ConfigError(
            f"{str(run_dir)!r} keeps no weights and its metrics.jsonl is missing or does not reach step "
            f"{steps}; copy it with the run's records, or delete that folder to retrain the run"
        )
    return curve


def read_json_object(path: Path) -> dict:
    """The JSON object in ``path``; {} when it is absent, unreadable or not an object (a record to rebuild)."""
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def read_scores(path: Path, key: dict) -> Optional[dict]:
    """The scores saved in a run folder (``{"key": ..., ...}``) when they were computed with the evaluation
    settings ``key`` (compared as JSON, so tuples and lists match); None when absent, unreadable or stale."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return (
        saved
        if isinstance(saved, dict) and saved.get("key") == json.loads(json.dumps(key))
        else None
    )


def pool_over_seeds(per_seed: Mapping, seeds: list, fields: tuple[str, ...]) -> dict:
    """``{model: {"f1|f2|...": [the score records of every seed with those field values]}}`` from ``per_seed``
    ({seed: {model: {"scores": [records]}}}), the models of the first seed."""
    out: dict = {}
    for model in per_seed[seeds[0]]:
        cells: dict = {}
        for seed in seeds:
            for r in per_seed[seed][model]["scores"]:
                cells.setdefault("|".join(str(r[f]) for f in fields), []).append(r)
        out[model] = cells
    return out
