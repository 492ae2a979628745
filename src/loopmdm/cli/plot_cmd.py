"""``loopmdm plot``: sweep JSON files from ``loopmdm eval --json`` -> one PNG (metric vs S, metric vs compute)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..viz.sweeps import load_sweep, plot_sweeps
from .app import app, info


@app.command()
def plot(
    sweeps: List[Path] = typer.Argument(
        ..., help="One or more JSON files written by `loopmdm eval --json`."
    ),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
    metric: Optional[str] = typer.Option(
        None,
        "--metric",
        help="nelbo | ppl | bits_per_byte | gen_ppl | entropy (default: the "
        "sweep's primary metric).",
    ),
) -> None:
    """Plot one or several loop sweeps on shared axes (each file is one line, labelled by its file name)."""
    path = plot_sweeps([load_sweep(p) for p in sweeps], out, metric)
    info(f"plot written to {path}")
