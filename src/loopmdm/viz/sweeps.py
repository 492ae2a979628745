"""Sweep JSON (``loopmdm eval --json``) -> PNG: the metric against the loop count S and against compute.

Two panels: metric vs S, and metric vs forward GFLOPs per token (NELBO metrics: ``flops_per_token``) or
per sample (gen-PPL: ``flops_per_sample``). Error bars are the Monte-Carlo standard errors when present.
Several sweeps (e.g. LoopMDM and its same-size baseline) share the axes, one line each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError, DataError

#: metric key -> (axis label, compute key, compute label)
PRIMARY = {
    "nelbo": ("NELBO (nats / token)", "flops_per_token", "forward GFLOPs / token"),
    "ppl": ("perplexity bound exp(NELBO)", "flops_per_token", "forward GFLOPs / token"),
    "bits_per_byte": ("bits / byte", "flops_per_token", "forward GFLOPs / token"),
    "gen_ppl": ("generative perplexity", "flops_per_sample", "sampling GFLOPs / sample"),
    "entropy": ("unigram entropy (nats)", "flops_per_sample", "sampling GFLOPs / sample"),
}


def load_sweep(path: str | Path) -> dict:
    """Read one sweep JSON written by ``loopmdm eval --json`` (an object with a ``results`` list)."""
    p = Path(path).expanduser()
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"sweep file {str(p)!r} does not exist; write one with `loopmdm eval --json > FILE`"
        ) from None
    # RecursionError: nested too deeply
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise DataError(
            f"sweep file {str(p)!r} is not JSON; write one with `loopmdm eval --json > FILE`"
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("results"), list) or not obj["results"]:
        raise DataError(
            f"sweep file {str(p)!r} has no 'results' list; write one with `loopmdm eval --json`"
        )
    if obj.get("primary") is not None and not isinstance(obj["primary"], str):
        raise DataError(
            f"sweep file {str(p)!r}: 'primary' must name a metric; write one with `loopmdm eval --json`"
        )
    for i, row in enumerate(obj["results"]):
        problem = _row_problem(row)
        if problem:
            raise DataError(
                f"sweep file {str(p)!r}: results[{i}] {problem}; write one with `loopmdm eval --json`"
            )
    obj.setdefault("label", p.stem)
    return obj


# the values a plot reads, besides S
NUMBERS = {*PRIMARY, *(v[1] for v in PRIMARY.values()), "stderr"}


def _row_problem(row) -> Optional[str]:
    """Why a result row cannot be plotted (a sweep file edited by hand or damaged), or None."""
    if not isinstance(row, dict):
        return "is not an object"
    loops = row.get("loops")
    if loops is not None and (isinstance(loops, bool) or not isinstance(loops, int)):
        return f"has loops={str(loops)[:20]!r}, not an integer"
    for key in NUMBERS:
        v = row.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"has {key}={str(v)[:20]!r}, not a number"
    if isinstance(row.get("stderr"), (int, float)) and row["stderr"] < 0:
        return f"has stderr={row['stderr']}, a negative standard error"
    return None


def plot_sweeps(sweeps: Sequence[dict], out: str | Path, metric: Optional[str] = None) -> Path:
    """Draw ``metric`` (default: each sweep's ``primary``) vs S and vs compute for every sweep into ``out`` (PNG)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "plots need matplotlib: pip install matplotlib (or the loopmdm [eval] extra)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not sweeps:
        raise DataError("no sweeps to plot")
    out = Path(out).expanduser()
    if out.suffix.lower() != ".png":
        raise ConfigError(f"plot file {str(out)!r} must end in .png")
    metric = metric or sweeps[0].get("primary", "nelbo")
    if metric not in PRIMARY:
        raise ConfigError(f"cannot plot metric {metric!r}; choose one of: {', '.join(PRIMARY)}")
    fig, (ax_s, ax_c) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    try:
        _draw(fig, ax_s, ax_c, sweeps, out, metric)
    # values matplotlib cannot lay out (1e308, S = 2**70, ...)
    except (ValueError, OverflowError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:100]
        raise DataError(
            f"the sweep values cannot be drawn ({first}); check the files' loops and {metric} values "
            "for extreme numbers"
        ) from None
    finally:
        plt.close(fig)  # also when a sweep cannot be drawn: no figure is left open
    return out


def _draw(fig, ax_s, ax_c, sweeps: Sequence[dict], out: Path, metric: str) -> None:
    ylabel, ckey, clabel = PRIMARY[metric]
    drawn = 0
    for sw in sweeps:
        rows = sorted(
            (r for r in sw["results"] if r.get("loops") is not None and r.get(metric) is not None),
            key=lambda r: r["loops"],
        )
        if not rows:
            continue
        label = sw.get("label") or sw.get("checkpoint") or "run"
        S = [r["loops"] for r in rows]
        y = [r[metric] for r in rows]
        err = [r.get("stderr") or 0.0 for r in rows] if metric == "nelbo" else None
        ax_s.errorbar(S, y, yerr=err, marker="o", capsize=3, label=label)
        if all(r.get(ckey) is not None for r in rows):
            ax_c.errorbar(
                [r[ckey] / 1e9 for r in rows], y, yerr=err, marker="o", capsize=3, label=label
            )
            for r, yi in zip(rows, y):
                ax_c.annotate(
                    f"S={r['loops']}",
                    (r[ckey] / 1e9, yi),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        drawn += 1
    if not drawn:
        raise DataError(
            f"no sweep has per-S values of {metric!r} to plot (a --samples gen-ppl run has no S)"
        )
    from matplotlib.ticker import MaxNLocator

    ax_s.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_s.set_xlabel("loops S")
    ax_c.set_xlabel(clabel)
    for ax in (ax_s, ax_c):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_s.set_title(f"{ylabel} vs S")
    ax_c.set_title(f"{ylabel} vs compute")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
