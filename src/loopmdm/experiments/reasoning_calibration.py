"""Phase 1 of the reasoning study, the calibration (plain MDM, validation data only): the candidate models in the
config's order, each trained for its steps, until one reaches ``target`` exact match on the calibration level;
the choice is written to ``calibration.json`` before any looped model is trained."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

from ..config import RunConfig
from ..data import prepare_data
from ..data.answers import read_rows
from ..diffusion import get_schedule
from ..errors import ConfigError
from ..eval.exact_match import exact_match_grid
from ..fileio import write_json
from .common import train_or_reuse
from .reasoning_config import ReasoningConfig, TaskSpec, run_config

Log = Callable[[str], None]


def calibration_score(
    model, data_rows, tok, rc: RunConfig, cfg: ReasoningConfig, level: int, field_: str
) -> dict:
    """Validation exact match of the plain model at S = 1, T = ``calibration_t``, on the calibration level."""
    rows = [r for r in data_rows if r.raw.get(field_) == level]
    if not rows:
        raise ConfigError(
            f"no validation rows at {field_}={level}; put the calibration level among the train levels"
        )
    rec = exact_match_at(model, tok, rows, rc, cfg, loops=1)
    return {"accuracy": rec["accuracy"], "accuracy_ci": rec["accuracy_ci"], "n": rec["n"]}


def exact_match_at(model, tok, rows, rc: RunConfig, cfg: ReasoningConfig, loops: int) -> dict:
    """The exact-match record of ``rows`` at T = ``calibration_t`` and one S (the calibration's score, and the
    curve every study run logs at validation)."""
    return exact_match_grid(
        model,
        tok,
        rows,
        length=rc.model.max_seq_len,
        orders=[cfg.order],
        steps=[cfg.calibration_t],
        loops=[loops],
        schedule=get_schedule(rc.diffusion.schedule),
        batch_size=cfg.eval_batch_size,
    )[0]


def earlier_calibration(path: Path, candidates: list[dict]) -> list[dict]:
    """The candidates already tried in ``calibration.json`` (none if absent). Candidates may only be appended
    after a calibration (a documented amendment): a changed or reordered list is refused."""
    if not path.is_file():
        return []
    try:
        tried = json.loads(path.read_text(encoding="utf-8"))["tried"]
        if not all(isinstance(e, dict) and "shape" in e and "accuracy" in e for e in tried):
            raise TypeError
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        raise ConfigError(
            f"{path} is not a calibration record (the study writes {{'tried': [{{'shape': ..., 'accuracy': "
            "...}, ...]}); restore it, or delete it to calibrate this task again"
        ) from None
    for i, entry in enumerate(tried):
        if i >= len(candidates) or entry["shape"] != candidates[i]:
            raise ConfigError(
                f"{path} was made with candidate {i} = {entry['shape']}, the config now has "
                f"{candidates[i] if i < len(candidates) else 'none'}; candidates may only be appended "
                "after a calibration (move the folder away to start over)"
            )
    return tried


def calibrate(
    cfg: ReasoningConfig, task: TaskSpec, out: Path, progress: bool, log: Log, train: bool = True
) -> dict:
    """Phase 1 for one task: the first candidate whose plain MDM reaches ``target`` on the calibration level of
    the validation rows. Candidates tried before (``calibration.json``) are reused, so an amendment that appends
    candidates continues from there. A candidate's ``steps`` (default ``calibration_steps``) is its budget; the
    other keys are ``ModelConfig`` fields. ``train=False`` trains nothing: a calibration still under way reads
    as not chosen, with ``complete`` False."""
    path = out / task.name / "calibration.json"
    tried = earlier_calibration(path, cfg.candidates)
    chosen = None
    for i, candidate in enumerate(cfg.candidates):
        steps = candidate.get("steps", cfg.calibration_steps)
        if i < len(tried):
            score = tried[i]
        elif not train:
            return {**calibration_record(cfg, task, tried, None), "complete": False}
        else:
            score = calibration_run(cfg, task, out, i, candidate, steps, progress, log)
            tried.append(score)
            write_json(path, calibration_record(cfg, task, tried, None))
        if score["accuracy"] >= cfg.target:
            chosen = {"shape": candidate, "baseline_steps": steps}
            break
    result = calibration_record(cfg, task, tried, chosen)
    write_json(path, result)
    return result


def calibration_record(
    cfg: ReasoningConfig, task: TaskSpec, tried: list[dict], chosen: Optional[dict]
) -> dict:
    return {
        "task": task.name,
        "level_field": task.level_field,
        "level": task.calibration_level,
        "target": cfg.target,
        "t": cfg.calibration_t,
        "tried": tried,
        "chosen": chosen,
    }


def calibration_run(
    cfg: ReasoningConfig,
    task: TaskSpec,
    out: Path,
    i: int,
    candidate: dict,
    steps: int,
    progress: bool,
    log: Log,
) -> dict:
    """Train candidate ``i`` as a plain MDM for ``steps`` and score it on the calibration level."""
    shape = {k: v for k, v in candidate.items() if k != "steps"}
    rc = run_config(cfg, task, out, shape)
    rc.diffusion.loop_dist, rc.diffusion.s_fixed = "fixed", 1
    rc.train.max_steps = steps
    rc.train.warmup_steps = max(1, round(cfg.warmup_frac * steps))
    rc.train.eval_every = max(1, steps // cfg.n_evals)
    data = prepare_data(rc.data, rc.model.vocab_size, rc.model.max_seq_len, log=log)
    rc.model.vocab_size = data.tokenizer.vocab_size
    log(f"{task.name}: calibration candidate {i} {shape}, plain MDM, {steps} steps")
    t0 = time.perf_counter()
    model, _ = train_or_reuse(
        rc.validate(), out / task.name / f"calibration_{i}", data, progress, log
    )
    val_rows = read_rows(Path(rc.data.source) / "val.jsonl", rc.data.answers, rc.data.text_field)
    score = calibration_score(
        model.eval(), val_rows, data.tokenizer, rc, cfg, task.calibration_level, task.level_field
    )
    log(
        f"  validation exact match at {task.level_field}={task.calibration_level}: {score['accuracy']:.3f}"
    )
    return {"shape": candidate, **score, "wall_s": time.perf_counter() - t0}
