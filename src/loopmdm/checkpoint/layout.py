"""The layout of a run folder's checkpoints, shared by saving and loading::

OUT/metrics.jsonl
OUT/checkpoints/latest               <- name of the newest complete checkpoint (moved last)
OUT/checkpoints/step_000600/model.safetensors, config.json, tokenizer.json,
                            trainer_state.json, optimizer.safetensors, rng.safetensors,
                            [ema.safetensors], index.json
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

REQUIRED = ("model.safetensors", "config.json", "tokenizer.json")
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")
# Formats that need an unpickler to load: we name them in errors and never open them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; torch.save zip archive


def step_of(folder: Path) -> Optional[int]:
    """The step number of a ``step_NNNNNN`` folder name, else None (temporary folders, other files)."""
    m = STEP_DIR.match(folder.name)
    return int(m.group(1)) if m else None


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete-looking checkpoint folders under ``ckpt_root``, oldest first (by step number, not by name:
    ``step_1000000`` is newer than ``step_999999``)."""
    try:
        found = [p for p in ckpt_root.iterdir() if step_of(p) is not None and p.is_dir()]
    except OSError:
        return []
    return sorted(found, key=step_of)


def read_latest(ckpt_root: Path) -> Optional[str]:
    """The folder name in ``ckpt_root/latest`` when it is a well-formed ``step_N`` name, else None."""
    try:
        name = (ckpt_root / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if STEP_DIR.match(name) else None
