"""One run of the loop-scaling study: trained on the study's validation set, resumed, or reused from its folder,
and its final evaluation at each S. A finished run needs no weights: its ``experiment_run.json`` (the validation
set, the training wall time, the final evaluation and ``finished``: the run's config and the digests of its
data) and ``metrics.jsonl`` report it, so a study moves between machines in a few kB per run."""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..checkpoint import list_checkpoints, step_of
from ..config import RunConfig
from ..data import PreparedData
from ..errors import ConfigError
from ..fileio import write_json
from ..outputs import check_run_folder
from ..train import Trainer
from .common import check_saved_config, finished_curve, read_json_object, train_or_reuse
from .compute_matched import RunPlan, _finalize_run_config
from .curves import read_curve
from .fixed_validation import FixedValidation
from .loop_scaling_config import LoopScalingConfig
from .loop_scaling_report import EVAL_METHOD
from .provenance import data_digests

Log = Callable[[str], None]


class _StudyTrainer(Trainer):
    """The library's Trainer, its validation curve on the study's ``FixedValidation`` rows and noise (instead of
    a slice drawn with the training seed)."""

    def __init__(self, *args, validation: FixedValidation, **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed_validation = validation

    def validate(self, loops: Optional[int] = None) -> dict:
        model = self.ema.module if self.ema is not None else self.model
        r = self.fixed_validation.evaluate(
            model, loops or self.loop_dist.max(), self.cfg.train.eval_batches
        )
        return {
            "nelbo": r["nelbo"],
            "stderr": r["stderr"],
            "tokens": r["tokens"],
            "ppl": math.exp(min(r["nelbo"], 50.0)),
        }


def _check_finished(record: dict, rc: RunConfig, identity: dict, run_dir: Path) -> None:
    """Refuse a finished run's record made with another config (compared as the library reads it today, so
    fields added since are their defaults) or other data."""
    check_saved_config(record["finished"].get("config"), rc, run_dir)
    if record["finished"].get("data") != identity:
        raise ConfigError(
            f"{str(run_dir)!r} holds a run trained on other data (token rows / tokenizer digests differ: "
            "another corpus, or the standard library of another Python); delete that folder to retrain "
            "it, or choose another --out"
        )


def _run_info(plan: RunPlan, run_dir: Path, record: dict, reused: bool, trained_steps: int) -> dict:
    curve = read_curve(run_dir / "metrics.jsonl")
    return {
        "steps": plan.steps,
        "flops": curve.flops[-1] if curve.flops else 0.0,
        "reused": reused,
        "trained_steps": trained_steps,  # the steps this call trained (0: reused)
        "train_wall_s": record.get("train_wall_s"),
        "curve": curve.to_dict(),
    }


def _new_record(seed: int, plan: RunPlan, curve_eval: dict) -> dict:
    return {"seed": seed, "steps": plan.steps, "curve_eval": curve_eval, "train_wall_s": 0.0}


def run_is_done(run_dir: Path, plan: RunPlan) -> bool:
    """Whether the run in ``run_dir`` needs no training: its record says it finished and holds a final
    evaluation, or its last checkpoint is at the planned steps."""
    record = read_json_object(run_dir / "experiment_run.json")
    if record.get("finished") and record.get("final_eval"):
        return True
    kept = list_checkpoints(run_dir / "checkpoints")
    return bool(kept) and step_of(kept[-1]) >= plan.steps


def train_run(
    plan: RunPlan,
    seed: int,
    run_dir: Path,
    data: PreparedData,
    cfg: LoopScalingConfig,
    validation: FixedValidation,
    progress: bool,
    log: Log,
    identity: Optional[dict] = None,
    loops: Sequence[int] = (1,),
) -> dict:
    """Train one run and evaluate it at each S of ``loops`` (``final_eval``), or reuse the finished run /
    resume the partial one in ``run_dir`` when its config and validation set match (another config or
    validation set is refused). ``experiment_run.json`` in the run folder records the validation set, the
    training wall time, the final evaluation and, written with it, ``finished``: the run's config and the
    digests of its data (``identity``, default ``data_digests(data)``). A finished run whose checkpoints were
    deleted is reused from that record and its ``metrics.jsonl`` (a finished run on other data is refused)."""
    rc = _finalize_run_config(plan, seed, cfg)
    identity = identity if identity is not None else data_digests(data)
    record_path = run_dir / "experiment_run.json"
    curve_eval = {
        "method": EVAL_METHOD,
        "eval_seed": cfg.eval_seed,
        "batches": rc.train.eval_batches,
        "batch_size": rc.train.batch_size,
    }
    record = read_json_object(record_path)
    kept = list_checkpoints(run_dir / "checkpoints")
    if (kept or record.get("finished")) and record.get("curve_eval") != curve_eval:
        raise ConfigError(
            f"{str(run_dir)!r} holds a run whose validation curve was evaluated on another set "
            f"({record.get('curve_eval')} instead of {curve_eval}); delete that folder to retrain "
            "it, or choose another --out"
        )
    if record.get("finished") and (kept or record.get("final_eval")):
        _check_finished(record, rc, identity, run_dir)
        if not kept:  # the weights were deleted: the record and the curve hold the run's numbers
            finished_curve(run_dir, plan.steps)
            log(f"  reusing the finished run's record in {run_dir} (no weights kept)")
            info = _run_info(plan, run_dir, record, True, 0)
            info["final"] = final_eval(None, plan, run_dir, loops, cfg, validation)
            return info
    elif record and not kept:
        # an unfinished run whose checkpoints are gone (or a record cut before its evaluation) trains anew,
        # with a fresh record
        record = _new_record(seed, plan, curve_eval)
        write_json(record_path, record)
    if not record:
        check_run_folder(run_dir)  # before the record is written into it
        record = _new_record(seed, plan, curve_eval)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(record_path, record)
    start_step = step_of(kept[-1]) if kept else 0
    t0 = time.perf_counter()
    reused = False
    try:
        model, reused = train_or_reuse(
            rc,
            run_dir,
            data,
            progress,
            log,
            trainer_cls=functools.partial(_StudyTrainer, validation=validation),
        )
    finally:
        if not reused:  # also when a signal stopped it: the next call resumes and adds its own time
            record["train_wall_s"] = (record.get("train_wall_s") or 0.0) + (
                time.perf_counter() - t0
            )
            write_json(record_path, record)
    info = _run_info(plan, run_dir, record, reused, 0 if reused else plan.steps - start_step)
    finished = {"config": rc.to_dict(), "data": identity}
    info["final"] = final_eval(model.eval(), plan, run_dir, loops, cfg, validation, finished)
    return info


def final_eval(
    model: Optional[torch.nn.Module],
    plan: RunPlan,
    run_dir: Path,
    loops: Sequence[int],
    cfg: LoopScalingConfig,
    validation: FixedValidation,
    finished: Optional[dict] = None,
) -> dict:
    """{S: ``FixedValidation.evaluate``} on ``final_eval_batches`` batches, cached in the run's
    experiment_run.json (recomputed when the validation set, S grid or steps change; ``model`` None: only the
    cache). ``finished`` (the run's config and data digests) is written with it, so that a record that says
    finished always holds its evaluation."""
    record_path = run_dir / "experiment_run.json"
    record = read_json_object(record_path)
    key = {
        "method": EVAL_METHOD,
        "eval_seed": cfg.eval_seed,
        "batches": cfg.final_eval_batches,
        "batch_size": validation.batch_size,
        "loops": list(loops),
        "steps": plan.steps,
    }
    cached = record.get("final_eval")
    if isinstance(cached, dict) and cached.get("key") == key:
        out = {int(s): v for s, v in cached["results"].items()}
    elif model is None:
        raise ConfigError(
            f"{str(run_dir)!r} keeps no weights and its record has no evaluation at S = {list(loops)} on "
            f"{cfg.final_eval_batches} batches; delete that folder to retrain it, or evaluate as it was"
        )
    else:
        out = {s: validation.evaluate(model, s, cfg.final_eval_batches) for s in loops}
        record["final_eval"] = {"key": key, "results": out}
        record.pop("finished", None)  # rewritten below, with this evaluation
    if finished is not None and record.get("finished") != finished:
        record["finished"] = finished
    write_json(record_path, record)
    return out
