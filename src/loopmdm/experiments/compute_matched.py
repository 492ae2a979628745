"""Compute-matched comparison (the paper's Fig. 2); the loop-placement ablation reuses it (``ablation.py``).

Three runs on the same data, tokenizer, sequence length and seed, each given the SAME total training FLOPs:

- (a) ``mdm``: a plain MDM of the same size (L = n_h + n_m + n_o layers, S = 1);
- (b) ``loopmdm``: the same parameters, the mid block (n_m layers after n_h head layers) looped
  S ~ U{1..S_max} times per training step;
- (c) ``deeper``: a non-looped MDM with L + (E[S] - 1) n_m layers, whose per-step FLOPs match (b)'s
  expected per-step FLOPs F_loop = F_base + (E[S] - 1) n_m F_layer, E[S] = (S_max + 1) / 2.

(b) and (c) cost more per step, so they take fewer steps (computed from ``loopmdm.model.flops``). Validation
NELBO is logged against cumulative FLOPs; the FLOPs ratio is the FLOPs (a) needs to reach its final
NELBO over the FLOPs (b) needs to reach the same value (``curves.flops_ratio``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import ModelConfig, RunConfig
from ..data import PreparedData, prepare_data
from ..diffusion import make_loop_distribution, make_objective, predicted_fraction
from ..errors import ConfigError
from ..eval.nelbo import evaluate_nelbo
from ..fileio import write_json
from ..model.flops import (
    expected_train_flops_per_token,
    layer_flops_per_token,
    train_flops_per_token,
)
from ..runtime import machine_info, set_threads
from ..viz.experiment_plots import plot_loss_vs_flops, plot_nelbo_vs_loops
from .common import clone, train_or_reuse
from .compute_matched_config import ComputeMatchedConfig
from .curves import Curve, flops_ratio, fmt_spread, read_curve, spread

Log = Callable[[str], None]
RUN_NAMES = ("mdm", "loopmdm", "deeper")
# with ``balanced_loops``, each distribution's stratified draw of the same p(S) (its steps spend their FLOPs)
BALANCED = {"uniform": "balanced", "flop_proportional": "balanced_flop_proportional"}
RUN_LABELS = {
    "mdm": "(a) MDM, same size",
    "loopmdm": "(b) LoopMDM",
    "deeper": "(c) deeper MDM, matched per-step FLOPs",
}


# --------------------------------------------------------------------------- the plan (pure arithmetic)


@dataclass
class RunPlan:
    """One run of the comparison: its config, steps and (expected) FLOPs."""

    name: str
    label: str
    cfg: RunConfig
    steps: int
    train_flops_per_token: float  # expected over S for LoopMDM
    flops_per_step: float
    planned_flops: float

    def summary(self) -> dict:
        m = self.cfg.model
        return {
            "name": self.name,
            "label": self.label,
            "n_layers": m.n_layers,
            "n_h": m.n_h,
            "n_m": m.n_m,
            "n_o": m.n_o,
            "loop_dist": self.cfg.diffusion.loop_dist,
            "s_max": make_loop_distribution(self.cfg.diffusion).max(),
            "steps": self.steps,
            "train_flops_per_token": self.train_flops_per_token,
            "flops_per_step": self.flops_per_step,
            "planned_flops": self.planned_flops,
            "tokens": self.steps * self.cfg.train.batch_size * m.max_seq_len,
        }


@dataclass
class MatchedPlan:
    """The three runs, the FLOPs budget, and how well (c) matches (b) per step."""

    runs: list[RunPlan]
    total_flops: float
    deeper_extra_layers_exact: float
    deeper_layers: int
    deeper_per_step_mismatch: float  # (F_c - F_b) / F_b per training step
    flops_mismatch: float  # largest |planned - budget| / budget over the runs

    def run(self, name: str) -> RunPlan:
        return next(r for r in self.runs if r.name == name)

    def summary(self) -> dict:
        return {
            "total_flops": self.total_flops,
            "runs": [r.summary() for r in self.runs],
            "deeper": {
                "extra_layers_exact": self.deeper_extra_layers_exact,
                "n_layers": self.deeper_layers,
                "per_step_flops_mismatch": self.deeper_per_step_mismatch,
            },
            "planned_total_flops_mismatch": self.flops_mismatch,
        }


def baseline_run_config(run: RunConfig) -> RunConfig:
    """(a): the same model with S fixed at 1 (a plain MDM)."""
    cfg = clone(run)
    cfg.diffusion.loop_dist, cfg.diffusion.s_fixed = "fixed", 1
    return cfg


def deeper_model(
    run: RunConfig, tolerance: float, pf: float = 1.0
) -> tuple[ModelConfig, float, float]:
    """(c)'s model: L + x layers with x the integer closest to the exact (F_b - F_a) / F_layer, the extra
    layers appended to the tail. Returns (model, exact x, per-step mismatch (F_c - F_b) / F_b); raises
    ConfigError when even the closest integer depth misses (b)'s per-step FLOPs by more than ``tolerance``.
    ``pf``: the share of positions the LM head runs on (sparse prediction)."""
    m = run.model
    T = m.max_seq_len
    f_b = expected_train_flops_per_token(
        m, make_loop_distribution(run.diffusion), predicted_fraction=pf
    )
    f_a = train_flops_per_token(m, 1, predicted_fraction=pf)
    per_layer = 3 * layer_flops_per_token(m, T)
    exact = (f_b - f_a) / per_layer  # = (E[S] - 1) * n_m (+ injection adapter cost)
    best = None
    for x in {max(1, math.floor(exact)), max(1, math.ceil(exact))}:
        cand = clone(m)
        cand.n_layers, cand.n_o = m.n_layers + x, m.n_o + x
        cand.input_injection, cand.loop_embedding, cand.backprop_depth = False, False, None
        mismatch = (train_flops_per_token(cand, 1, predicted_fraction=pf) - f_b) / f_b
        if best is None or abs(mismatch) < abs(best[2]):
            best = (cand, x, mismatch)
    cand, x, mismatch = best
    if abs(mismatch) > tolerance:
        raise ConfigError(
            f"cannot match (b)'s per-step FLOPs with a deeper non-looped MDM: it would need "
            f"{m.n_layers + exact:.2f} layers ({exact:.2f} extra = (E[S]-1)*n_m); the closest integer depth "
            f"{cand.n_layers} is {mismatch:+.1%} off (depth_tolerance {tolerance:.0%}); choose S_max and n_m with "
            f"(S_max-1)*n_m even, or raise depth_tolerance"
        )
    return cand, exact, mismatch


def plan_compute_matched(
    cfg: ComputeMatchedConfig, baseline_steps: Optional[int] = None, free_fraction: float = 1.0
) -> MatchedPlan:
    """Steps of (a), (b), (c) at the same total training FLOPs (``loopmdm.model.flops``, the LM head at the
    expected share of positions the loss runs on: ``free_fraction`` of the positions are not frozen), and (c)'s
    depth. ``cfg``: anything with ``run``, ``baseline_steps``, ``depth_tolerance`` and ``flops_tolerance``."""
    run = cfg.run
    tokens = run.train.batch_size * run.model.max_seq_len
    pf = predicted_fraction(run.diffusion) * free_fraction
    steps_a = baseline_steps or cfg.baseline_steps
    cfg_a = baseline_run_config(run)
    f_a = train_flops_per_token(cfg_a.model, 1, predicted_fraction=pf)
    total = steps_a * tokens * f_a
    model_c, exact, mismatch = deeper_model(run, cfg.depth_tolerance, pf)
    cfg_c = baseline_run_config(run)
    cfg_c.model = model_c
    f_b = expected_train_flops_per_token(
        run.model, make_loop_distribution(run.diffusion), predicted_fraction=pf
    )
    f_c = train_flops_per_token(model_c, 1, predicted_fraction=pf)
    runs = []
    for name, c, f in (("mdm", cfg_a, f_a), ("loopmdm", clone(run), f_b), ("deeper", cfg_c, f_c)):
        steps = max(1, round(total / (tokens * f)))
        runs.append(RunPlan(name, RUN_LABELS[name], c, steps, f, f * tokens, steps * f * tokens))
    worst = max(abs(r.planned_flops - total) / total for r in runs)
    if worst > cfg.flops_tolerance:
        raise ConfigError(
            f"with baseline_steps={steps_a} the step counts {[r.steps for r in runs]} miss the common FLOPs "
            f"budget by up to {worst:.1%} (flops_tolerance {cfg.flops_tolerance:.0%}); raise baseline_steps"
        )
    return MatchedPlan(runs, total, exact, model_c.n_layers, mismatch, worst)


# --------------------------------------------------------------------------- running


def _prepare(cfg: ComputeMatchedConfig, log: Log) -> PreparedData:
    run = cfg.run
    data = prepare_data(run.data, run.model.vocab_size, run.model.max_seq_len, log=log)
    # the plan must use the tokenizer's real vocabulary
    run.model.vocab_size = data.tokenizer.vocab_size
    return data


def _finalize_run_config(plan: RunPlan, seed: int, cfg: ComputeMatchedConfig) -> RunConfig:
    c = clone(plan.cfg)
    c.train.seed = seed
    c.train.max_steps = plan.steps
    c.train.warmup_steps = max(1, round(cfg.warmup_frac * plan.steps)) if cfg.warmup_frac > 0 else 0
    c.train.eval_every = max(1, plan.steps // cfg.n_evals)
    c.train.save_every = max(1, plan.steps // 4)  # checkpoints to resume an interrupted study from
    if cfg.balanced_loops and c.diffusion.loop_dist in BALANCED:
        # S drawn in balanced blocks (uniform) or one stratified sample (flop_proportional): exact compute matching
        c.diffusion.loop_dist = BALANCED[c.diffusion.loop_dist]
    return c.validate()


def train_one(
    plan: RunPlan,
    seed: int,
    run_dir: Path,
    data: PreparedData,
    cfg: ComputeMatchedConfig,
    progress: bool,
    log: Log,
    trainer_cls=None,
) -> tuple[torch.nn.Module, dict]:
    """Train one run (or reuse / resume the one in ``run_dir`` when its config matches); returns the model and
    facts about the run (steps, logged FLOPs, wall time, the validation curve). ``trainer_cls``: see ``train``."""
    rc = _finalize_run_config(plan, seed, cfg)
    t0 = time.perf_counter()
    model, reused = train_or_reuse(rc, run_dir, data, progress, log, trainer_cls)
    record = run_dir / "experiment_run.json"  # keeps the training wall time for later reuse
    if reused:
        train_wall = (
            json.loads(record.read_text()).get("train_wall_s") if record.is_file() else None
        )
    else:
        train_wall = time.perf_counter() - t0
        record.write_text(
            json.dumps({"train_wall_s": train_wall, "seed": seed, "steps": plan.steps})
        )
    curve = read_curve(run_dir / "metrics.jsonl")
    info = {
        "steps": plan.steps,
        "flops": curve.flops[-1] if curve.flops else 0.0,
        "reused": reused,
        "wall_s": time.perf_counter() - t0,
        "train_wall_s": train_wall,
        "curve": curve.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return model.eval(), info


def final_nelbo(
    model, data: PreparedData, run: RunConfig, loops: list[int], cfg: ComputeMatchedConfig
) -> dict:
    """Validation NELBO at each S in ``loops`` on ``final_eval_batches`` batches, same t / masks for every model."""
    obj = make_objective(run.diffusion, data.tokenizer.mask_id, antithetic=True)
    out = {}
    for s in loops:
        r = evaluate_nelbo(
            model,
            data.val,
            obj,
            s,
            batch_size=run.train.batch_size,
            max_batches=cfg.final_eval_batches,
            seed=cfg.eval_seed,
            precision=run.train.precision,
            frozen=data.val_frozen,  # prompt / answer data: the answer tokens only
        )
        out[s] = {
            "nelbo": r["nelbo"],
            "stderr": r["stderr"],
            "ppl": r["ppl"],
            "tokens": r["tokens"],
        }
    return out


def start(cfg: ComputeMatchedConfig, out: str | Path, seeds: Optional[list[int]], log: Log):
    """Validate, set the thread count, prepare the data: -> (out folder, seeds, data)."""
    cfg.validate()
    set_threads(cfg.run.train.threads)
    return Path(out), list(seeds if seeds is not None else cfg.seeds), _prepare(cfg, log)


def run_compute_matched(
    cfg: ComputeMatchedConfig,
    out: str | Path,
    seeds: Optional[list[int]] = None,
    progress: bool = False,
    log: Log = print,
) -> dict:
    """Train (a), (b), (c) for every seed at the same total FLOPs, evaluate, plot, and write results.json."""
    out, seeds, data = start(cfg, out, seeds, log)
    plan = plan_compute_matched(cfg)
    log(_plan_text(plan))
    s_max = cfg.run.diffusion.s_max
    loops_grid = cfg.loops_grid()
    per_seed: dict[int, dict] = {}
    t_start = time.perf_counter()
    for seed in seeds:
        runs = {}
        for rp in plan.runs:
            log(f"seed {seed}: training {rp.label} for {rp.steps} steps")
            model, info = train_one(
                rp, seed, out / f"seed_{seed}" / rp.name, data, cfg, progress, log
            )
            grid = loops_grid if rp.name == "loopmdm" else [1]
            info["final"] = final_nelbo(model, data, rp.cfg, grid, cfg)
            runs[rp.name] = info
            log(
                f"  done in {info['wall_s']:.0f}s: FLOPs {info['flops']:.3e}, final NELBO "
                + ", ".join(f"S={s}: {v['nelbo']:.4f}" for s, v in info["final"].items())
            )
        per_seed[seed] = _seed_summary(runs, s_max)
        write_json(
            out / "results.json", _results(cfg, plan, per_seed, time.perf_counter() - t_start)
        )
    results = _results(cfg, plan, per_seed, time.perf_counter() - t_start)
    plot_loss_vs_flops(
        per_seed,
        RUN_LABELS,
        out / "loss_vs_flops.png",
        title=f"Validation NELBO vs training FLOPs ({cfg.name}; LoopMDM at S={s_max})",
    )
    plot_nelbo_vs_loops(results["summary"], s_max, out / "nelbo_vs_loops.png")
    results["figures"] = ["loss_vs_flops.png", "nelbo_vs_loops.png"]
    write_json(out / "results.json", results)
    (out / "summary.md").write_text(summary_markdown(results))
    return results


def _seed_summary(runs: dict, s_max: int) -> dict:
    curves = {k: Curve(**v["curve"]) for k, v in runs.items()}
    flops = [v["flops"] for v in runs.values()]
    loop_final = runs["loopmdm"]["final"][s_max]["nelbo"]
    return {
        "runs": runs,
        "flops_ratio_mdm_over_loopmdm": flops_ratio(curves["mdm"], curves["loopmdm"]),
        "flops_ratio_mdm_over_deeper": flops_ratio(curves["mdm"], curves["deeper"]),
        "flops_agreement": (max(flops) - min(flops)) / max(flops) if max(flops) > 0 else None,
        "loopmdm_smax_beats_mdm": loop_final < runs["mdm"]["final"][1]["nelbo"],
        "loopmdm_smax_beats_deeper": loop_final < runs["deeper"]["final"][1]["nelbo"],
    }


def _results(cfg: ComputeMatchedConfig, plan: MatchedPlan, per_seed: dict, wall_s: float) -> dict:
    s_max = cfg.run.diffusion.s_max
    seeds = list(per_seed)
    summary: dict = {"final_nelbo": {}, "seeds": seeds}
    for name in RUN_NAMES:
        grid = cfg.loops_grid() if name == "loopmdm" else [1]
        summary["final_nelbo"][name] = {
            s: spread([per_seed[k]["runs"][name]["final"][s]["nelbo"] for k in seeds]) for s in grid
        }
    for key in ("flops_ratio_mdm_over_loopmdm", "flops_ratio_mdm_over_deeper", "flops_agreement"):
        summary[key] = spread([per_seed[k][key] for k in seeds])
    summary["loopmdm_smax_beats_mdm"] = [per_seed[k]["loopmdm_smax_beats_mdm"] for k in seeds]
    summary["loopmdm_smax_beats_deeper"] = [per_seed[k]["loopmdm_smax_beats_deeper"] for k in seeds]
    summary["paper_flops_ratio"] = {"LM1B": 3.34, "OWT": 2.95, "FineWeb-Edu": 2.34}
    return {
        "experiment": "compute-matched",
        "config_name": cfg.name,
        "config": asdict(cfg),
        "machine": machine_info(),
        "plan": plan.summary(),
        "s_max": s_max,
        "wall_s": wall_s,
        "per_seed": per_seed,
        "summary": summary,
    }


def _plan_text(plan: MatchedPlan) -> str:
    lines = [f"compute-matched plan: total training FLOPs {plan.total_flops:.3e} per run"]
    for r in plan.runs:
        m = r.cfg.model
        lines.append(
            f"  {r.label}: {m.n_layers} layers (n_h={m.n_h}, n_m={m.n_m}, n_o={m.n_o}), {r.steps} steps, "
            f"{r.flops_per_step:.3e} FLOPs/step, planned {r.planned_flops:.3e}"
        )
    lines.append(
        f"  deeper baseline: {plan.deeper_extra_layers_exact:.2f} extra layers exactly, "
        f"{plan.deeper_layers} layers chosen, per-step FLOPs mismatch {plan.deeper_per_step_mismatch:+.2%}"
    )
    return "\n".join(lines)


def summary_markdown(results: dict) -> str:
    """The result tables in Markdown: the run folder's summary.md, which the CLI prints."""
    s = results["summary"]
    s_max = results["s_max"]
    plan = results["plan"]
    lines = [
        "| run | layers | steps | train FLOPs (planned) | final val NELBO |",
        "|---|---|---|---|---|",
    ]
    for r in plan["runs"]:
        finals = s["final_nelbo"][r["name"]]
        cell = "; ".join(f"S={k}: {fmt_spread(v)}" for k, v in finals.items())
        lines.append(
            f"| {r['label']} | {r['n_layers']} (n_h={r['n_h']}, n_m={r['n_m']}, n_o={r['n_o']}) | "
            f"{r['steps']} | {r['planned_flops']:.3e} | {cell} |"
        )
    lines += [
        "",
        f"- FLOPs ratio (a)/(b) at S={s_max}: {fmt_spread(s['flops_ratio_mdm_over_loopmdm'], 2)} "
        f"(per seed: {_fmt_list(s['flops_ratio_mdm_over_loopmdm']['values'])}; paper: 3.34x LM1B, 2.95x OWT, "
        "2.34x FineWeb-Edu)",
        f"- FLOPs ratio (a)/(c): {fmt_spread(s['flops_ratio_mdm_over_deeper'], 2)} "
        f"(per seed: {_fmt_list(s['flops_ratio_mdm_over_deeper']['values'])})",
        f"- LoopMDM at S={s_max} beats (a): {s['loopmdm_smax_beats_mdm']}; beats (c): "
        f"{s['loopmdm_smax_beats_deeper']} (per seed)",
        f"- cumulative FLOPs agreement at the end (max-min)/max: {fmt_spread(s['flops_agreement'], 4)}",
        f"- deeper baseline: {plan['deeper']['extra_layers_exact']:.2f} extra layers exactly, "
        f"{plan['deeper']['n_layers']} chosen, per-step mismatch {plan['deeper']['per_step_flops_mismatch']:+.2%}",
        f"- seeds: {s['seeds']}; wall time {results['wall_s'] / 60:.1f} min",
    ]
    return "\n".join(lines) + "\n"


def _fmt_list(values) -> str:
    return ", ".join("not reached" if v is None else f"{v:.2f}" for v in values)
