"""Where an experiment's numbers came from: software versions, the corpus, a fingerprint of the data (so that a
figure records which machine's standard library or which files it was measured on)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import DataConfig
from ..data import PreparedData
from ..data.sources import source_fingerprint
from ..errors import LoopMDMError


def software_versions() -> dict:
    import loopmdm

    out = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "loopmdm": getattr(loopmdm, "__version__", None),
    }
    for dist in ("tokenizers", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["loopmdm_git_commit"] = git_commit(Path(loopmdm.__file__).parent)
    return out


def git_commit(where: Path) -> Optional[str]:
    """The commit of the git checkout holding ``where`` (with ``+dirty`` when files differ from it), or None when
    it is not one (an installed wheel) or git is missing: the package version alone does not name the code."""
    try:
        run = functools.partial(
            subprocess.run, cwd=where, capture_output=True, text=True, timeout=10, check=True
        )
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def corpus_description(data_cfg: DataConfig) -> dict:
    """Where the text came from: ``data.source`` and, for ``stdlib`` (the running interpreter's standard
    library, so the corpus depends on the machine's Python), that Python's version and stdlib path."""
    out = {
        "source": data_cfg.source,
        "val_fraction": data_cfg.val_fraction,
        "max_train_bytes": data_cfg.max_train_bytes,
        "tokenizer": data_cfg.tokenizer,
    }
    if data_cfg.source == "stdlib":
        out.update(
            python=sys.version,
            python_version=platform.python_version(),
            stdlib_path=sysconfig.get_paths()["stdlib"],
        )
    return out


def data_digests(data: PreparedData) -> dict:
    """SHA-256 digests of the prepared train / validation token rows and of the tokenizer (None for one that
    cannot be serialised): what names the data a model saw, wherever it was read from."""

    def digest(a: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

    tok = getattr(data.tokenizer, "tok", None)
    tok_text = tok.to_str() if tok is not None and hasattr(tok, "to_str") else None
    return {
        "train_rows_sha256": digest(data.train),
        "val_rows_sha256": digest(data.val),
        "tokenizer_sha256": None
        if tok_text is None
        else hashlib.sha256(tok_text.encode()).hexdigest(),
    }


def data_fingerprint(data_cfg: DataConfig, data: PreparedData) -> dict:
    """The source's fingerprint (``loopmdm.data.sources.source_fingerprint``: file names and sizes for a
    folder / the stdlib) and ``data_digests``: the prepared token rows and the tokenizer actually used."""
    try:
        source_fp = source_fingerprint(data_cfg)
    # e.g. a source that cannot be listed any more: say so, keep the row digests
    except (LoopMDMError, OSError) as e:
        source_fp = f"unavailable: {e}"
    return {
        "source_fingerprint": source_fp,
        **data_digests(data),
        "train_shape": list(data.train.shape),
        "val_shape": list(data.val.shape),
        "dtype": str(data.train.dtype),
        "stats": data.stats,
    }


def provenance_line(corpus: dict, fingerprint: dict, software: dict) -> str:
    where = corpus["source"]
    if corpus.get("stdlib_path"):
        where += f" (Python {corpus['python_version']}, {corpus['stdlib_path']})"
    return (
        f"data: {where}; rows sha256 {fingerprint['train_rows_sha256'][:12]}/{fingerprint['val_rows_sha256'][:12]}"
        f"; loopmdm {software.get('loopmdm')}, torch {software['torch']}"
    )
