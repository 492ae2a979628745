"""The loopify experiment's summary: final NELBO per source, arm and S (mean and spread over seeds), the answer
per source, and ``summary.md``."""

from __future__ import annotations

from dataclasses import asdict

from ..runtime import machine_info
from .curves import fmt_spread, spread
from .loopify_config import LoopifyExperimentConfig

LABELS = {
    "finetune": "(a) fine-tune as it is, S = 1",
    "loopify": "(b) loopify + fine-tune, S ~ U{1..S_max}",
    "curriculum": "(c) loopify + fine-tune, curriculum over S",
}


def summarize(cfg: LoopifyExperimentConfig, per_seed: dict, wall_s: float) -> dict:
    """Per source: final NELBO (mean / spread over seeds) of the source and each arm at every S, the FLOPs
    each arm used, and the answer: does (b) at S_max beat (a) at S = 1, per seed."""
    seeds, grid, s_max = list(per_seed), cfg.loops_grid(), cfg.s_max
    summary = {}
    for source in cfg.sources:
        runs = {k: per_seed[k][source] for k in seeds}
        names = ["source"] + cfg.arms()
        final = {
            n: {s: spread([runs[k][n]["final"][s]["nelbo"] for k in seeds]) for s in grid}
            for n in names
        }
        flops = {n: spread([runs[k][n]["flops"] for k in seeds]) for n in cfg.arms()}
        gain = [
            runs[k]["finetune"]["final"][1]["nelbo"] - runs[k]["loopify"]["final"][s_max]["nelbo"]
            for k in seeds
        ]
        best_a = [min(v["nelbo"] for v in runs[k]["finetune"]["final"].values()) for k in seeds]
        summary[source] = {
            "final_nelbo": final,
            "extra_flops": flops,
            "s1_max_rel_diff": [runs[k]["source"]["loopify"]["s1_max_rel_diff"] for k in seeds],
            "loopify_minus_finetune": spread([-g for g in gain]),
            "loopify_beats_finetune": [g > 0 for g in gain],
            "loopify_beats_finetune_best_s": [
                runs[k]["loopify"]["final"][s_max]["nelbo"] < b for k, b in zip(seeds, best_a)
            ],
        }
    train_wall = sum(
        run.get("train_wall_s") or 0.0
        for k in seeds
        for runs in per_seed[k].values()
        for run in runs.values()
    )
    return {
        "experiment": "loopify",
        "config_name": cfg.name,
        "config": asdict(cfg),
        "machine": machine_info(),
        "seeds": seeds,
        "s_max": s_max,
        "grid": grid,
        "wall_s": wall_s,
        "train_wall_s": train_wall,
        "per_seed": per_seed,
        "summary": summary,
    }


def answer(res: dict, s_max: int) -> str:
    """One sentence per source: the question of the issue, answered from the numbers."""
    d = res["loopify_minus_finetune"]
    wins = res["loopify_beats_finetune"]
    verdict = "yes" if all(wins) else "no" if not any(wins) else "mixed"
    return (
        f"{verdict}: (b) at S={s_max} minus (a) at S=1 = {fmt_spread(d, 4)} nats/token (negative: loopify "
        f"better), better on {sum(wins)} of {len(wins)} seeds"
    )


def summary_markdown(results: dict) -> str:
    """The result tables in Markdown: the run folder's summary.md, which the CLI prints."""
    grid, s_max = results["grid"], results["s_max"]
    lines = []
    for source, res in results["summary"].items():
        head = " | ".join(f"NELBO S={s}" for s in grid)
        lines += [
            f"### source: {source}",
            "",
            f"| model | extra train FLOPs | {head} |",
            "|---|---|" + "---|" * len(grid),
        ]
        for name, per_s in res["final_nelbo"].items():
            label = "source (loopified, not fine-tuned)" if name == "source" else LABELS[name]
            fl = res["extra_flops"].get(name)
            lines.append(
                f"| {label} | {'-' if fl is None else format(fl['mean'], '.3e')} | "
                + " | ".join(fmt_spread(per_s[s]) for s in grid)
                + " |"
            )
        lines += [
            "",
            f"- does loopify + random-S fine-tuning beat fine-tuning as it is at equal FLOPs? "
            f"{answer(res, s_max)}",
            f"- (b) at S={s_max} beats (a) at its best S: {res['loopify_beats_finetune_best_s']} (per seed)",
            f"- S = 1 exactness of the loopified source (max relative logit difference): "
            f"{res['s1_max_rel_diff']}",
            "",
        ]
    lines.append(
        f"seeds: {results['seeds']}; training wall time {results['train_wall_s'] / 60:.1f} min summed over "
        f"runs (this call: {results['wall_s'] / 60:.1f} min)"
    )
    return "\n".join(lines) + "\n"
