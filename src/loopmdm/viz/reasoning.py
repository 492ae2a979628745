"""Figures of exact-match accuracy (``loopmdm eval --metric exact-match --plot``, ``experiment reasoning``):
a T x S heatmap over all rows, and accuracy against the difficulty level (``--group-by``) at each S, with the
baselines. Each takes the records the evaluation writes (one per order, T, S, group)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .experiment_plots import _plt, _save, annotated_heatmap


def _t_label(t: int) -> str:
    return str(t) if t else "1/token"


def heatmap(ax, records: Sequence[Mapping], title: str) -> None:
    """Accuracy of the ``all`` group over T (columns) x S (rows) on ``ax``."""
    cells = {(r["steps"], r["loops"]): r["accuracy"] for r in records if r["group"] == "all"}
    ts = sorted({t for t, _ in cells}, key=lambda t: (t == 0, t))
    ss = sorted({s for _, s in cells})
    m = np.array([[cells.get((t, s), np.nan) for t in ts] for s in ss], dtype=float)
    annotated_heatmap(ax, m, [_t_label(t) for t in ts], [str(s) for s in ss])
    ax.set_xlabel("denoising steps T")
    ax.set_ylabel("loops S")
    ax.set_title(title, fontsize=9)


def by_level(ax, records: Sequence[Mapping], steps: int, title: str) -> None:
    """Accuracy (95% interval) against the group level at T = ``steps``, one line per S, baselines dashed."""
    rows = [r for r in records if r["group"] != "all" and r["steps"] == steps]
    if not rows:
        ax.set_axis_off()
        return
    levels = sorted({r["group"] for r in rows})
    for s in sorted({r["loops"] for r in rows}):
        pts = sorted(
            (r["group"], r["accuracy"], *r["accuracy_ci"]) for r in rows if r["loops"] == s
        )
        x, y = [p[0] for p in pts], np.array([p[1] for p in pts])
        err = np.abs(np.array([[p[2] for p in pts], [p[3] for p in pts]]) - y)
        ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=f"S={s}")
    first = {r["group"]: r for r in rows}
    ax.plot(levels, [first[g]["majority_baseline"] for g in levels], "k--", lw=1, label="majority")
    if all(first[g]["heuristic_baseline"] is not None for g in levels):
        ax.plot(
            levels, [first[g]["heuristic_baseline"] for g in levels], "k:", lw=1, label="heuristic"
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(levels)
    ax.set_xlabel(rows[0].get("group_by") or "level")
    ax.set_ylabel(f"exact match (T={_t_label(steps)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)


def plot_exact_match(records: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """Heatmap over T x S (the first order), and accuracy by level at the smallest T, side by side."""
    plt = _plt()
    order = records[0]["order"]
    recs = [r for r in records if r["order"] == order]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    heatmap(axes[0], recs, f"{title} exact match, {order} order".strip())
    t_min = min((r["steps"] for r in recs), key=lambda t: (t == 0, t))
    by_level(axes[1], recs, t_min, "by level")
    _save(fig, path)
    return Path(path)


def plot_accuracy_vs_flops(per_seed: Mapping, path: str | Path, title: str = "") -> Path:
    """Validation exact match against cumulative training FLOPs (``exact_match_curve`` of each run), one colour
    per model and one line per seed: where the FLOPs ratio is read."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    colours = {}
    for runs in per_seed.values():
        for model, info in runs.items():
            curve = info.get("exact_match_curve") or {}
            if not curve.get("exact_match"):
                continue
            first = model not in colours
            colours.setdefault(model, f"C{len(colours)}")
            ax.plot(
                curve["flops"],
                curve["exact_match"],
                marker="o",
                ms=3,
                color=colours[model],
                label=model if first else None,
            )
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation exact match")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if colours:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    _save(fig, path)
    return Path(path)


def plot_accuracy_vs_inference_flops(
    summary: Mapping, frontiers: Mapping, path: str | Path, title: str = ""
) -> Path:
    """Test exact match (pooled over seeds, all rows) against network FLOPs per problem: every (T, S) cell of each
    model in ``summary`` as a dot, the model's ``frontiers`` (its cells that no cheaper one beats,
    ``experiments.reasoning_report.inference_frontier``) joined by a line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (model, cells) in enumerate(summary.items()):
        every = [c for k, c in cells.items() if k.endswith("|all")]
        ax.scatter(
            [c["flops_per_problem"]["mean"] for c in every],
            [c["correct"] / c["n"] for c in every],
            s=8,
            alpha=0.35,
            color=f"C{i}",
        )
        front = frontiers[model]
        ax.plot(
            [p["flops_per_problem"] for p in front],
            [p["accuracy"] for p in front],
            marker="o",
            ms=3,
            color=f"C{i}",
            label=model,
        )
    ax.set_xscale("log")
    ax.set_xlabel("inference FLOPs per problem")
    ax.set_ylabel("test exact match")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    _save(fig, path)
    return Path(path)
