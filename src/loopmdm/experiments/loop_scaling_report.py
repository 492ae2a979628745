"""The loop-scaling study's numbers from its trained runs: per (budget, seed) the gains, plateau exits and curves
(``seed_point``), per budget their spread over seeds (``budget_rows``), the trend of a gain against log10 of the
budget with bootstrap intervals (``fit_trend``), and the markdown summary. ``experiments.loop_scaling`` trains the
runs; everything here is a function of their records."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .curves import Curve, flops_ratio, plateau_exit_step, spread
from .fixed_validation import paired_gain

EQUAL_STEPS = "mdm_at_b_steps"
EQUAL_STEPS_LABEL = "(a') MDM, same size, (b)'s steps (own schedule)"
# (b') LoopMDM with p(S) proportional to 1 / F(S), F(S) the training FLOPs of a step at S (looped-UDLM's
# FLOP-proportional sampling), trained to the same budget
FLOP_PROPORTIONAL = "loopmdm_flop_proportional"
# a trend that reaches zero only past 10^30 training FLOPs per run (beyond any run) counts as not crossing
CROSSING_MAX_LOG10 = 30.0
FLOP_PROPORTIONAL_LABEL = "(b') LoopMDM, p(S) proportional to 1 / F(S)"
#: the looped runs (scored at S = 1, S_max and 2 S_max)
LOOPED = ("loopmdm", FLOP_PROPORTIONAL)
#: how curve and final NELBO are evaluated; a run folder evaluated otherwise is refused (not silently mixed in)
EVAL_METHOD = "fixed-rows, per-batch SeedSequence([eval_seed, k]) noise, antithetic t, v1"
#: the gains: (key, the plain run, the looped run read at S_max); the plain run's NELBO minus the looped one's
GAINS = (
    ("gain_equal_flops", "mdm", "loopmdm"),
    ("gain_equal_steps", EQUAL_STEPS, "loopmdm"),
    ("gain_vs_deeper", "deeper", "loopmdm"),
    ("gain_equal_flops_flop_proportional", "mdm", FLOP_PROPORTIONAL),
)
#: the runs that must have left the plateau (every seed) for a budget to enter the trend of each gain
TREND_RUNS = {key: (plain, looped) for key, plain, looped in GAINS}
TREND_RULE = (
    "least squares of the gain against log10(budget) over every (budget, seed) point of the budgets at "
    "which, for every seed, both runs of the gain left the unigram plateau (first validation point at "
    "least plateau_margin nats below H); 95% bootstrap intervals resample the seeds within each budget"
)


def _curve_dict(c: Curve) -> dict:
    return {"step": c.steps, "flops": c.flops, "val_nelbo": c.nelbo}


def seed_point(runs: dict, s_max: int, plateau: float, margin: float = 0.25) -> dict:
    """The per-seed numbers of one budget from its trained runs (``final``: ``final_eval`` results): the gains
    of ``GAINS`` whose runs are there, each with its paired standard error, the FLOPs ratio of each looped run
    against (a), plateau exits and curves."""
    curves = {k: Curve(**v["curve"]) for k, v in runs.items()}
    fin = {k: v["final"] for k, v in runs.items()}
    gains = {}
    for key, plain, looped in GAINS:
        if looped in fin and plain in fin:
            gains[key], gains[key + "_stderr"] = paired_gain(fin[plain][1], fin[looped][s_max])
    looped_runs = [k for k in LOOPED if k in fin]
    exits = {k: plateau_exit_step(c, plateau, margin) for k, c in curves.items()}
    read = curves["mdm"].at_step(runs["loopmdm"]["steps"])
    return {
        **{k: fin[k][1]["nelbo"] for k in ("mdm", "deeper", EQUAL_STEPS)},
        **{k: {int(s): v["nelbo"] for s, v in fin[k].items()} for k in looped_runs},
        "final": {k: {int(s): v for s, v in f.items()} for k, f in fin.items()},
        **gains,
        "schedule_bias_curve_read": None if read is None else read - curves[EQUAL_STEPS].final,
        "flops_ratio": flops_ratio(curves["mdm"], curves["loopmdm"]),
        **(
            {"flops_ratio_flop_proportional": flops_ratio(curves["mdm"], curves[FLOP_PROPORTIONAL])}
            if FLOP_PROPORTIONAL in curves
            else {}
        ),
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
    *(key for key, _, _ in GAINS),
    "schedule_bias_curve_read",
    "flops_ratio",
    "flops_ratio_flop_proportional",
    "mdm_late_gain",
)


def budget_rows(cfg, plans: list, trained: dict, plateau: float) -> list[dict]:
    """Per budget: every seed's point, the mean / std / standard error over seeds of each number, and whether the
    budget is past the plateau for each gain (every seed's two runs of it left the plateau). ``cfg`` a
    ``LoopScalingConfig``, ``plans`` its ``MatchedPlan`` per budget, ``trained`` {(budget index, seed, run name):
    the run's record}."""
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
        first = points[seeds[0]]
        rows.append(
            {
                "budget": budget,
                "seeds": seeds,
                "per_seed": points,
                **{k: _with_sem([points[s][k] for s in seeds]) for k in ROW_KEYS if k in first},
                **{
                    name: {S: _with_sem([points[s][name][S] for s in seeds]) for S in first[name]}
                    for name in LOOPED
                    if name in first
                },
                "past_plateau": {
                    k: all(_past(p, needs) for p in points.values())
                    for k, needs in TREND_RUNS.items()
                    if k in first
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


def margin_sensitivity(
    rows: list[dict],
    plateau: float,
    margins: Sequence[float],
    bootstrap: int = 2000,
    seed: int = 0,
    key: str = "gain_equal_flops",
) -> dict:
    """``fit_trend`` of ``key`` again with other plateau margins: which budgets count as past the plateau (every
    run's first validation point <= ``plateau`` - margin, re-read from the stored curves) decides whether there
    is a trend at all, so the report shows how the fit moves with that choice. ``{margin: the fit's budgets,
    slope, interval, crossing and note}``."""

    def left(point: dict, margin: float) -> dict:  # each run's left_plateau at this margin
        return {
            name: plateau_exit_step(Curve(c["flops"], c["val_nelbo"], c["step"]), plateau, margin)
            is not None
            for name, c in point["curves"].items()
        }

    out = {}
    for margin in margins:
        moved = [
            {
                **r,
                "per_seed": {
                    s: {**p, "left_plateau": left(p, margin)} for s, p in r["per_seed"].items()
                },
            }
            for r in rows
        ]
        fit = fit_trend(moved, bootstrap, seed, key)
        out[f"{margin:g}"] = {
            k: fit[k]
            for k in (
                "budgets_used",
                "points",
                "slope_per_decade",
                "slope_interval_95",
                "crossing_budget",
                "note",
            )
        }
    return out


def _crossing(a: float, b: float, y: np.ndarray) -> Optional[float]:
    """log10 of the budget where a + b log10(B) = 0, when the trend heads there from the data's side and gets
    there below ``CROSSING_MAX_LOG10`` (a nearly flat trend crosses past any budget, even past float range)."""
    if b == 0 or not np.isfinite(b):
        return None
    x0 = -a / b
    heading = (np.mean(y) < 0 and b > 0) or (np.mean(y) > 0 and b < 0)
    return float(x0) if heading and x0 <= CROSSING_MAX_LOG10 else None


def _trend_lines(name: str, trend: dict) -> list[str]:
    if trend.get("slope_per_decade") is None:
        return [
            f"- {name}: {trend.get('note')} (budgets past the plateau: "
            f"{', '.join(f'{b:.3g}' for b in trend['budgets_used']) or 'none'})"
        ]
    ci, cross, cci = (
        trend.get("slope_interval_95"),
        trend.get("crossing_budget"),
        trend.get("crossing_interval_95"),
    )
    line = (
        f"- {name}: gain = {trend['intercept']:.3f} + {trend['slope_per_decade']:.3f} log10(B) over "
        f"{trend['points']} points at budgets {', '.join(f'{b:.3g}' for b in trend['budgets_used'])}"
        + (
            f" (excluded, on the plateau: {', '.join(f'{b:.3g}' for b in trend['budgets_excluded'])})"
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

    def ratio(sp):  # a mean over the seeds that reached (a)'s final NELBO: say how many did
        seeds = len(sp.get("values") or []) if sp else 0
        if sp is None or sp.get("mean") is None:
            return f"never (0 of {seeds})" if seeds else "n/a"
        return f(sp, 2) + (f" ({sp['n']} of {seeds} reached)" if sp["n"] < seeds else "")

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
            f"| {r['budget']:.3g} | {len(r['seeds'])} | {f(r['mdm'])} | {f(r[EQUAL_STEPS])} | "
            f"{f(lp.get(1))} | {f(lp.get(s_max))} | {f(lp.get(2 * s_max))} | {f(r['deeper'])} | "
            f"{f(r['gain_equal_flops'], sem=True)} | {f(r['gain_equal_steps'], sem=True)} | "
            f"{f(r['gain_vs_deeper'], sem=True)} | {exits(r, 'mdm')} / {exits(r, 'loopmdm')} | "
            f"{'yes' if pp['gain_equal_flops'] else 'no'} | {ratio(r['flops_ratio'])} | "
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
    if FLOP_PROPORTIONAL in rows[0]:
        lines += [
            f"{FLOP_PROPORTIONAL_LABEL}, the same budgets:",
            "",
            f"| budget | (a) MDM | (b') S=1 | S={s_max} | S={2 * s_max} | gain at equal FLOPs | left plateau at "
            "step (b', per seed) | FLOPs ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lp = r[FLOP_PROPORTIONAL]
            lines.append(
                f"| {r['budget']:.3g} | {f(r['mdm'])} | {f(lp.get(1))} | {f(lp.get(s_max))} | "
                f"{f(lp.get(2 * s_max))} | {f(r['gain_equal_flops_flop_proportional'], sem=True)} | "
                f"{exits(r, FLOP_PROPORTIONAL)} | {ratio(r['flops_ratio_flop_proportional'])} |"
            )
        lines.append("")
    lines += _trend_lines("trend at equal FLOPs", results["trend"])
    for margin, fit in (results.get("trend_margin_sensitivity") or {}).items():
        slope = fit["slope_per_decade"]
        lines.append(
            f"  - with plateau margin {margin} nats: "
            + (
                fit["note"]
                if slope is None
                else f"slope {slope:+.3f} nats per decade over budgets "
                f"{', '.join(f'{b:.3g}' for b in fit['budgets_used'])}"
            )
        )
    lines += _trend_lines("trend at equal steps", results["trend_equal_steps"])
    if results.get("trend_flop_proportional"):
        lines += _trend_lines(
            "trend at equal FLOPs, p(S) proportional to 1 / F(S)",
            results["trend_flop_proportional"],
        )
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
