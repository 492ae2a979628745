"""The loop gain against the training budget: the compute-matched trio at several budgets, and where the trend goes.

At each budget B (training FLOPs per run) the three runs of the compute-matched comparison are trained at equal
FLOPs (``compute_matched.plan_compute_matched``): (a) the same-size MDM, (b) LoopMDM (S ~ U{1..S_max}), (c) the
deeper MDM of (b)'s per-step FLOPs; and a fourth run, (a') ``mdm_at_b_steps``: the plain MDM trained for exactly
(b)'s number of steps, with its own warmup and cosine decay over those steps. Per budget and seed the study reports

* the final validation NELBO of each model (LoopMDM at S = 1, S_max and 2 S_max) and its standard error;
* the loop gain at equal FLOPs, NELBO(a) - NELBO(b at S_max) (> 0: looping wins), and the FLOPs ratio;
* the loop gain at equal steps, NELBO(a') - NELBO(b at S_max) (> 0: looping wins): does a LoopMDM step beat an
  MDM step at all (it costs more FLOPs)? Both runs have a full schedule over the same number of steps, so the
  comparison holds the learning-rate schedule fixed. (Reading (a)'s curve at (b)'s step count compares a run
  still at a high learning rate with one that has decayed; that reading is kept only as a diagnostic,
  ``schedule_bias_curve_read`` = (a)'s curve at (b)'s steps - (a')'s final curve point.)
* the gain over the deeper MDM, NELBO(c) - NELBO(b at S_max);
* the standard error of every such paired difference (per validation batch: the two models see the same rows,
  t and masks), the validation curve of every run, and the step at which each run left the unigram plateau.

**One validation set.** Every curve point and every final NELBO is evaluated on the same rows (the first batches
of the validation split) with the same t and masks: batch k draws its noise from a generator seeded with
``SeedSequence([eval_seed, k])``, whatever the run, its training seed or S. Curves use the first
``run.train.eval_batches`` batches, final numbers the first ``final_eval_batches`` (the curve rows are a prefix
of them). Standard errors are between batches (they hold the Monte-Carlo and the row-to-row variation).

**The plateau.** H is the unigram cross-entropy of the curve's validation tokens under the training tokens'
frequencies (``curves.unigram_cross_entropy``): the NELBO of a model that ignores its context. A run has left the
plateau at the first validation point at least ``plateau_margin`` (0.25) nats below H.

**The trend.** A least-squares line of a gain against log10(B), fitted only over the budgets where every seed's
two runs of that gain left the plateau (for the equal-FLOPs gain (a) and (b); for the equal-steps gain (a') and
(b)); fewer than two such budgets give no trend. Its 95% interval (slope, and the zero crossing when the line
heads there) is a bootstrap that resamples the seeds within each budget (``bootstrap`` resamples, RNG seed
``bootstrap_seed``).

Runs are checkpointed; a study that stopped resumes where it did (runs whose saved config or validation set
differs are refused). ``--shard K/N`` trains the runs of shard K of N (runs are spread over the shards by planned
FLOPs, largest first, each to the least-loaded shard), so two processes (one per core) can share a study; a final
call without ``--shard`` reuses every finished run and writes the report.

    loopmdm experiment loop-scaling --config laptop --out runs/scaling --shard 0/2 &
    loopmdm experiment loop-scaling --config laptop --out runs/scaling --shard 1/2 &
    wait; loopmdm experiment loop-scaling --config laptop --out runs/scaling
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..checkpoint import list_checkpoints
from ..config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ..data import PreparedData
from ..diffusion import predicted_fraction
from ..errors import ConfigError
from ..fileio import write_json
from ..model.fields import check_int
from ..model.flops import train_flops_per_token
from ..outputs import check_run_folder
from ..runtime import machine_info
from ..train import Trainer
from ..viz.experiment_plots import plot_loop_gain
from .common import clone, load_experiment_config, train_or_reuse
from .compute_matched import (
    ComputeMatchedConfig,
    MatchedPlan,
    RunPlan,
    _finalize_run_config,
    plan_compute_matched,
    start,
)
from .curves import Curve, flops_ratio, plateau_exit_step, read_curve, spread, unigram_cross_entropy
from .fixed_validation import FixedValidation, batch_seed, paired_gain  # noqa: F401  (re-exported)
from .provenance import corpus_description, data_fingerprint, provenance_line, software_versions  # noqa: F401

Log = Callable[[str], None]
EQUAL_STEPS = "mdm_at_b_steps"
EQUAL_STEPS_LABEL = "(a') MDM, same size, (b)'s steps (own schedule)"
RUNS = ("mdm", "loopmdm", "deeper", EQUAL_STEPS)
#: how curve and final NELBO are evaluated; a run folder evaluated otherwise is refused (not silently mixed in)
EVAL_METHOD = "fixed-rows, per-batch SeedSequence([eval_seed, k]) noise, antithetic t, v1"
#: the runs that must have left the plateau (every seed) for a budget to enter the trend of each gain
TREND_RUNS = {
    "gain_equal_flops": ("mdm", "loopmdm"),
    "gain_equal_steps": (EQUAL_STEPS, "loopmdm"),
    "gain_vs_deeper": ("deeper", "loopmdm"),
}
TREND_RULE = (
    "least squares of the gain against log10(budget) over every (budget, seed) point of the budgets at "
    "which, for every seed, both runs of the gain left the unigram plateau (first validation point at "
    "least plateau_margin nats below H); 95% bootstrap intervals resample the seeds within each budget"
)


@dataclass
class LoopScalingConfig(ComputeMatchedConfig):
    """A compute-matched configuration plus the budgets (training FLOPs per run, increasing) and the seeds of
    each: ``seeds_per_budget[i]`` is a count n (the first n of ``seeds``) or an explicit list of seeds."""

    budgets: list[float] = field(default_factory=lambda: [7.5e11, 2.5e12, 7.5e12, 2.25e13])
    seeds_per_budget: list[Union[int, list[int]]] = field(default_factory=lambda: [1, 1, 2, 2])
    bootstrap: int = 2000
    bootstrap_seed: int = 0
    plateau_margin: float = 0.25  # nats below the unigram plateau H that count as having left it

    def validate(self) -> "LoopScalingConfig":
        super().validate()
        if len(self.budgets) < 2 or any(b <= 0 for b in self.budgets):
            raise ConfigError(f"budgets={self.budgets} must hold at least two positive FLOP counts")
        if any(b2 <= b1 for b1, b2 in zip(self.budgets, self.budgets[1:])):
            raise ConfigError(f"budgets={self.budgets} must be increasing (training FLOPs per run)")
        if len(self.seeds_per_budget) != len(self.budgets):
            raise ConfigError(
                f"seeds_per_budget has {len(self.seeds_per_budget)} entries for {len(self.budgets)} "
                "budgets; give one per budget"
            )
        for entry in self.seeds_per_budget:
            if isinstance(entry, (list, tuple)):
                if not entry or len(set(entry)) != len(entry):
                    raise ConfigError(
                        f"seeds_per_budget entry {entry} must be a non-empty list of distinct seeds"
                    )
                for s in entry:
                    check_int(s, "seeds_per_budget seed", low=0)
            elif check_int(entry, "seeds_per_budget entry") < 1 or entry > len(self.seeds):
                raise ConfigError(
                    f"seeds_per_budget asks for {entry} seeds but seeds={self.seeds}; give a count "
                    "from 1 to len(seeds) or a list of seeds"
                )
        check_int(self.bootstrap, "bootstrap", low=0)
        if not self.plateau_margin > 0:
            raise ConfigError(
                f"plateau_margin={self.plateau_margin} must be > 0 (nats below the plateau)"
            )
        return self

    def budget_seeds(self, i: int) -> list[int]:
        """The seeds of budget ``i``."""
        entry = self.seeds_per_budget[i]
        return (
            [int(s) for s in entry]
            if isinstance(entry, (list, tuple))
            else list(self.seeds[: int(entry)])
        )


def _laptop() -> LoopScalingConfig:
    run = RunConfig(
        model=ModelConfig(
            vocab_size=2048,
            max_seq_len=128,
            d_model=64,
            n_heads=2,
            n_layers=4,
            n_h=1,
            n_m=2,
            n_o=1,
            cond_dim=32,
        ),
        diffusion=DiffusionConfig(s_max=4, t_sampler="bell", t_weighting="paper"),
        data=DataConfig(source="stdlib"),
        train=TrainConfig(
            batch_size=32,
            lr=2e-3,
            warmup_steps=0,
            eval_batches=16,
            precision="fp32",
            device="cpu",
            log_every=25,
            keep_last=1,
            threads=1,
        ),
    )
    return LoopScalingConfig(
        name="laptop",
        run=run,
        n_evals=12,
        seeds=[0, 1, 2, 3, 4],
        final_eval_batches=64,
        eval_seed=1234,
        expected_minutes=450.0,
        budgets=[7.5e11, 2.5e12, 7.5e12, 2.25e13],
        seeds_per_budget=[2, 5, 5, 5],
        description="4-layer d=64 models (0.4M parameters) on the whole standard-library corpus of the running "
        "Python, BPE 2048, length 128, batch 32, AdamW 2e-3, t from the bell with the paper's weighting (the "
        "quickstart recipe's); LoopMDM loops "
        "layers 1-2 with S_max = 4 (the deeper MDM has 7 layers), plus the plain MDM trained for "
        "LoopMDM's step count with its own schedule (the equal-steps baseline); budgets 7.5e11 .. "
        "2.25e13 training FLOPs per run (30x), 5 seeds at the three largest, 2 at the smallest. "
        "Validation: curves on 16 batches (65k tokens), final NELBO on 64 batches (262k tokens), the "
        "same rows, t and masks for every run (eval_seed 1234). Run as two one-thread processes "
        "(--shard 0/2 and 1/2; about 7.5 hours when the cores are free), then once without --shard "
        "for the report.",
    )


PRESETS = {"laptop": _laptop}


def load_loop_scaling_config(spec: str | Path = "laptop") -> LoopScalingConfig:
    """``laptop`` or a YAML file (``base: laptop`` plus overrides)."""
    return load_experiment_config(spec, PRESETS, "loop-scaling").validate()


# --------------------------------------------------------------------------- the plan


def equal_steps_run(plan: MatchedPlan) -> RunPlan:
    """(a'): (a)'s model and config trained for (b)'s number of steps (its own warmup and cosine decay over them),
    the baseline of the gain at equal steps."""
    a, b = plan.run("mdm"), plan.run("loopmdm")
    return RunPlan(
        EQUAL_STEPS,
        EQUAL_STEPS_LABEL,
        clone(a.cfg),
        b.steps,
        a.train_flops_per_token,
        a.flops_per_step,
        b.steps * a.flops_per_step,
    )


def budget_plans(cfg: LoopScalingConfig, free_fraction: float = 1.0) -> list[MatchedPlan]:
    """One compute-matched plan per budget: (a) gets round(B / (tokens per step x F_train(a))) steps, (b) and
    (c) the steps that give them the same total, and (a') (``mdm_at_b_steps``, not compute-matched) (b)'s steps.
    A budget that cannot be matched within ``flops_tolerance`` (too few steps to round) is a one-line error."""
    run = cfg.run
    tokens = run.train.batch_size * run.model.max_seq_len
    pf = predicted_fraction(run.diffusion) * free_fraction
    f_a = train_flops_per_token(run.model, 1, predicted_fraction=pf)
    plans = []
    for budget in cfg.budgets:
        steps_a = max(1, round(budget / (tokens * f_a)))
        try:
            plan = plan_compute_matched(cfg, steps_a, free_fraction)
        except ConfigError as e:
            raise ConfigError(f"budget {budget:.3g} FLOPs cannot be matched: {e}") from None
        plan.runs.append(equal_steps_run(plan))
        plans.append(plan)
    return plans


def run_list(cfg: LoopScalingConfig, plans: list[MatchedPlan]) -> list[tuple[int, int, RunPlan]]:
    """(budget index, seed, RunPlan) of every run of the study, in training order."""
    return [
        (i, seed, rp)
        for i, plan in enumerate(plans)
        for seed in cfg.budget_seeds(i)
        for rp in plan.runs
    ]


def shard_assignment(runs: Sequence[tuple[int, int, RunPlan]], n: int) -> list[int]:
    """The shard of every run: largest planned FLOPs first, each to the shard with the fewest planned FLOPs so
    far (ties: list order, lowest shard), so that N processes finish at about the same time."""
    load, out = [0.0] * n, [0] * len(runs)
    for j in sorted(range(len(runs)), key=lambda j: (-runs[j][2].planned_flops, j)):
        k = min(range(n), key=lambda k: (load[k], k))
        out[j] = k
        load[k] += runs[j][2].planned_flops
    return out


def parse_shard(spec: Optional[str]) -> Optional[tuple[int, int]]:
    """``"K/N"`` -> (K, N) with 0 <= K < N; None stays None."""
    if spec is None:
        return None
    try:
        k, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {spec!r} must look like K/N, e.g. --shard 0/2") from None
    if not 0 <= k < n:
        raise ConfigError(f"--shard {spec!r} needs 0 <= K < N")
    return k, n


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


# --------------------------------------------------------------------------- one run


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def train_run(
    plan: RunPlan,
    seed: int,
    run_dir: Path,
    data: PreparedData,
    cfg: LoopScalingConfig,
    validation: FixedValidation,
    progress: bool,
    log: Log,
) -> tuple[torch.nn.Module, dict]:
    """Train one run (or reuse the finished run / resume the partial one in ``run_dir`` when its config and
    validation set match; another config or validation set is refused). ``experiment_run.json`` in the run
    folder records the validation set, the training wall time and the cached final evaluation."""
    rc = _finalize_run_config(plan, seed, cfg)
    record_path = run_dir / "experiment_run.json"
    curve_eval = {
        "method": EVAL_METHOD,
        "eval_seed": cfg.eval_seed,
        "batches": rc.train.eval_batches,
        "batch_size": rc.train.batch_size,
    }
    record = _read_record(record_path)
    if list_checkpoints(run_dir / "checkpoints") and record.get("curve_eval") != curve_eval:
        raise ConfigError(
            f"{str(run_dir)!r} holds a run whose validation curve was evaluated on another set "
            f"({record.get('curve_eval')} instead of {curve_eval}); delete that folder to retrain "
            "it, or choose another --out"
        )
    if not record:
        check_run_folder(run_dir)  # before the record is written into it
        record = {"seed": seed, "steps": plan.steps, "curve_eval": curve_eval, "train_wall_s": 0.0}
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(record_path, record)
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
    model.eval()
    curve = read_curve(run_dir / "metrics.jsonl")
    info = {
        "steps": plan.steps,
        "flops": curve.flops[-1] if curve.flops else 0.0,
        "reused": reused,
        "wall_s": time.perf_counter() - t0,
        "train_wall_s": record.get("train_wall_s"),
        "curve": curve.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, info


def final_eval(
    model,
    plan: RunPlan,
    run_dir: Path,
    loops: list[int],
    cfg: LoopScalingConfig,
    validation: FixedValidation,
) -> dict:
    """{S: ``FixedValidation.evaluate``} on ``final_eval_batches`` batches, cached in the run's
    experiment_run.json (recomputed when the validation set, S grid or steps change)."""
    record_path = run_dir / "experiment_run.json"
    record = _read_record(record_path)
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
        return {int(s): v for s, v in cached["results"].items()}
    out = {s: validation.evaluate(model, s, cfg.final_eval_batches) for s in loops}
    record["final_eval"] = {"key": key, "results": out}
    write_json(record_path, record)
    return out


# --------------------------------------------------------------------------- the study


def run_loop_scaling(
    cfg: LoopScalingConfig,
    out: str | Path,
    shard: Optional[str] = None,
    progress: bool = False,
    log: Log = print,
) -> Optional[dict]:
    """Train (and evaluate) the study's runs (all, or this shard's), then, without a shard, write results.json,
    summary.md and loop_gain.png."""
    out, _, data = start(cfg, out, cfg.seeds, log)
    plans = budget_plans(cfg, data.free_fraction)
    runs = run_list(cfg, plans)
    part = parse_shard(shard)
    owner = shard_assignment(runs, part[1]) if part is not None else None
    validation = FixedValidation.of(cfg, data)
    s_max = cfg.run.diffusion.s_max
    t0 = time.perf_counter()
    trained: dict = {}
    for j, (i, seed, rp) in enumerate(runs):
        if owner is not None and owner[j] != part[0]:
            continue
        log(f"budget {cfg.budgets[i]:.2g}, seed {seed}: {rp.label}, {rp.steps} steps")
        run_dir = out / f"budget_{i}" / f"seed_{seed}" / rp.name
        model, info = train_run(rp, seed, run_dir, data, cfg, validation, progress, log)
        grid = sorted({1, s_max, 2 * s_max}) if rp.name == "loopmdm" else [1]
        info["final"] = final_eval(model, rp, run_dir, grid, cfg, validation)
        trained[(i, seed, rp.name)] = info
    if part is not None:
        log(
            f"shard {shard}: {len(trained)} runs trained and evaluated in {time.perf_counter() - t0:.0f}s; run "
            "again without --shard to write the report"
        )
        return None
    results = study_results(cfg, plans, trained, data, time.perf_counter() - t0)
    plot_loop_gain(
        results["rows"],
        results["trend"],
        out / "loop_gain.png",
        provenance=results["provenance"],
        equal_steps_trend=results["trend_equal_steps"],
    )
    results["figures"] = ["loop_gain.png"]
    write_json(out / "results.json", results)
    (out / "summary.md").write_text(loop_scaling_markdown(results))
    return results


def study_results(
    cfg: LoopScalingConfig,
    plans: list[MatchedPlan],
    trained: dict,
    data: PreparedData,
    wall_s: float,
) -> dict:
    validation = FixedValidation.of(cfg, data)
    curve_rows, curve_frozen = validation.rows(cfg.run.train.eval_batches)
    final_rows, final_frozen = validation.rows(cfg.final_eval_batches)
    vocab = data.tokenizer.vocab_size
    h = unigram_cross_entropy(data.train, curve_rows, vocab, 1.0, data.train_frozen, curve_frozen)
    h_final = unigram_cross_entropy(
        data.train, final_rows, vocab, 1.0, data.train_frozen, final_frozen
    )
    rows = budget_rows(cfg, plans, trained, h)
    corpus, software = corpus_description(cfg.run.data), software_versions()
    fingerprint = data_fingerprint(cfg.run.data, data)
    any_final = next(iter(trained.values()))["final"][1]
    seq_len = data.val.shape[1]
    return {
        "experiment": "loop-scaling",
        "config_name": cfg.name,
        "config": asdict(cfg),
        "machine": machine_info(),
        "software": software,
        "corpus": corpus,
        "data_fingerprint": fingerprint,
        "provenance": provenance_line(corpus, fingerprint, software),
        "validation": {
            "method": EVAL_METHOD,
            "eval_seed": cfg.eval_seed,
            "batch_size": validation.batch_size,
            "seq_len": seq_len,
            "val_rows_available": int(len(data.val)),
            "curve": {
                "batches": validation.n_batches(cfg.run.train.eval_batches),
                "rows": int(len(curve_rows)),
                "tokens": int(curve_rows.size if curve_frozen is None else (~curve_frozen).sum()),
            },
            "final": {
                "batches": any_final["batches"],
                "rows": any_final["rows"],
                "tokens": any_final["tokens"],
                "requested_batches": cfg.final_eval_batches,
            },
            "description": "every curve point and final NELBO of every run on the same validation rows (the first "
            "batches of the split) with the same t and masks (batch k seeded by "
            "SeedSequence([eval_seed, k]), independent of the training seed); the curve rows are a "
            "prefix of the final rows; standard errors are between batches, paired differences "
            "use per-batch differences",
        },
        "plateau": {
            "H": h,
            "H_final_rows": h_final,
            "margin": cfg.plateau_margin,
            "definition": "H = unigram cross-entropy of the curve's validation tokens under the training "
            "tokens' frequencies (add-one smoothing); a run left the plateau at its first "
            "validation point <= H - margin",
        },
        "plans": [p.summary() for p in plans],
        "rows": rows,
        "trend": fit_trend(rows, cfg.bootstrap, cfg.bootstrap_seed, "gain_equal_flops"),
        "trend_equal_steps": fit_trend(rows, cfg.bootstrap, cfg.bootstrap_seed, "gain_equal_steps"),
        "trend_rule": TREND_RULE,
        "wall_s": wall_s,
    }


def _curve_dict(c: Curve) -> dict:
    return {"step": c.steps, "flops": c.flops, "val_nelbo": c.nelbo}


def seed_point(runs: dict, s_max: int, plateau: float, margin: float = 0.25) -> dict:
    """The per-seed numbers of one budget from its four trained runs (``final``: ``final_eval`` results)."""
    curves = {k: Curve(**v["curve"]) for k, v in runs.items()}
    fin = {k: v["final"] for k, v in runs.items()}
    b = fin["loopmdm"][s_max]
    gains = {}
    for key, ref in (
        ("gain_equal_flops", "mdm"),
        ("gain_equal_steps", EQUAL_STEPS),
        ("gain_vs_deeper", "deeper"),
    ):
        gains[key], gains[key + "_stderr"] = paired_gain(fin[ref][1], b)
    exits = {k: plateau_exit_step(c, plateau, margin) for k, c in curves.items()}
    read = curves["mdm"].at_step(runs["loopmdm"]["steps"])
    return {
        "mdm": fin["mdm"][1]["nelbo"],
        "deeper": fin["deeper"][1]["nelbo"],
        EQUAL_STEPS: fin[EQUAL_STEPS][1]["nelbo"],
        "loopmdm": {int(s): v["nelbo"] for s, v in fin["loopmdm"].items()},
        "final": {k: {int(s): v for s, v in f.items()} for k, f in fin.items()},
        **gains,
        "schedule_bias_curve_read": None if read is None else read - curves[EQUAL_STEPS].final,
        "flops_ratio": flops_ratio(curves["mdm"], curves["loopmdm"]),
        "mdm_late_gain": curves["mdm"].late_gain(0.2),
        "flops": {k: v["flops"] for k, v in runs.items()},
        "steps": {k: v["steps"] for k, v in runs.items()},
        "curves": {k: _curve_dict(c) for k, c in curves.items()},
        "plateau_exit_step": exits,
        "left_plateau": {k: e is not None for k, e in exits.items()},
        "plateau_exit_fraction": {
            k: None if e is None else e / runs[k]["steps"] for k, e in exits.items()
        },
    }


def _with_sem(values: list) -> dict:
    s = spread(values)
    s["sem"] = None if s["std"] is None or s["n"] < 2 else s["std"] / math.sqrt(s["n"])
    return s


ROW_KEYS = (
    "mdm",
    "deeper",
    EQUAL_STEPS,
    "gain_equal_flops",
    "gain_equal_steps",
    "gain_vs_deeper",
    "schedule_bias_curve_read",
    "flops_ratio",
    "mdm_late_gain",
)


def budget_rows(
    cfg: LoopScalingConfig, plans: list[MatchedPlan], trained: dict, plateau: float
) -> list[dict]:
    """Per budget: every seed's point, the mean / std / standard error over seeds of each number, and whether the
    budget is past the plateau for each gain (every seed's two runs of it left the plateau)."""
    s_max = cfg.run.diffusion.s_max
    rows = []
    for i, (budget, plan) in enumerate(zip(cfg.budgets, plans)):
        seeds = cfg.budget_seeds(i)
        points = {
            seed: seed_point(
                {rp.name: trained[(i, seed, rp.name)] for rp in plan.runs},
                s_max,
                plateau,
                cfg.plateau_margin,
            )
            for seed in seeds
        }
        rows.append(
            {
                "budget": budget,
                "seeds": seeds,
                "per_seed": points,
                **{k: _with_sem([points[s][k] for s in seeds]) for k in ROW_KEYS},
                "loopmdm": {
                    S: _with_sem([points[s]["loopmdm"][S] for s in seeds])
                    for S in points[seeds[0]]["loopmdm"]
                },
                "past_plateau": {
                    k: all(_past(p, needs) for p in points.values())
                    for k, needs in TREND_RUNS.items()
                },
            }
        )
    return rows


def _past(point: dict, needs: Sequence[str]) -> bool:
    left = point.get("left_plateau") or {}
    return all(left.get(n) is True for n in needs)


def fit_trend(
    rows: list[dict], bootstrap: int = 2000, seed: int = 0, key: str = "gain_equal_flops"
) -> dict:
    """gain = a + b log10(B) by least squares over the (budget, seed) points of the budgets past the plateau
    (every seed's two runs of ``key``, ``TREND_RUNS[key]``, left it: ``left_plateau`` of each point), the budget
    where the line crosses zero (when it heads there), and 95% bootstrap intervals of the slope and the crossing
    that resample the seeds within each budget (``bootstrap`` resamples, ``numpy.random.default_rng(seed)``).
    Fewer than two budgets past the plateau: no fit, and ``note`` says so."""
    needs = TREND_RUNS[key]
    used, excluded = [], []
    for r in rows:
        vals = [p.get(key) for p in r["per_seed"].values()]
        ok = (
            bool(vals)
            and all(v is not None and math.isfinite(v) for v in vals)
            and all(_past(p, needs) for p in r["per_seed"].values())
        )
        (used if ok else excluded).append((r["budget"], np.array(vals if ok else [], dtype=float)))
    out = {
        "gain": key,
        "runs_past_plateau": list(needs),
        "budgets_used": [b for b, _ in used],
        "budgets_excluded": [b for b, _ in excluded],
        "seeds_per_budget": [len(v) for _, v in used],
        "points": int(sum(len(v) for _, v in used)),
        "bootstrap": bootstrap,
        "bootstrap_seed": seed,
        "slope_per_decade": None,
        "intercept": None,
        "slope_interval_95": None,
        "crossing_budget": None,
        "crossing_interval_95": None,
        "bootstrap_share_crossing": None,
        "residual_std": None,
        "note": None,
    }
    if len(used) < 2:
        return out | {"note": "no trend: fewer than two budgets past the plateau"}
    x = np.concatenate([np.full(len(v), math.log10(b)) for b, v in used])
    y = np.concatenate([v for _, v in used])
    b, a = np.polyfit(x, y, 1)
    crossing = _crossing(a, b, y)
    out |= {
        "slope_per_decade": float(b),
        "intercept": float(a),
        "crossing_budget": None if crossing is None else float(10**crossing),
        "residual_std": float(np.std(y - (a + b * x), ddof=2)) if len(y) > 2 else None,
    }
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        xc = x - x.mean()
        ys = np.concatenate(
            [v[rng.integers(0, len(v), (bootstrap, len(v)))] for _, v in used], axis=1
        )
        slopes = (ys - ys.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)
        intercepts = ys.mean(axis=1) - slopes * x.mean()
        crossings = [_crossing(aa, bb, yy) for aa, bb, yy in zip(intercepts, slopes, ys)]
        finite = np.array([c for c in crossings if c is not None])
        out |= {
            "slope_interval_95": [
                float(np.percentile(slopes, 2.5)),
                float(np.percentile(slopes, 97.5)),
            ],
            "bootstrap_share_crossing": len(finite) / bootstrap,
            "crossing_interval_95": None
            if len(finite) < 0.5 * bootstrap
            else [float(10 ** np.percentile(finite, q)) for q in (2.5, 97.5)],
        }
    if any(len(v) < 2 for _, v in used):
        out["note"] = (
            "budgets with one seed add no resampling variation: the bootstrap interval understates the "
            "uncertainty"
        )
    return out


def _crossing(a: float, b: float, y: np.ndarray) -> Optional[float]:
    """log10 of the budget where a + b log10(B) = 0, when the trend heads there from the data's side."""
    if b == 0 or not np.isfinite(b):
        return None
    x0 = -a / b
    heading = (np.mean(y) < 0 and b > 0) or (np.mean(y) > 0 and b < 0)
    return float(x0) if heading else None


def _trend_lines(name: str, trend: dict) -> list[str]:
    if trend.get("slope_per_decade") is None:
        return [
            f"- {name}: {trend.get('note')} (budgets past the plateau: "
            f"{', '.join(f'{b:.2g}' for b in trend['budgets_used']) or 'none'})"
        ]
    ci, cross, cci = (
        trend.get("slope_interval_95"),
        trend.get("crossing_budget"),
        trend.get("crossing_interval_95"),
    )
    line = (
        f"- {name}: gain = {trend['intercept']:.3f} + {trend['slope_per_decade']:.3f} log10(B) over "
        f"{trend['points']} points at budgets {', '.join(f'{b:.2g}' for b in trend['budgets_used'])}"
        + (
            f" (excluded, on the plateau: {', '.join(f'{b:.2g}' for b in trend['budgets_excluded'])})"
            if trend["budgets_excluded"]
            else ""
        )
        + (f"; slope 95% bootstrap interval {ci[0]:+.3f} .. {ci[1]:+.3f} per decade" if ci else "")
    )
    line += "; crosses zero at " + (
        f"{cross:.2g} FLOPs per run" if cross else "no budget (it does not head there)"
    )
    line += f" (95% interval {cci[0]:.2g} .. {cci[1]:.2g})" if cci else ""
    return [line] + ([f"  ({trend['note']})"] if trend.get("note") else [])


def loop_scaling_markdown(results: dict) -> str:
    rows = results["rows"]
    s_max = results["config"]["run"]["diffusion"]["s_max"]

    def f(sp, d=3, sem=False):
        if sp is None or sp.get("mean") is None:
            return "n/a"
        err = sp.get("sem") if sem else sp["std"]
        return f"{sp['mean']:.{d}f}" + (
            f" ± {err:.{d}f}" if sp["n"] > 1 and err is not None else ""
        )

    def exits(r, name):
        steps = [p["plateau_exit_step"][name] for p in r["per_seed"].values()]
        return "/".join("-" if s is None else str(s) for s in steps)

    lines = [
        f"| budget (FLOPs / run) | seeds | (a) MDM | (a') MDM at (b)'s steps | LoopMDM S=1 | S={s_max} | "
        f"S={2 * s_max} | (c) deeper MDM | gain at equal FLOPs | gain at equal steps | gain over (c) | "
        "left plateau at step (a / b, per seed) | past plateau | FLOPs ratio | (a)'s late gain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lp, pp = r["loopmdm"], r["past_plateau"]
        lines.append(
            f"| {r['budget']:.2g} | {len(r['seeds'])} | {f(r['mdm'])} | {f(r[EQUAL_STEPS])} | "
            f"{f(lp.get(1))} | {f(lp.get(s_max))} | {f(lp.get(2 * s_max))} | {f(r['deeper'])} | "
            f"{f(r['gain_equal_flops'], sem=True)} | {f(r['gain_equal_steps'], sem=True)} | "
            f"{f(r['gain_vs_deeper'], sem=True)} | {exits(r, 'mdm')} / {exits(r, 'loopmdm')} | "
            f"{'yes' if pp['gain_equal_flops'] else 'no'} | {f(r['flops_ratio'], 2)} | "
            f"{f(r['mdm_late_gain'])} |"
        )
    v, p = results["validation"], results["plateau"]
    lines += [
        "",
        "(NELBO in nats / token, mean ± std over seeds; gains, > 0 when looping wins, mean ± standard "
        "error of the seed mean; gain at equal steps = NELBO(a') - NELBO(b at S_max), both trained with a "
        "full schedule over (b)'s steps)",
        "",
    ]
    lines += _trend_lines("trend at equal FLOPs", results["trend"])
    lines += _trend_lines("trend at equal steps", results["trend_equal_steps"])
    lines += [
        f"- validation: {v['final']['batches']} batches ({v['final']['tokens']} tokens) for final NELBO, "
        f"{v['curve']['batches']} ({v['curve']['tokens']} tokens) per curve point, eval_seed "
        f"{v['eval_seed']}: the same rows, t and masks for every run",
        f"- unigram plateau H = {p['H']:.3f} nats / token; a run left it at its first validation point "
        f"<= H - {p['margin']}",
        f"- {results['provenance']}; source fingerprint {results['data_fingerprint']['source_fingerprint'][:16]}",
        f"- wall time {results['wall_s'] / 60:.1f} min",
    ]
    return "\n".join(lines) + "\n"
