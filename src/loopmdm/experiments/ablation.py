"""Ablation (the paper's ablations): which layers loop (early, early-middle, middle, late, all) and how many (n_m),
every variant a LoopMDM with the same L layers and parameters, trained for the FLOPs of the plain MDM's
``ablation_baseline_steps`` steps (the compute-matched machinery of ``compute_matched.py``)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from ..config import ModelConfig
from ..diffusion import make_loop_distribution, predicted_fraction
from ..fileio import write_json
from ..model.flops import expected_train_flops_per_token
from ..runtime import machine_info
from ..viz.experiment_plots import plot_ablation
from .common import clone
from .compute_matched import Log, RunPlan, final_nelbo, plan_compute_matched, start, train_one
from .compute_matched_config import ComputeMatchedConfig
from .curves import Curve, flops_ratio, fmt_spread, spread
from .placements import place_loop


def ablation_variants(cfg: ComputeMatchedConfig) -> list[tuple[str, ModelConfig]]:
    """(label, model) for every placement at the config's n_m, then every n_m at early-middle (deduplicated)."""
    base = cfg.run.model
    out: list[tuple[str, ModelConfig]] = []
    seen = set()
    for p in cfg.ablation_placements:
        m = place_loop(base, p, base.n_m)
        key = (m.n_h, m.n_m, m.n_o)
        if key not in seen:
            seen.add(key)
            out.append((f"{p} (n_m={m.n_m})", m))
    for n_m in cfg.ablation_n_m:
        m = place_loop(base, "early-middle", n_m)
        key = (m.n_h, m.n_m, m.n_o)
        if key not in seen:
            seen.add(key)
            out.append((f"early-middle (n_m={n_m})", m))
    return out


def run_ablation(
    cfg: ComputeMatchedConfig,
    out: str | Path,
    seeds: Optional[list[int]] = None,
    progress: bool = False,
    log: Log = print,
) -> dict:
    """Which layers to loop, and how many: every variant trained at the FLOPs of ``ablation_baseline_steps``
    steps of the plain MDM; reports final validation NELBO at S = 1, S_max, 2 S_max and the FLOPs ratio."""
    out, seeds, data = start(cfg, out, seeds, log)
    steps_a = cfg.ablation_baseline_steps or cfg.baseline_steps
    base_plan = plan_compute_matched(cfg, steps_a).run("mdm")
    tokens = cfg.run.train.batch_size * cfg.run.model.max_seq_len
    s_max = cfg.run.diffusion.s_max
    grid = sorted({1, s_max, 2 * s_max})
    rows: dict[str, dict] = {}
    t_start = time.perf_counter()
    for label, model_cfg in [("no loop (plain MDM)", None)] + ablation_variants(cfg):
        if model_cfg is None:
            rp = base_plan
        else:
            rc = clone(cfg.run)
            rc.model = model_cfg
            f = expected_train_flops_per_token(
                model_cfg,
                make_loop_distribution(rc.diffusion),
                predicted_fraction=predicted_fraction(rc.diffusion),
            )
            steps = max(1, round(base_plan.planned_flops / (tokens * f)))
            rp = RunPlan(label, label, rc, steps, f, f * tokens, steps * f * tokens)
        per = {}
        for seed in seeds:
            log(f"ablation {label}, seed {seed}: {rp.steps} steps")
            slug = label.split(" (")[0].replace(" ", "_") + (
                f"_nm{model_cfg.n_m}" if model_cfg else ""
            )
            model, info = train_one(rp, seed, out / f"seed_{seed}" / slug, data, cfg, progress, log)
            info["final"] = final_nelbo(model, data, rp.cfg, grid if model_cfg else [1], cfg)
            per[seed] = info
        m = rp.cfg.model
        base_curves = None
        if model_cfg is not None:
            base_curves = {
                s: Curve(**rows["no loop (plain MDM)"]["per_seed"][s]["curve"]) for s in seeds
            }
        rows[label] = {
            "n_h": m.n_h,
            "n_m": m.n_m,
            "n_o": m.n_o,
            "steps": rp.steps,
            "planned_flops": rp.planned_flops,
            "per_seed": per,
            "final_nelbo": {
                s: spread([per[k]["final"][s]["nelbo"] for k in seeds])
                for s in per[seeds[0]]["final"]
            },
            "flops_ratio_vs_plain": None
            if base_curves is None
            else spread([flops_ratio(base_curves[k], Curve(**per[k]["curve"])) for k in seeds]),
        }
        write_json(out / "ablation.json", {"rows": rows})
    results = {
        "experiment": "ablation",
        "config_name": cfg.name,
        "config": asdict(cfg),
        "machine": machine_info(),
        "s_max": s_max,
        "seeds": seeds,
        "wall_s": time.perf_counter() - t_start,
        "rows": rows,
    }
    plot_ablation(rows, s_max, out / "ablation.png")
    results["figures"] = ["ablation.png"]
    write_json(out / "ablation.json", results)
    (out / "ablation.md").write_text(ablation_markdown(results))
    return results


def ablation_markdown(results: dict) -> str:
    s_max = results["s_max"]
    lines = [
        f"| looped layers | n_h / n_m / n_o | steps | val NELBO S=1 | val NELBO S={s_max} | "
        f"val NELBO S={2 * s_max} | FLOPs ratio vs plain |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results["rows"].items():
        f = r["final_nelbo"]

        def get(s: int, f: dict = f) -> str:
            return fmt_spread(f[s]) if s in f else "-"

        ratio = (
            "-" if r["flops_ratio_vs_plain"] is None else fmt_spread(r["flops_ratio_vs_plain"], 2)
        )
        lines.append(
            f"| {label} | {r['n_h']} / {r['n_m']} / {r['n_o']} | {r['steps']} | {get(1)} | {get(s_max)} | "
            f"{get(2 * s_max)} | {ratio} |"
        )
    return "\n".join(lines) + "\n"
