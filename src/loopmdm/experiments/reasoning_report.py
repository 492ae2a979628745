"""The reasoning study's report: per-model cells pooled over seeds (``summarise``), the pre-registered checks,
the FLOPs ratio read from the validation exact-match curves, and ``summary.md``'s tables."""

from __future__ import annotations

import json

import numpy as np

from ..eval.sudoku import wilson_interval
from .common import pool_over_seeds
from .curves import Curve, flops_ratio, spread


def summarise(per_seed: dict) -> dict:
    """``{model: {"T|S|group": {accuracy: spread over seeds, ...}}}``."""
    pooled = pool_over_seeds(per_seed, list(per_seed), ("steps", "loops", "group"))
    return {
        model: {
            k: {
                "accuracy": spread([r["accuracy"] for r in rs]),
                "correct": sum(r["correct"] for r in rs),
                "n": sum(r["n"] for r in rs),
                "flops_per_problem": spread([r["flops_per_problem"] for r in rs]),
                "majority_baseline": rs[0]["majority_baseline"],
                "heuristic_baseline": rs[0]["heuristic_baseline"],
            }
            for k, rs in cells.items()
        }
        for model, cells in pooled.items()
    }


def accuracy_flops_ratios(per_seed: dict, reference: str = "mdm") -> dict:
    """The paper's FLOPs ratio on validation exact match, per looped model: FLOPs the ``reference`` (the plain MDM)
    needs to reach its own final accuracy / FLOPs the looped model needs to reach it, read from the runs'
    ``exact_match_curve`` (linear between logged points), as a spread over the seeds that have both curves
    (``values`` has None where the looped model never reached it; ``n`` counts those that did, ``seeds`` all)."""
    out: dict = {}
    for model in per_seed[next(iter(per_seed))]:
        if not model.startswith("loopmdm"):
            continue
        ratios = []
        for runs in per_seed.values():
            ref, cand = (runs.get(m, {}).get("exact_match_curve") for m in (reference, model))
            if not (ref and cand and ref["exact_match"] and cand["exact_match"]):
                continue
            error = [Curve(c["flops"], [1.0 - a for a in c["exact_match"]]) for c in (ref, cand)]
            ratios.append(flops_ratio(*error))
        if ratios:
            out[model] = {**spread(ratios), "seeds": len(ratios)}
    return out


def equal_steps(per_seed: dict, reference: str = "mdm") -> dict:
    """Each other model against the ``reference`` at EQUAL OPTIMIZER STEPS: the model's last validation point
    (its final step n) and the reference's validation curve read at step n (linear between logged steps), for
    the validation NELBO and exact match, as spreads over the seeds that have both. A model that takes fewer,
    costlier steps (LoopMDM, the deeper MDM) is thus compared with the plain MDM at the same number of updates,
    beside the equal-FLOPs comparison of the test tables. A seed whose reference curve does not reach step n (a
    model with more steps than the plain MDM, e.g. ``mdm-long``) is left out."""
    out: dict = {}
    for model in per_seed[next(iter(per_seed))]:
        if model == reference:
            continue
        rows: dict[str, list[float]] = {}
        for runs in per_seed.values():
            ref, cand = (runs.get(m, {}) for m in (reference, model))
            for key, curve, field in (
                ("nelbo", "curve", "nelbo"),
                ("exact_match", "exact_match_curve", "exact_match"),
            ):
                a, b = ref.get(curve), cand.get(curve)
                if not (a and b and a.get("steps") and b.get("steps") and b[field]):
                    continue
                n = b["steps"][-1]
                if not a["steps"][0] <= n <= a["steps"][-1]:
                    continue  # the reference never reached step n: no reading (not its last value)
                rows.setdefault(f"{key}_{model}", []).append(b[field][-1])
                rows.setdefault(f"{key}_{reference}", []).append(
                    float(np.interp(n, a["steps"], a[field]))
                )
                if key == "nelbo":
                    rows.setdefault("steps", []).append(n)
        if rows:
            out[model] = {k: spread(v) for k, v in rows.items()}
    return out


def trained_steps(entry: dict) -> str:
    """The steps of every model the comparison trained (the plan's three, then its controls, e.g. the
    deep-supervised LoopMDM at (a)'s FLOPs), as ``name steps`` pairs."""
    steps = {r["name"]: r["steps"] for r in entry["plan"]["runs"]}
    for runs in entry.get("per_seed", {}).values():
        steps |= {m: r["steps"] for m, r in runs.items() if m not in steps and "steps" in r}
    return ", ".join(f"{m} {n}" for m, n in steps.items())


def equal_steps_lines(equal: dict) -> list[str]:
    """``equal_steps``' numbers as one markdown line per model (means over seeds)."""
    lines = []
    for m, r in equal.items():
        if "nelbo_mdm" not in r:
            continue
        line = (
            f"- at equal optimizer steps (validation, {m}'s last point against the plain MDM's curve at that "
            f"step): NELBO {m} {r['nelbo_' + m]['mean']:.3f} vs mdm {r['nelbo_mdm']['mean']:.3f}"
        )
        if "exact_match_mdm" in r:
            line += (
                f", exact match {m} {r['exact_match_' + m]['mean']:.3f} vs mdm "
                f"{r['exact_match_mdm']['mean']:.3f}"
            )
        lines.append(line + f" (mean of {r['nelbo_mdm']['n']} seeds)")
    return lines


def run_outcome(info: dict, T: int, s_max: int) -> dict:
    """One finished run in a few numbers: its optimizer steps, the validation NELBO and exact match at its last
    evaluation (None where the run kept no such curve) and test exact match over all rows at ``T`` and the
    largest scored S <= ``s_max`` (``test_loops``)."""
    cells = [r for r in info["scores"] if r["steps"] == T and r["group"] == "all"]
    cell = max((r for r in cells if r["loops"] <= s_max), key=lambda r: r["loops"])

    def last(curve: dict | None, field: str):
        values = (curve or {}).get(field) or []
        return values[-1] if values else None

    return {
        "steps": info["steps"],
        "val_nelbo": last(info.get("curve"), "nelbo"),
        "val_exact_match": last(info.get("exact_match_curve"), "exact_match"),
        "test_loops": cell["loops"],
        "test_exact_match": cell["accuracy"],
    }


def runs_table(runs: dict, T: int) -> list[str]:
    """``run_outcome`` of every finished run, complete seeds or not, as one row per model and one column per seed:
    whether each run learned at all, which the pooled tables hide when seeds split between runs that left the
    loss plateau and runs that stayed on it."""
    seeds = list(runs)
    models = list(dict.fromkeys(m for per_model in runs.values() for m in per_model))
    lines = [
        "",
        f"Every finished run: validation NELBO at its last step / test exact match % at T = {T} and S_max "
        "(all rows):",
        "",
        "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for model in models:
        cells = []
        for s in seeds:
            r = runs[s].get(model)
            nelbo = "-" if r is None or r["val_nelbo"] is None else f"{r['val_nelbo']:.3f}"
            cells.append("-" if r is None else f"{nelbo} / {100 * r['test_exact_match']:.1f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def inference_frontier(cells: dict) -> list[dict]:
    """One model's (T, S) cells over all test rows (``summarise``'s) that no cheaper cell of the same model beats:
    pooled exact match against network FLOPs per problem (mean over seeds), sorted by FLOPs. Where compute is
    best spent at inference, steps T or loops S."""
    points = sorted(
        (c["flops_per_problem"]["mean"], -c["correct"] / c["n"], key)
        for key, c in cells.items()
        if key.endswith("|all")
    )
    out: list[dict] = []
    for flops, neg_acc, key in points:
        if not out or -neg_acc > out[-1]["accuracy"]:
            T, S, _ = key.split("|")
            out.append(
                {"steps": int(T), "loops": int(S), "flops_per_problem": flops, "accuracy": -neg_acc}
            )
    return out


def frontier_table(summary: dict) -> list[str]:
    """Markdown rows: per model, its ``inference_frontier`` as T / S: MFLOPs per problem -> exact match."""
    lines = [
        "",
        "Exact match against inference FLOPs (all test rows, pooled): each model's (T, S) cells that no cheaper cell",
        "of the same model beats, as T / S: MFLOPs per problem -> %:",
        "",
        "| model | frontier |",
        "|---|---|",
    ]
    for model, cells in summary.items():
        cells_text = " · ".join(
            f"{p['steps'] or '1/token'} / {p['loops']}: {p['flops_per_problem'] / 1e6:.0f} -> "
            f"{100 * p['accuracy']:.1f}"
            for p in inference_frontier(cells)
        )
        lines.append(f"| {model} | {cells_text} |")
    return lines


def checks(
    summary: dict, cfg, trained_levels: list[int], looped: str = "loopmdm", plain: str = "mdm"
) -> dict:
    """The issue's targets, read off the pooled counts (Wilson intervals over seeds x rows): at T <= 2, LoopMDM at
    S_max above the plain MDM by a margin outside both 95% intervals, and within 5 points of the deeper MDM; out of
    distribution, accuracy at S = 2-4 x S_max above S_max on levels harder than trained. The pre-registered
    targets name ``looped="loopmdm"`` and ``plain="mdm"``; ``MORE_CHECKS`` apply them to other pairs."""

    def pooled(model, T, S, g):
        c = summary.get(model, {}).get(f"{T}|{S}|{g}")
        return None if c is None else (c["correct"] / c["n"], wilson_interval(c["correct"], c["n"]))

    out = {}
    for T in (t for t in cfg.steps if 0 < t <= 2):
        loop, base, deep = (
            pooled(looped, T, cfg.s_max, "all"),
            pooled(plain, T, 1, "all"),
            pooled("deeper", T, 1, "all"),
        )
        if loop and base:
            out[f"T={T}: {looped} beats {plain} outside 95% intervals"] = loop[1][0] > base[1][1]
        if loop and deep:
            out[f"T={T}: {looped} within 5 points of deeper"] = loop[0] >= deep[0] - 0.05
        # levels harder than trained (none known: a task without train_levels gets no such check)
        top = max(trained_levels, default=None)
        harder = sorted(
            {
                int(k.split("|")[2])
                for k in summary.get(looped, {})
                if top is not None and k.split("|")[2] != "all" and int(k.split("|")[2]) > top
            }
        )
        for g in harder:
            at = pooled(looped, T, cfg.s_max, g)
            more = [
                pooled(looped, T, s, g) for s in cfg.loops if 2 * cfg.s_max <= s <= 4 * cfg.s_max
            ]
            if at and any(more):
                out[f"T={T}, level {g}: more loops than S_max help"] = (
                    max(m[0] for m in more if m) > at[0]
                )
    return out


def _pooled(cell: dict) -> str:
    """Exact match pooled over seeds x rows, its 95% Wilson interval and the per-seed range, in percent."""
    lo, hi = wilson_interval(cell["correct"], cell["n"])
    acc = cell["accuracy"]
    return (
        f"{100 * cell['correct'] / cell['n']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] "
        f"({100 * acc['min']:.0f}-{100 * acc['max']:.0f})"
    )


def accuracy_table(summary: dict, steps: list[int]) -> list[str]:
    """Markdown rows: per model and S, exact match at each T over all test rows (``_pooled``)."""
    lines = [
        "",
        "Exact match, % pooled over seeds [95% Wilson] (per-seed range):",
        "",
        "| model | S | " + " | ".join(f"T={t}" if t else "1/token" for t in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for model, cells in summary.items():
        for S in sorted({int(k.split("|")[1]) for k in cells}):
            vals = [cells.get(f"{t}|{S}|all") for t in steps]
            row = " | ".join("-" if v is None else _pooled(v) for v in vals)
            lines.append(f"| {model} | {S} | {row} |")
    return lines


def level_table(summary: dict, cfg: dict, T: int) -> list[str]:
    """Markdown rows: exact match (% pooled over seeds) per level at T, each model at its training S (S_max for the
    looped ones, 1 for the plain ones)."""
    levels = sorted(
        {int(k.split("|")[2]) for c in summary.values() for k in c if k.split("|")[2] != "all"}
    )
    lines = [
        "",
        f"By level at T = {T} (%):",
        "",
        "| model | S | " + " | ".join(map(str, levels)) + " |",
    ]
    lines.append("|---|---|" + "---|" * len(levels))
    for model, cells in summary.items():
        S = cfg["s_max"] if model.startswith("loopmdm") else 1
        vals = [cells.get(f"{T}|{S}|{g}") for g in levels]
        row = " | ".join("-" if v is None else f"{100 * v['correct'] / v['n']:.0f}" for v in vals)
        lines.append(f"| {model} | {S} | {row} |")
    return lines


def policy_table(per_seed: dict) -> list[str]:
    """Markdown rows: where the adaptive loop policies (``converge``, ``per_token``) spend loops, per looped model,
    policy and T: mean S (per position of the window) and exact match (% pooled over seeds) at each level. The
    question of the study: do they spend more loops on harder problems?"""
    pooled: dict = {}
    for runs in per_seed.values():
        for model, run in runs.items():
            for r in run.get("policies") or []:
                key = (model, r["policy"], r["steps"])
                cell = pooled.setdefault(key, {}).setdefault(r["group"], [0.0, 0, 0])
                cell[0] += r["mean_loops"] * r["n"]
                cell[1] += r["correct"]
                cell[2] += r["n"]
    if not pooled:
        return []
    levels = sorted({g for cells in pooled.values() for g in cells})
    lines = [
        "",
        "Loop policies (cap and threshold in the config): mean S (mid-block updates per position of the window, "
        "prompt and padding included, per network pass), exact match %, per level:",
        "",
        "| model | policy | T | " + " | ".join(map(str, levels)) + " |",
        "|---|---|---|" + "---|" * len(levels),
    ]
    for (model, policy, T), cells in pooled.items():
        row = " | ".join(
            f"{c[0] / c[2]:.1f} ({100 * c[1] / c[2]:.0f})" if (c := cells.get(g)) else "-"
            for g in levels
        )
        lines.append(f"| {model} | {policy} | {'1/token' if T == 0 else T} | {row} |")
    return lines


def summary_markdown(results: dict) -> str:
    """Per task: the calibration, then exact match per model and S at each T (all rows), per level, and the
    checks."""
    cfg = results["config"]
    left_out = results.get("tasks_left_out")
    lines = [f"Tasks not in this report: {', '.join(left_out)}.", ""] if left_out else []
    for name, entry in results["tasks"].items():
        cal = entry["calibration"]
        lines += [
            f"## {name}",
            "",
            f"Calibration (plain MDM, validation, {cal['level_field']} = {cal['level']}, "
            f"T = {cal['t']}, target {cal['target']:.0%}):",
        ]
        lines += [
            f"- {c['shape']}: {c['accuracy']:.3f} [{c['accuracy_ci'][0]:.3f}, {c['accuracy_ci'][1]:.3f}] "
            f"(n = {c['n']}, {c['wall_s'] / 60:.1f} min)"
            for c in cal["tried"]
        ]
        if cal["chosen"] is None:
            still = cal.get("complete") is False
            lines += [
                "- calibration still under way"
                if still
                else "- no candidate reached the target: no comparison",
                "",
            ]
            continue
        partial = entry.get("seeds_partial") or {}
        if partial:
            lines += [
                "",
                f"Interim: seeds {entry['seeds_complete'] or 'none'} have every model trained and scored; "
                + "; ".join(
                    f"seed {seed}: {', '.join(done) or 'nothing'} finished"
                    for seed, done in partial.items()
                ),
            ]
        first_t = min((t for t in cfg["steps"] if t > 0), default=0)
        if entry.get("runs"):
            lines += runs_table(entry["runs"], first_t)
        if "summary" not in entry:
            lines.append("")
            continue
        lines += accuracy_table(entry["summary"], cfg["steps"])
        lines += level_table(entry["summary"], cfg, first_t)
        lines += frontier_table(entry["summary"])
        lines += policy_table(entry["per_seed"])
        lines += [
            "",
            "- steps at equal training FLOPs: " + trained_steps(entry),
            *(
                f"- FLOPs ratio to the plain MDM on validation exact match (T = {cfg['calibration_t']}), {m}: "
                + (
                    "never reached"
                    if r["mean"] is None
                    else f"{r['mean']:.2f} (range {r['min']:.2f}-{r['max']:.2f})"
                )
                + f", reached on {r['n']} of {r['seeds']} seeds"
                for m, r in entry.get("flops_ratio", {}).items()
            ),
            *equal_steps_lines(entry.get("equal_steps", {})),
            f"- checks: {json.dumps(entry['checks'])}",
            *(
                f"- the same checks, {pair}: {json.dumps(c)}"
                for pair, c in entry.get("checks_more", {}).items()
            ),
            "",
        ]
    return "\n".join(lines) + "\n"
