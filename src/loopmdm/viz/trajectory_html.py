"""Self-contained HTML export of a sampling trajectory (no server, no network: CSS, JS and data inlined).

The page is the browser viewer's renderer (``loopmdm/viz/static/viewer.js``) fed with all denoising steps
at once: tokens coloured by the step t_k at which they were revealed, hover for the SUBS confidence and the
loops S spent on them, a slider to replay steps 1..T, loops per step and cumulative FLOPs, the compute report.

``write_trajectory(output, tokenizer, path)`` picks the format from the suffix: ``.html`` here, ``.png`` /
``.svg`` / ``.pdf`` (a strip of frames) or ``.gif`` (an animation) via :mod:`loopmdm.viz.trajectory_figure`.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError
from .assets import read_asset
from .events import EventEncoder, PieceTable, cumulative_flops, loops_value
from .snapshots import require_trajectory, step_snapshots
from .trajectory_figure import write_trajectory_figure

FIGURE_SUFFIXES = (".png", ".svg", ".pdf", ".gif")


def viewer_data(output, tokenizer, *, meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """``{start, steps, done}``: the events the live viewer would have received for this generation.

    meta: optional extra facts shown in the page (e.g. ``{"model": {"s_max": 12}, "request": {...}}``)."""
    traj = require_trajectory(output)
    encoder = EventEncoder(tokenizer, PieceTable(tokenizer))
    snaps = step_snapshots(output, tokenizer.mask_id)
    meta = dict(meta or {})
    start = encoder.start(
        total_steps=len(snaps),
        request=meta.get("request", {}),
        model_info=meta.get("model", {}),
        given=traj.reveal_step.cpu() == -1,
    )
    cum_flops = cumulative_flops(traj, output.report)
    steps = []
    for k, snap in enumerate(snaps):
        info = _Step(
            step=k,
            total_steps=len(snaps),
            tokens=snap,
            revealed=snap != tokenizer.mask_id,
            loops=traj.loops_per_step[k] if k < len(traj.loops_per_step) else 0,
            flops_so_far=cum_flops[k] if k < len(cum_flops) else float("nan"),
        )
        steps.append(encoder.step(info, elapsed_s=0.0))
    return {"start": start, "steps": steps, "done": encoder.done(output)}


class _Step:
    """The fields of a ``StepInfo`` (built here from a recorded trajectory)."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


def _json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">`` (no ``</script>``, ``<!--``)."""
    return (
        json.dumps(data, separators=(",", ":"), allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


def _summary(output, data: dict[str, Any]) -> str:
    rep = data["done"]["report"]
    lps = [loops_value(x) for x in require_trajectory(output).loops_per_step]
    n, length = output.tokens.shape
    parts = [
        f"{n} sample{'s' if n > 1 else ''} × {length} tokens",
        f"T = {len(data['steps'])} steps",
        f"mean S = {sum(lps) / max(len(lps), 1):.2f} loops/step",
        f"{rep.get('network_calls', '?')} network calls",
    ]
    req = data["start"].get("request") or {}
    parts += [f"{k} = {req[k]}" for k in ("sampler", "policy") if req.get(k)]
    return " · ".join(parts)


def render_trajectory_html(
    output,
    tokenizer,
    *,
    title: str = "LoopMDM denoising trajectory",
    meta: Optional[dict[str, Any]] = None,
) -> str:
    """One HTML document (CSS, JS and data inlined) replaying ``output``'s trajectory."""
    data = viewer_data(output, tokenizer, meta=meta)
    return TEMPLATE.format(
        title=html.escape(title),
        summary=html.escape(_summary(output, data)),
        css=read_asset("viewer.css"),
        js=read_asset("viewer.js"),
        data=_json_for_script(data),
    )


def write_trajectory_html(
    output,
    tokenizer,
    path: str | Path,
    *,
    title: str = "LoopMDM denoising trajectory",
    meta: Optional[dict[str, Any]] = None,
) -> Path:
    """Write the self-contained HTML replay of ``output`` (a ``SampleOutput`` with a trajectory) to ``path``."""
    path = Path(path)
    text = render_trajectory_html(output, tokenizer, title=title, meta=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_trajectory(
    output,
    tokenizer,
    path: str | Path,
    *,
    meta: Optional[dict[str, Any]] = None,
    tag: Optional[str] = None,
) -> Path:
    """Write the trajectory as ``.html`` (interactive) or ``.png/.svg/.pdf`` (frame strip) / ``.gif`` (animation).

    tag: inserted before the suffix (``out.html`` -> ``out.S4.html``), for one file per run of a sweep."""
    path = Path(path)
    if tag:
        path = path.with_name(f"{path.stem}.{tag}{path.suffix}")
    check_trajectory_path(path)
    if path.suffix.lower() in (".html", ".htm"):
        return write_trajectory_html(output, tokenizer, path, meta=meta)
    return write_trajectory_figure(output, tokenizer, path)


def check_trajectory_path(path: str | Path) -> Path:
    """A one-line ``ConfigError`` for a ``--trajectory`` path of an unknown format or in a place that cannot be
    written, so that ``sample`` can check it before generating (no samples are thrown away)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", *FIGURE_SUFFIXES):
        raise ConfigError(
            f"--trajectory {str(path)!r}: unknown format {suffix or '(none)'!r}; "
            f"use .html or one of {', '.join(FIGURE_SUFFIXES)}"
        )
    if path.is_dir():
        raise ConfigError(
            f"--trajectory {str(path)!r} is a folder; give a file name such as out.html"
        )
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(
            f"--trajectory {str(path)!r} cannot be written ({str(parent)!r} is not a writable "
            "folder); choose another path"
        )
    return path


TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="loopmdm">
<title>{title}</title>
<style>
{css}
.lv-export {{ max-width: 1100px; margin: 0 auto; padding: 16px 20px; }}
</style>
</head>
<body>
<header class="lv-header"><h1>{title}</h1><span class="lv-sub">{summary}</span></header>
<main class="lv-export"><div id="viewer"></div></main>
<div class="lv-tooltip"></div>
<script type="application/json" id="lv-data">{data}</script>
<script>
{js}
</script>
<script>
const data = JSON.parse(document.getElementById("lv-data").textContent);
new LoopViewer.Viewer(document.getElementById("viewer")).load(data);
document.body.dataset.ready = "1";
</script>
</body>
</html>
"""
