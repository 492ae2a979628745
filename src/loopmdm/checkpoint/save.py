"""Saving checkpoints: safetensors + JSON only (never pickle), written atomically.

Every file is serialised in memory first, so its SHA-256 and size are those of the bytes we meant to write (a
short write on a full disk cannot go unnoticed), then written into a temporary sibling folder with Python's own
file I/O (which reports ENOSPC / EACCES), fsynced, and the folder renamed into place; only then does ``latest``
move (write + fsync + ``os.replace``). A kill at any moment leaves the previous checkpoint and ``latest``
untouched. ``index.json`` holds the SHA-256 and size of every file, so truncation or corruption is detected and
the damaged file named on load (``loopmdm.checkpoint.load``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import save as st_save

from ..errors import CheckpointError
from ..fileio import atomic_write_text, describe_os_error, fsync_dir, write_bytes_synced
from .layout import LATEST, list_checkpoints, read_latest

# --------------------------------------------------------------------------- optimizer state <-> safetensors


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able metadata."""
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for pid, st in state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                meta["scalars"][f"{pid}.{k}"] = v
    return tensors, meta


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``flatten_optimizer``; a malformed ``meta`` raises ``CheckpointError``."""
    try:
        state: dict[int, dict[str, Any]] = {}
        for key, v in list(tensors.items()) + list(meta["scalars"].items()):
            pid, k = key.split(".", 1)
            state.setdefault(int(pid), {})[k] = v
        return {"state": state, "param_groups": list(meta["param_groups"])}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(
            "the optimizer state in trainer_state.json / optimizer.safetensors is malformed; "
            "use an earlier checkpoint"
        ) from None


# --------------------------------------------------------------------------- save


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    cfg,
    tokenizer,
    trainer_state: Optional[dict[str, Any]] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    extra_tensors: Optional[dict[str, dict[str, torch.Tensor]]] = None,
    keep_last: int = 2,
    model_state: Optional[dict[str, torch.Tensor]] = None,
    optimizer_state: Optional[dict[str, Any]] = None,
) -> Path:
    """Write checkpoint ``step`` under ``run_dir/checkpoints`` atomically, move ``latest``, prune old ones.

    ``extra_tensors`` maps a file stem (``ema``, ``rng``) to tensors saved as ``<stem>.safetensors``.
    ``model_state`` / ``optimizer_state`` replace ``model.state_dict()`` / ``optimizer.state_dict()`` when given
    (already gathered full states of a sharded run). Any failure (disk full, no permission) raises
    ``CheckpointError`` and leaves the previous checkpoint and ``latest`` exactly as they were."""
    ckpt_root = Path(run_dir) / "checkpoints"
    name = f"step_{step:06d}"
    final = ckpt_root / name
    try:
        files = _serialise(
            model,
            cfg,
            tokenizer,
            trainer_state,
            optimizer,
            extra_tensors or {},
            step,
            model_state,
            optimizer_state,
        )
    except (SafetensorError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"could not serialise checkpoint {name} ({str(e).splitlines()[0][:100]}); "
            "the previous checkpoint is intact"
        ) from None
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=name + ".tmp-", dir=ckpt_root))
    except OSError as e:
        raise CheckpointError(
            f"cannot write checkpoints under {str(ckpt_root)!r} ({describe_os_error(e)}); "
            "free disk space or choose a writable --out folder"
        ) from None
    aside = None
    try:
        for fname, data in files.items():
            write_bytes_synced(tmp / fname, data)
        fsync_dir(tmp)
        if final.exists():  # re-saving a step: move the old folder aside, swap, then delete it
            aside = ckpt_root / f"{name}.tmp-old"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(ckpt_root)
        atomic_write_text(ckpt_root / LATEST, name + "\n")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and aside.exists() and not final.exists():
            os.replace(aside, final)
        if not isinstance(e, OSError):
            raise
        raise CheckpointError(
            f"could not save checkpoint {str(final)!r} ({describe_os_error(e)}); the previous "
            "checkpoint is intact: free disk space or fix permissions, then --resume"
        ) from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    prune_checkpoints(ckpt_root, keep_last)
    return final


def _serialise(
    model,
    cfg,
    tokenizer,
    trainer_state,
    optimizer,
    extra_tensors,
    step: int,
    model_state=None,
    optimizer_state=None,
) -> dict[str, bytes]:
    """Every file of a checkpoint as bytes, plus ``index.json`` with their SHA-256 and sizes."""
    state = model_state if model_state is not None else model.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if cfg.model.tie_embeddings:
        # tied to embed.weight; safetensors refuses shared storage
        state.pop("lm_head.weight", None)
    files = {
        "model.safetensors": st_save(state, metadata={"format": "pt"}),
        "config.json": json.dumps(cfg.to_dict(), indent=2).encode(),
        "tokenizer.json": _tokenizer_bytes(tokenizer),
    }
    if optimizer is not None or optimizer_state is not None:
        tensors, meta = flatten_optimizer(
            optimizer_state if optimizer_state is not None else optimizer.state_dict()
        )
        files["optimizer.safetensors"] = st_save(tensors)
        trainer_state = dict(trainer_state or {}, optimizer=meta)
    for stem, tensors in extra_tensors.items():
        files[f"{stem}.safetensors"] = st_save(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        )
    if trainer_state is not None:
        files["trainer_state.json"] = json.dumps(trainer_state, indent=1).encode()
    index = {
        "format": 1,
        "step": step,
        "files": {f: hashlib.sha256(b).hexdigest() for f, b in sorted(files.items())},
        "sizes": {f: len(b) for f, b in sorted(files.items())},
    }
    files["index.json"] = json.dumps(index, indent=2).encode()
    return files


def _tokenizer_bytes(tokenizer) -> bytes:
    """``tokenizer.json`` as bytes (a ``TextTokenizer``'s HF tokenizer, or anything with ``save(path)``)."""
    if hasattr(getattr(tokenizer, "tok", None), "to_str"):
        return tokenizer.tok.to_str().encode()
    with tempfile.TemporaryDirectory() as d:
        tokenizer.save(Path(d) / "tokenizer.json")
        return (Path(d) / "tokenizer.json").read_bytes()


def prune_checkpoints(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (never ``latest``) and stale temp folders."""
    latest = read_latest(ckpt_root)
    for p in list_checkpoints(ckpt_root)[:-keep_last]:
        if p.name != latest:
            _remove_atomically(p)
    for p in ckpt_root.glob("step_*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def _remove_atomically(folder: Path) -> None:
    """Rename to a temporary name first, then delete: a kill during the deletion leaves a ``.tmp-`` folder
    (ignored, removed by the next prune), never a half-deleted ``step_N`` folder that looks like a checkpoint."""
    trash = folder.with_name(folder.name + ".tmp-delete")
    try:
        os.replace(folder, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
