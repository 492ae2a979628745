"""The typed CLI application object; each subcommand lives in its own module and registers here."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

app = typer.Typer(
    name="loopmdm",
    help="Looped masked diffusion language models: train, sample, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain click help (no rich panels, which cut long option names at 80 columns when stdout is not a terminal),
    # wrapped to the terminal's width up to 120 columns.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)


def emit_json(obj: Any) -> None:
    """Print one JSON object on stdout (``--json``), nothing else."""
    sys.stdout.write(json.dumps(obj, default=float) + "\n")
    sys.stdout.flush()


def info(msg: str) -> None:
    """Human-readable progress goes to stderr so that stdout stays clean for ``--json``."""
    typer.echo(msg, err=True)
