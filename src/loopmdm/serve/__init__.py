"""A local web viewer for LoopMDM sampling: watch tokens get revealed step by step, with the loops S spent per step.

``create_app(checkpoint, ...)`` builds the FastAPI app (needs the ``[serve]`` extra); ``loopmdm serve`` runs it.
Importing this package is cheap: FastAPI is imported only when the app is built.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any):
    """Build the viewer's FastAPI app; see :func:`loopmdm.serve.app.create_app` for the arguments."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
