"""``loopmdm`` command line: ``train``, ``sample``, ``eval``, ``plot``, ``serve``, ``export`` / ``import``,
``loopify``, ``experiment`` (``--help`` on each)."""

from __future__ import annotations

import importlib
import os
import sys

from ..errors import LoopMDMError
from . import (  # noqa: F401  (register subcommands)
    eval_cmd,
    experiment_cmd,  # noqa: F401  (experiment: compute-matched, ablation, sudoku, attention, loopify)
    hf_cmd,  # noqa: F401  (export / import: Hugging Face format)
    loopify_cmd,  # noqa: F401  (loopify: retrofit loops onto a trained model)
    plot_cmd,
    sample_cmd,
    serve_cmd,  # noqa: F401  (serve: the denoising viewer in the browser)
    task_cmd,  # noqa: F401  (task make: reasoning task suites)
    train_cmd,
)
from .app import app


def _click_types(name: str) -> tuple:
    """``name`` (``ClickException``, ``Abort``) of click and of the click typer vendors (``typer._click``)."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


CLICK_ERRORS = _click_types("ClickException")
CLICK_ABORT = _click_types("Abort")


def usage_error_line(e: BaseException) -> str:
    """A click / typer usage error (unknown option, missing option, bad value) as one line naming the help."""
    try:
        msg = e.format_message()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - any message is better than a traceback here
        msg = str(e)
    msg = " ".join(str(msg).split()).rstrip(".") or type(e).__name__
    ctx = getattr(e, "ctx", None)
    path = getattr(ctx, "command_path", None) or "loopmdm"
    return f"{msg}; see `{path} --help`"


def one_line_errors(entry) -> None:
    """Run ``entry()`` with library errors as one line on stderr and exit code 2, never a traceback (the CLI's
    rule; benchmark scripts use it too). Option-parsing errors of click / typer (``entry`` run with
    ``standalone_mode=False``) are one line too; an interrupt exits with 128 + the signal number."""
    try:
        entry()
    except LoopMDMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        code = getattr(e, "exit_code", 130)
        if code == 130 and not getattr(e, "reported", False):
            print("interrupted", file=sys.stderr)
        sys.exit(code)
    except CLICK_ERRORS as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `loopmdm` alone: the help is already printed
            sys.exit(getattr(e, "exit_code", 2))
        print(f"error: {usage_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    except CLICK_ABORT:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if os.environ.get("LOOPMDM_DEBUG"):
            raise
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        sys.exit(2)


def run_app(args=None) -> None:
    """Run the typer app without click's standalone mode (so usage errors reach ``one_line_errors``), then exit
    with the command's code (``--help``: 0; ``typer.Exit(n)``: n)."""
    code = app(args=args, prog_name="loopmdm", standalone_mode=False)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


def main() -> None:
    """Entry point of ``loopmdm``: see ``one_line_errors``."""
    one_line_errors(run_app)
