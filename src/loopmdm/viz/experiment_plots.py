"""The experiments' figures (matplotlib, Agg backend, PNG). Each function takes the numbers it plots, as
written to the experiment's JSON, so a figure can be redrawn from results.json alone."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

COLORS = {"mdm": "tab:blue", "loopmdm": "tab:red", "deeper": "tab:green"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)


def plot_loss_vs_flops(
    per_seed: Mapping, labels: Mapping[str, str], path: str | Path, title: str = ""
) -> None:
    """Validation NELBO against cumulative training FLOPs, one line per run and seed; a dashed line marks
    the plain MDM's final NELBO (the target of the FLOPs ratio)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, res in enumerate(per_seed.values()):
        for name, run in res["runs"].items():
            c = run["curve"]
            ax.plot(
                c["flops"],
                c["nelbo"],
                color=COLORS.get(name),
                alpha=0.9 if i == 0 else 0.5,
                linestyle="-" if i == 0 else "--",
                marker=".",
                label=labels.get(name, name) if i == 0 else None,
            )
        target = res["runs"]["mdm"]["curve"]["nelbo"][-1]
        ax.axhline(target, color="gray", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training FLOPs")
    ax.set_ylabel("validation NELBO (nats / token)")
    ax.set_title(
        title + ("\nsolid: first seed, dashed: other seeds" if len(per_seed) > 1 else ""),
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_nelbo_vs_loops(summary: Mapping, s_max: int, path: str | Path) -> None:
    """LoopMDM's final NELBO against the inference loop count S (mean and seed spread), with (a) and (c)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    fin = summary["final_nelbo"]
    ss = sorted(int(s) for s in fin["loopmdm"])
    mean = [fin["loopmdm"][s]["mean"] for s in ss]
    std = [fin["loopmdm"][s]["std"] or 0.0 for s in ss]
    ax.errorbar(
        ss, mean, yerr=std, color=COLORS["loopmdm"], marker="o", capsize=3, label="(b) LoopMDM"
    )
    for name, label in (("mdm", "(a) MDM, same size"), ("deeper", "(c) deeper MDM")):
        v = fin[name][1]
        ax.axhline(v["mean"], color=COLORS[name], linestyle="--", label=label)
        if v["std"]:
            ax.axhspan(v["mean"] - v["std"], v["mean"] + v["std"], color=COLORS[name], alpha=0.1)
    ax.axvline(s_max, color="gray", linewidth=0.8, linestyle=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ss, [str(s) for s in ss])
    ax.set_xlabel("inference loop count S (dotted: training S_max)")
    ax.set_ylabel("final validation NELBO")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_ablation(rows: Mapping, s_max: int, path: str | Path) -> None:
    """Final validation NELBO at S = S_max of every ablation variant (plain MDM at S = 1), with seed spread."""
    plt = _plt()
    labels = list(rows)
    vals, errs = [], []
    for label in labels:
        f = rows[label]["final_nelbo"]
        key = s_max if s_max in f else 1
        vals.append(f[key]["mean"])
        errs.append(f[key]["std"] or 0.0)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.barh(
        range(len(labels)),
        vals,
        xerr=errs,
        color=["gray"] + ["tab:red"] * (len(labels) - 1),
        capsize=3,
    )
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    lo = min(v - e for v, e in zip(vals, errs))
    hi = max(v + e for v, e in zip(vals, errs))
    ax.set_xlim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    ax.set_xlabel(f"final validation NELBO (LoopMDM variants at S={s_max}; equal training FLOPs)")
    ax.grid(alpha=0.3, axis="x")
    _save(fig, path)


def _sudoku_cells(summary: Mapping, model: str, order: str) -> dict[tuple[int, int], dict]:
    """{(T, S): spread dicts} of one model and order from the experiment's summary ("order|T|S" keys)."""
    out = {}
    for key, cell in summary.get(model, {}).items():
        o, t, s = key.split("|")
        if o == order:
            out[(int(t), int(s))] = cell
    return out


def annotated_heatmap(ax, m: np.ndarray, xlabels: Sequence[str], ylabels: Sequence[str]) -> None:
    """An accuracy matrix m [rows, columns] in [0, 1] on ``ax``, each finite cell written in it (NaN left blank)."""
    ax.imshow(
        np.ma.masked_invalid(m), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, origin="lower"
    )
    ax.set_xticks(range(len(xlabels)), list(xlabels), fontsize=8)
    ax.set_yticks(range(len(ylabels)), list(ylabels), fontsize=8)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if m[i, j] < 0.5 else "black",
                )


def plot_sudoku_heatmap(summary: Mapping, order: str, path: str | Path) -> None:
    """Board accuracy over T denoising steps (columns; 0 = one cell per step) x S loops (rows), one panel per
    model, mean over seeds."""
    plt = _plt()
    models = [m for m in summary if _sudoku_cells(summary, m, order)]
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models) + 1, 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        cells = _sudoku_cells(summary, model, order)
        ts = sorted({t for t, _ in cells}, key=lambda t: (t == 0, t))
        ss = sorted({s for _, s in cells})
        m = np.array(
            [
                [cells.get((t, s), {}).get("board_accuracy", {}).get("mean", np.nan) for t in ts]
                for s in ss
            ],
            dtype=float,
        )
        annotated_heatmap(ax, m, [str(t) if t else "1/cell" for t in ts], [str(s) for s in ss])
        ax.set_xlabel("denoising steps T")
        ax.set_ylabel("loops S")
        ax.set_title(model, fontsize=9)
    fig.suptitle(f"Sudoku board accuracy ({order} order)", fontsize=10)
    _save(fig, path)


def plot_sudoku_vs_flops(summary: Mapping, path: str | Path) -> None:
    """Board accuracy against inference FLOPs per board: every (order, T, S) cell, one colour per model."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for model, cells in summary.items():
        pts = sorted(
            (c["flops_per_board"]["mean"], c["board_accuracy"]["mean"]) for c in cells.values()
        )
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            "o",
            alpha=0.8,
            color=COLORS.get(model),
            label=model,
        )
    ax.set_xscale("log")
    ax.set_xlabel("inference FLOPs per board")
    ax.set_ylabel("board accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_attention_heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
) -> None:
    """A heatmap of masked-to-masked attention shares (rows x columns), NaN cells left blank."""
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(
        figsize=(max(6.0, 1.2 + 0.7 * len(col_labels)), 1.2 + 0.32 * max(len(row_labels), 3))
    )
    im = ax.imshow(np.ma.masked_invalid(m), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(col_labels)), col_labels, fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(
                    j,
                    i,
                    f"{m[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if m[i, j] < 0.5 else "black",
                )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    _save(fig, path)


def plot_lines(
    xs: Sequence,
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
    reference: Optional[Mapping[str, float]] = None,
    log2x: bool = False,
) -> None:
    """Several named lines over the same x values; ``reference`` draws a dashed horizontal line per name."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    for i, (name, ys) in enumerate(series.items()):
        color = cmap(i / max(1, len(series) - 1))
        ax.plot(list(xs), list(ys), marker="o", color=color, label=name)
        if reference and name in reference:
            ax.axhline(reference[name], color=color, linestyle=":", linewidth=0.8)
    if log2x:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(xs), [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _gain_panel(
    ax, rows: Sequence[Mapping], trend: Optional[Mapping], key: str, title: str
) -> None:
    """One gain against the budget: every seed as a dot, the seed mean with its standard error (hollow where the
    budget is not past the plateau, so outside the fit), the fitted line over the fitted budgets (to the zero
    crossing when there is one) or the reason there is no fit."""
    for r in rows:
        past = (r.get("past_plateau") or {}).get(key, True)
        ys = [p[key] for p in r["per_seed"].values() if p.get(key) is not None]
        ax.plot(
            [r["budget"]] * len(ys), ys, "o", color=COLORS["loopmdm"], alpha=0.45 if past else 0.2
        )
        g = r[key]
        if g.get("mean") is None:
            continue
        err = g.get("sem") if g.get("sem") is not None else (g.get("std") or 0.0)
        ax.errorbar(
            [r["budget"]],
            [g["mean"]],
            yerr=[err],
            fmt="s",
            color="black",
            capsize=4,
            markerfacecolor="black" if past else "white",
        )
    if trend and trend.get("slope_per_decade") is not None:
        used = trend.get("budgets_used") or [r["budget"] for r in rows]
        lo, hi = min(used), max(max(used), trend.get("crossing_budget") or 0)
        xs = np.logspace(np.log10(lo), np.log10(hi * 1.2), 50)
        ci = trend.get("slope_interval_95")
        label = f"fit: {trend['slope_per_decade']:+.3f} per decade" + (
            f" (95% {ci[0]:+.3f} .. {ci[1]:+.3f})" if ci else ""
        )
        ax.plot(
            xs,
            trend["intercept"] + trend["slope_per_decade"] * np.log10(xs),
            "--",
            color="grey",
            label=label,
        )
        ax.legend(fontsize=7)
    elif trend:
        ax.text(
            0.02,
            0.97,
            trend.get("note") or "no trend",
            transform=ax.transAxes,
            fontsize=7,
            color="grey",
            va="top",
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs per run")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def plot_loop_gain(
    rows: Sequence[Mapping],
    trend: Mapping,
    path: str | Path,
    provenance: str = "",
    equal_steps_trend: Optional[Mapping] = None,
    flop_proportional_trend: Optional[Mapping] = None,
) -> None:
    """The loop gain against the budget, at equal training FLOPs NELBO(MDM) - NELBO(LoopMDM at S_max), (when the
    rows hold it and ``equal_steps_trend`` is given) at equal steps NELBO(MDM trained for LoopMDM's steps) -
    NELBO(LoopMDM), and (with ``flop_proportional_trend``) at equal FLOPs for LoopMDM trained with p(S)
    proportional to 1 / F(S): every seed as a dot, the seed mean with its standard error (hollow: on the unigram
    plateau, left out of the fit), the fitted line. ``provenance`` (corpus, data digest, versions) is printed
    under the figure, so that the figure says which corpus it came from."""
    plt = _plt()
    panels = [(trend, "gain_equal_flops", "equal FLOPs: NELBO(a) - NELBO(b, S_max)")]
    if equal_steps_trend is not None and all("gain_equal_steps" in r for r in rows):
        panels.append(
            (
                equal_steps_trend,
                "gain_equal_steps",
                "equal steps, same LR schedule: NELBO(a': MDM, b's steps) - NELBO(b, S_max)",
            )
        )
    key = "gain_equal_flops_flop_proportional"
    if flop_proportional_trend is not None and all(key in r for r in rows):
        panels.append(
            (
                flop_proportional_trend,
                key,
                "equal FLOPs, p(S) ~ 1 / F(S): NELBO(a) - NELBO(b', S_max)",
            )
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(1.0 + 5.5 * len(panels), 4.4), squeeze=False)
    for ax, (tr, k, title) in zip(axes[0], panels):
        _gain_panel(ax, rows, tr, k, title)
    axes[0][0].set_ylabel("loop gain (nats / token), > 0: looping wins")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0.045, 1, 1))
    foot = "filled squares: seed mean ± standard error, budget past the unigram plateau (in the fit); hollow: on it"
    fig.text(0.99, 0.008, foot, fontsize=6, color="dimgray", ha="right", va="bottom")
    if provenance:
        fig.text(0.01, 0.008, provenance, fontsize=6, color="dimgray", ha="left", va="bottom")
    fig.savefig(path, dpi=120)
    plt.close(fig)
