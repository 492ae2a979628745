"""``loopmdm`` command line: ``train``, ``sample``, ``eval``, ``plot``, ``serve``, ``export`` / ``import``,
``loopify``, ``experiment`` (``--help`` on each)."""

from __future__ import annotations

import os
import sys

from ..errors import LoopMDMError
from .app import app
from . import train_cmd, sample_cmd, eval_cmd, plot_cmd  # noqa: F401  (register subcommands)
from . import hf_cmd  # noqa: F401  (export / import: Hugging Face format)
from . import serve_cmd  # noqa: F401  (serve: the denoising viewer in the browser)
from . import experiment_cmd  # noqa: F401  (experiment: compute-matched, ablation, sudoku, attention, loopify)
from . import loopify_cmd  # noqa: F401  (loopify: retrofit loops onto a trained model)


def one_line_errors(entry) -> None:
    """Run ``entry()`` with library errors as one line on stderr and exit code 2, never a traceback (the CLI's
    rule; benchmark scripts use it too)."""
    try:
        entry()
    except LoopMDMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if os.environ.get("LOOPMDM_DEBUG"):
            raise
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Entry point of ``loopmdm``: see ``one_line_errors``."""
    one_line_errors(app)
