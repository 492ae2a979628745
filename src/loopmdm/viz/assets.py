"""The viewer's static files (HTML, CSS, JS), shipped as package data; no CDN, so pages work offline. The
renderer (viewer.js / viewer.css) draws both the live page of ``loopmdm serve`` and the static trajectory export."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from ..errors import LoopMDMError

ASSETS = ("index.html", "viewer.css", "viewer.js", "app.js")


@lru_cache(maxsize=None)
def read_asset(name: str) -> str:
    """Text of one file under ``loopmdm/viz/static/``."""
    if name not in ASSETS:
        raise LoopMDMError(f"unknown viewer asset {name!r}; one of: {', '.join(ASSETS)}")
    try:
        return (resources.files("loopmdm.viz") / "static" / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LoopMDMError(
            f"viewer asset {name!r} is missing from the installed package; reinstall loopmdm"
        ) from None
