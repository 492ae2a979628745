"""The on-disk cache of prepared data: ``cache_root(cfg)/data/<fingerprint>/`` holds the tokenizer, the packed
arrays (``.npy``, never pickled) and their counts. Written into a temporary sibling folder, then renamed, so a
killed run never leaves a half-written cache; a cache is an optimisation, so failing to write one is not an
error."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..errors import DataError
from .tokenizer import TextTokenizer


def cache_root(cfg) -> Path:
    """``data.cache_dir``, else ``$LOOPMDM_CACHE``, else ``~/.cache/loopmdm``. A file there, or a folder that cannot
    be created (under a file or a read-only folder), is a one-line ``DataError`` naming ``data.cache_dir``."""
    root = Path(
        cfg.cache_dir or os.environ.get("LOOPMDM_CACHE", Path.home() / ".cache" / "loopmdm")
    ).expanduser()
    where = (
        f"data.cache_dir={str(root)!r}"
        if cfg.cache_dir
        else f"the data cache {str(root)!r} (data.cache_dir unset, from "
        + ("$LOOPMDM_CACHE)" if os.environ.get("LOOPMDM_CACHE") else "the default)")
    )
    fix = "set data.cache_dir to a writable folder (e.g. --set data.cache_dir=/tmp/loopmdm-cache)"
    if root.exists() and not root.is_dir():
        raise DataError(f"{where} is a file, not a folder; {fix}")
    # created when first written: its nearest existing ancestor must be a writable folder
    if not root.is_dir():
        parent = root.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise DataError(f"{where} cannot be created ({str(parent)!r} is a file); {fix}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise DataError(f"{where} cannot be created ({str(parent)!r} is not writable); {fix}")
    return root


def files_fingerprint(
    files: Iterable[Path], h: Optional["hashlib._Hash"] = None, mtime: bool = True
) -> str:
    """A digest of file names, sizes (and modification times): what a cache of their content must change with."""
    h = h or hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns if mtime else ''}".encode())
    return h.hexdigest()


def read_cache(folder: Path) -> Optional[tuple[TextTokenizer, dict[str, np.ndarray], dict]]:
    """(tokenizer, arrays by name, meta) of a complete cache folder, or None when there is none; a damaged one
    raises (OSError / ValueError) so the caller can rebuild it."""
    if not (folder / "meta.json").is_file():
        return None
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in meta["arrays"]}
    return TextTokenizer.load(folder / "tokenizer.json"), arrays, meta["stats"]


def write_cache(
    folder: Path, tokenizer: TextTokenizer, arrays: dict[str, np.ndarray], stats: dict
) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        tokenizer.save(tmp / "tokenizer.json")
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr)
        (tmp / "meta.json").write_text(json.dumps({"arrays": list(arrays), "stats": stats}))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        # the cache is an optimisation: never fail a run over it
        shutil.rmtree(tmp, ignore_errors=True)
