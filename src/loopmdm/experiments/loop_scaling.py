"""The loop gain against the training budget: the compute-matched trio at several budgets, and where the trend goes.

At each budget B (training FLOPs per run) the three runs of the compute-matched comparison are trained at equal
FLOPs (``compute_matched.plan_compute_matched``): (a) the same-size MDM, (b) LoopMDM (S ~ U{1..S_max}), (c) the
deeper MDM of (b)'s per-step FLOPs. Per budget and seed the study reports

* the final validation NELBO of each model (LoopMDM at S = 1, S_max and 2 S_max);
* the loop gain at equal FLOPs, NELBO(a) - NELBO(b at S_max) (> 0: looping wins), and the FLOPs ratio;
* the loop gain at equal steps, NELBO(a after as many steps as (b) took) - NELBO(b): does a LoopMDM step beat an
  MDM step at all (it costs more FLOPs)?
* how flat (a)'s curve is at the end (the relative gain over its last 20% of steps).

A least-squares line of the gain against log10(B) over every (budget, seed) point gives the trend and the budget
at which it would cross zero, with a bootstrap interval over the points. Runs are checkpointed; a study that
stopped resumes where it did (runs whose saved config differs are refused). ``--shard K/N`` trains every N-th
run starting at K, so two processes (one per core) can share a study; a final call without ``--shard`` reuses
every finished run and writes the report.

    loopmdm experiment loop-scaling --config laptop --out runs/scaling --shard 0/2 &
    loopmdm experiment loop-scaling --config laptop --out runs/scaling --shard 1/2 &
    wait; loopmdm experiment loop-scaling --config laptop --out runs/scaling
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ..diffusion import predicted_fraction
from ..errors import ConfigError
from ..fileio import write_json
from ..model.fields import check_int
from ..model.flops import train_flops_per_token
from ..runtime import machine_info
from ..viz.experiment_plots import plot_loop_gain
from .common import load_experiment_config
from .compute_matched import ComputeMatchedConfig, MatchedPlan, final_nelbo, plan_compute_matched, start, train_one
from .curves import Curve, flops_ratio, spread

Log = Callable[[str], None]


@dataclass
class LoopScalingConfig(ComputeMatchedConfig):
    """A compute-matched configuration plus the budgets (training FLOPs per run, increasing) and how many seeds
    each gets (``seeds_per_budget[i]``: the first that many of ``seeds``)."""

    budgets: list[float] = field(default_factory=lambda: [7.5e11, 2.5e12, 7.5e12, 2.25e13])
    seeds_per_budget: list[int] = field(default_factory=lambda: [1, 1, 2, 2])
    bootstrap: int = 2000

    def validate(self) -> "LoopScalingConfig":
        super().validate()
        if len(self.budgets) < 2 or any(b <= 0 for b in self.budgets):
            raise ConfigError(f"budgets={self.budgets} must hold at least two positive FLOP counts")
        if any(b2 <= b1 for b1, b2 in zip(self.budgets, self.budgets[1:])):
            raise ConfigError(f"budgets={self.budgets} must be increasing (training FLOPs per run)")
        if len(self.seeds_per_budget) != len(self.budgets):
            raise ConfigError(f"seeds_per_budget has {len(self.seeds_per_budget)} entries for {len(self.budgets)} "
                              "budgets; give one per budget")
        for n in self.seeds_per_budget:
            if check_int(n, "seeds_per_budget entry") > len(self.seeds):
                raise ConfigError(f"seeds_per_budget asks for {n} seeds but seeds={self.seeds}")
        return self


def _laptop() -> LoopScalingConfig:
    run = RunConfig(
        model=ModelConfig(vocab_size=2048, max_seq_len=128, d_model=64, n_heads=2, n_layers=4, n_h=1, n_m=2, n_o=1,
                          cond_dim=32),
        diffusion=DiffusionConfig(s_max=4),
        data=DataConfig(source="stdlib"),
        train=TrainConfig(batch_size=32, lr=2e-3, warmup_steps=0, eval_batches=4, precision="fp32", device="cpu",
                          log_every=25, keep_last=1, threads=1),
    )
    return LoopScalingConfig(
        name="laptop", run=run, n_evals=12, seeds=[0, 1], final_eval_batches=32, expected_minutes=130.0,
        budgets=[7.5e11, 2.5e12, 7.5e12, 2.25e13], seeds_per_budget=[1, 1, 2, 2],
        description="4-layer d=64 models (0.4M parameters) on the whole standard-library corpus, BPE 2048, length "
                    "128, batch 32, AdamW 2e-3 (the quickstart recipe's); LoopMDM loops layers 1-2 with S_max = 4 "
                    "(the deeper MDM has 7 layers); budgets 7.5e11 .. 2.25e13 training FLOPs per run (30x), 2 "
                    "seeds at the two largest. Run as two one-thread processes (--shard 0/2 and 1/2), then once "
                    "without --shard for the report.")


PRESETS = {"laptop": _laptop}


def load_loop_scaling_config(spec: str | Path = "laptop") -> LoopScalingConfig:
    """``laptop`` or a YAML file (``base: laptop`` plus overrides)."""
    return load_experiment_config(spec, PRESETS, "loop-scaling").validate()


# --------------------------------------------------------------------------- the plan

def budget_plans(cfg: LoopScalingConfig, free_fraction: float = 1.0) -> list[MatchedPlan]:
    """One compute-matched plan per budget: (a) gets round(B / (tokens per step x F_train(a))) steps, (b) and
    (c) the steps that give them the same total; a budget that cannot be matched within ``flops_tolerance``
    (too few steps to round) is a one-line error naming it."""
    run = cfg.run
    tokens = run.train.batch_size * run.model.max_seq_len
    pf = predicted_fraction(run.diffusion) * free_fraction
    f_a = train_flops_per_token(run.model, 1, predicted_fraction=pf)
    plans = []
    for budget in cfg.budgets:
        steps_a = max(1, round(budget / (tokens * f_a)))
        try:
            plans.append(plan_compute_matched(cfg, steps_a, free_fraction))
        except ConfigError as e:
            raise ConfigError(f"budget {budget:.3g} FLOPs cannot be matched: {e}") from None
    return plans


def run_list(cfg: LoopScalingConfig, plans: list[MatchedPlan]) -> list[tuple[int, int, object]]:
    """(budget index, seed, RunPlan) of every run of the study, in training order."""
    return [(i, seed, rp) for i, plan in enumerate(plans) for seed in cfg.seeds[:cfg.seeds_per_budget[i]]
            for rp in plan.runs]


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


# --------------------------------------------------------------------------- the study

def run_loop_scaling(cfg: LoopScalingConfig, out: str | Path, shard: Optional[str] = None, progress: bool = False,
                     log: Log = print) -> Optional[dict]:
    """Train the study's runs (all, or this shard's), then, without a shard, evaluate and write results.json,
    summary.md and loop_gain.png."""
    out, _, data = start(cfg, out, cfg.seeds, log)
    plans = budget_plans(cfg, data.free_fraction)
    runs = run_list(cfg, plans)
    part = parse_shard(shard)
    t0 = time.perf_counter()
    trained: dict = {}
    for j, (i, seed, rp) in enumerate(runs):
        if part is not None and j % part[1] != part[0]:
            continue
        log(f"budget {cfg.budgets[i]:.2g}, seed {seed}: {rp.label}, {rp.steps} steps")
        model, info = train_one(rp, seed, out / f"budget_{i}" / f"seed_{seed}" / rp.name, data, cfg, progress, log)
        if part is None:
            grid = sorted({1, cfg.run.diffusion.s_max, 2 * cfg.run.diffusion.s_max}) if rp.name == "loopmdm" else [1]
            info["final"] = final_nelbo(model, data, rp.cfg, grid, cfg)
        trained[(i, seed, rp.name)] = info
    if part is not None:
        log(f"shard {shard}: {len(trained)} runs trained in {time.perf_counter() - t0:.0f}s; run again without "
            "--shard to write the report")
        return None
    rows = budget_rows(cfg, plans, trained)
    results = {"experiment": "loop-scaling", "config_name": cfg.name, "config": asdict(cfg), "machine": machine_info(),
               "plans": [p.summary() for p in plans], "rows": rows, "trend": fit_trend(rows, cfg.bootstrap),
               "wall_s": time.perf_counter() - t0}
    plot_loop_gain(rows, results["trend"], out / "loop_gain.png")
    results["figures"] = ["loop_gain.png"]
    write_json(out / "results.json", results)
    (out / "summary.md").write_text(loop_scaling_markdown(results))
    return results


def seed_point(runs: dict, s_max: int) -> dict:
    """The per-seed numbers of one budget from its three trained runs."""
    curves = {k: Curve(**v["curve"]) for k, v in runs.items()}
    mdm, loop = runs["mdm"]["final"][1]["nelbo"], runs["loopmdm"]["final"]
    at_equal_steps = curves["mdm"].at_step(runs["loopmdm"]["steps"])
    return {"mdm": mdm, "deeper": runs["deeper"]["final"][1]["nelbo"],
            "loopmdm": {int(s): v["nelbo"] for s, v in loop.items()},
            "gain_equal_flops": mdm - loop[s_max]["nelbo"],
            "gain_equal_steps": None if at_equal_steps is None else at_equal_steps - curves["loopmdm"].final,
            "flops_ratio": flops_ratio(curves["mdm"], curves["loopmdm"]),
            "mdm_late_gain": curves["mdm"].late_gain(0.2),
            "flops": {k: v["flops"] for k, v in runs.items()}, "steps": {k: v["steps"] for k, v in runs.items()}}


def budget_rows(cfg: LoopScalingConfig, plans: list[MatchedPlan], trained: dict) -> list[dict]:
    s_max = cfg.run.diffusion.s_max
    rows = []
    for i, (budget, plan) in enumerate(zip(cfg.budgets, plans)):
        seeds = cfg.seeds[:cfg.seeds_per_budget[i]]
        points = {seed: seed_point({rp.name: trained[(i, seed, rp.name)] for rp in plan.runs}, s_max) for seed in seeds}
        keys = ("mdm", "deeper", "gain_equal_flops", "gain_equal_steps", "flops_ratio", "mdm_late_gain")
        rows.append({"budget": budget, "seeds": seeds, "per_seed": points,
                     **{k: spread([points[s][k] for s in seeds]) for k in keys},
                     "loopmdm": {S: spread([points[s]["loopmdm"][S] for s in seeds])
                                 for S in points[seeds[0]]["loopmdm"]}})
    return rows


def fit_trend(rows: list[dict], bootstrap: int = 2000, seed: int = 0) -> dict:
    """gain = a + b log10(B) by least squares over every (budget, seed) point, the budget where the line crosses
    zero (when the slope points there) and a bootstrap 68% interval of it over the points."""
    pts = [(math.log10(r["budget"]), p["gain_equal_flops"]) for r in rows for p in r["per_seed"].values()]
    x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if len(set(x.tolist())) < 2:
        return {"points": len(pts), "slope": None, "intercept": None, "crossing_budget": None}
    b, a = np.polyfit(x, y, 1)
    crossing = _crossing(a, b, y)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(bootstrap):
        k = rng.integers(0, len(x), len(x))
        if len(set(x[k].tolist())) < 2:
            continue
        bb, aa = np.polyfit(x[k], y[k], 1)
        boots.append(_crossing(aa, bb, y[k]))
    finite = np.array([c for c in boots if c is not None])
    interval = None if len(finite) < 0.5 * len(boots) else [float(10 ** np.percentile(finite, q)) for q in (16, 84)]
    return {"points": len(pts), "slope_per_decade": float(b), "intercept": float(a),
            "crossing_budget": None if crossing is None else float(10 ** crossing),
            "crossing_interval_68": interval, "bootstrap_share_crossing": len(finite) / max(len(boots), 1),
            "residual_std": float(np.std(y - (a + b * x), ddof=2)) if len(pts) > 2 else None}


def _crossing(a: float, b: float, y: np.ndarray) -> Optional[float]:
    """log10 of the budget where a + b log10(B) = 0, when the trend heads there from the data's side."""
    if b == 0 or not np.isfinite(b):
        return None
    x0 = -a / b
    heading = (np.mean(y) < 0 and b > 0) or (np.mean(y) > 0 and b < 0)
    return float(x0) if heading else None


def loop_scaling_markdown(results: dict) -> str:
    rows, trend = results["rows"], results["trend"]
    s_max = results["config"]["run"]["diffusion"]["s_max"]

    def f(sp, d=3):
        if sp is None or sp.get("mean") is None:
            return "n/a"
        return f"{sp['mean']:.{d}f}" + (f" ± {sp['std']:.{d}f}" if sp["n"] > 1 else "")

    lines = [f"| budget (FLOPs / run) | seeds | MDM | LoopMDM S=1 | S={s_max} | S={2 * s_max} | deeper MDM | "
             "gain at equal FLOPs | gain at equal steps | FLOPs ratio | MDM late gain |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lp = r["loopmdm"]
        lines.append(f"| {r['budget']:.2g} | {len(r['seeds'])} | {f(r['mdm'])} | {f(lp.get(1))} | {f(lp.get(s_max))} | "
                     f"{f(lp.get(2 * s_max))} | {f(r['deeper'])} | {f(r['gain_equal_flops'])} | "
                     f"{f(r['gain_equal_steps'])} | {f(r['flops_ratio'], 2)} | {f(r['mdm_late_gain'])} |")
    cross = trend.get("crossing_budget")
    ci = trend.get("crossing_interval_68")
    lines += ["", f"- trend: gain = {trend.get('intercept', float('nan')):.3f} + "
                  f"{trend.get('slope_per_decade', float('nan')):.3f} log10(B) over {trend['points']} points",
              "- the trend crosses zero at " + (f"{cross:.2g} FLOPs per run" if cross else "no budget (it does not "
                                                 "head towards zero)")
              + (f" (68% bootstrap interval {ci[0]:.2g} .. {ci[1]:.2g})" if ci else ""),
              f"- wall time {results['wall_s'] / 60:.1f} min"]
    return "\n".join(lines) + "\n"
