"""Checkpoints: safetensors + JSON only (never pickle), written atomically, verified on load.

A run folder looks like::

    OUT/metrics.jsonl
    OUT/checkpoints/latest               <- name of the newest complete checkpoint (moved last)
    OUT/checkpoints/step_000600/model.safetensors, config.json, tokenizer.json,
                                trainer_state.json, optimizer.safetensors, [ema.safetensors], index.json

Each checkpoint is written into a temporary sibling folder, every file fsynced, then renamed into
place; only then does ``latest`` move (write + fsync + ``os.replace``). ``index.json`` holds the
SHA-256 of every file, so truncation or corruption is detected and named on load.
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
from safetensors.torch import load_file, save_file

from .config import RunConfig
from .errors import CheckpointError, ConfigError
from .tokenizer import TextTokenizer

REQUIRED = ("model.safetensors", "config.json", "tokenizer.json")
LATEST = "latest"


# --------------------------------------------------------------------------- low-level atomic writes

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to ``path`` so that readers see the old or the new content, never a partial file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


# --------------------------------------------------------------------------- save

def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, cfg: RunConfig,
                    tokenizer: TextTokenizer, trainer_state: Optional[dict[str, Any]] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    extra_tensors: Optional[dict[str, dict[str, torch.Tensor]]] = None,
                    keep_last: int = 2) -> Path:
    """Write checkpoint ``step`` under ``run_dir/checkpoints`` atomically, move ``latest``, prune old ones.

    ``extra_tensors`` maps a file stem (``ema``, ``rng``) to tensors saved as ``<stem>.safetensors``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    name = f"step_{step:06d}"
    final = ckpt_root / name
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=name + ".tmp-", dir=ckpt_root))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoints under {str(ckpt_root)!r} ({e.strerror}); "
                              "free disk space or choose a writable --out folder") from None
    try:
        _write_files(tmp, model, cfg, tokenizer, trainer_state, optimizer, extra_tensors or {})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        atomic_write_text(ckpt_root / LATEST, name + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not save checkpoint {str(final)!r} ({e.strerror or e}); the previous "
                              "checkpoint is intact: free disk space or fix permissions, then --resume") from None
    prune_checkpoints(ckpt_root, keep_last)
    return final


def _write_files(folder: Path, model, cfg, tokenizer, trainer_state, optimizer, extra_tensors) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if cfg.model.tie_embeddings:
        state.pop("lm_head.weight", None)  # tied to embed.weight; safetensors refuses shared storage
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    tokenizer.save(folder / "tokenizer.json")
    if optimizer is not None:
        tensors, meta = flatten_optimizer(optimizer.state_dict())
        save_file(tensors, str(folder / "optimizer.safetensors"))
        trainer_state = dict(trainer_state or {}, optimizer=meta)
    for stem, tensors in extra_tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / f"{stem}.safetensors"))
    if trainer_state is not None:
        (folder / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    files = sorted(p.name for p in folder.iterdir())
    for f in files:
        with open(folder / f, "rb") as fh:
            os.fsync(fh.fileno())
    index = {"files": {f: sha256_file(folder / f) for f in files}}
    (folder / "index.json").write_text(json.dumps(index, indent=2))
    with open(folder / "index.json", "rb") as fh:
        os.fsync(fh.fileno())
    _fsync_dir(folder)


def prune_checkpoints(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (and stale temporary folders)."""
    latest = read_latest(ckpt_root)
    complete = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and ".tmp-" not in p.name)
    for p in complete[:-keep_last]:
        if p.name != latest:
            shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_root.glob("step_*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def read_latest(ckpt_root: Path) -> Optional[str]:
    try:
        return (ckpt_root / LATEST).read_text().strip() or None
    except OSError:
        return None


# --------------------------------------------------------------------------- load

def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its ``checkpoints/latest``), or a ``checkpoints`` folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist; pass a run folder (--out of "
                              "`loopmdm train`) or a checkpoint folder")
    if (path / "model.safetensors").exists() or (
            (path / "config.json").exists() and not (path / "checkpoints").is_dir()):
        return path
    for root in (path / "checkpoints", path):
        name = read_latest(root)
        if name and (root / name).is_dir():
            return root / name
        steps = sorted(p for p in root.glob("step_*") if p.is_dir() and ".tmp-" not in p.name)
        if steps:
            return steps[-1]
    raise CheckpointError(f"{str(path)!r} holds no checkpoint (no model.safetensors, no checkpoints/latest); "
                          "train one with `loopmdm train --out DIR`")


def verify_checkpoint(folder: Path) -> None:
    """Check that required files exist and match the SHA-256 recorded in ``index.json``."""
    for f in REQUIRED:
        if not (folder / f).is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r} is missing {f}; it is incomplete: "
                                  "use an earlier checkpoint or re-save it")
    index_path = folder / "index.json"
    if not index_path.is_file():
        return  # exported / hand-made folders carry no index; safetensors still checks its header
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{index_path} is corrupt (not JSON); use an earlier checkpoint") from None
    for name, digest in index.get("files", {}).items():
        p = folder / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {str(p)!r} is listed in index.json but missing; "
                                  "use an earlier checkpoint")
        if sha256_file(p) != digest:
            raise CheckpointError(f"checkpoint file {str(p)!r} is corrupt or truncated (checksum mismatch); "
                                  "use an earlier checkpoint")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing anything else (pickles never reach an unpickler here)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(path)!r} is not a valid safetensors file ({str(e)[:80]}); "
                              "it may be truncated, corrupt or a pickle: use a trusted checkpoint") from None


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{str(path)!r} is missing or not valid JSON; the checkpoint is damaged") from None


def load_config_file(folder: Path) -> RunConfig:
    try:
        return RunConfig.from_dict(load_json(folder / "config.json")).validate()
    except ConfigError as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu", ema: bool = False):
    """Load ``(model, tokenizer, config)`` from a run or checkpoint folder, safetensors only.

    With ``ema=True`` the EMA weights are used when the checkpoint has them."""
    from .model import LoopMDM

    folder = resolve_checkpoint(path)
    verify_checkpoint(folder)
    cfg = load_config_file(folder)
    tokenizer = TextTokenizer.load(folder / "tokenizer.json")
    model = LoopMDM(cfg.model)
    weights_file = folder / ("ema.safetensors" if ema and (folder / "ema.safetensors").is_file() else "model.safetensors")
    state = load_safetensors(weights_file)
    if cfg.model.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("embed.weight"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{weights_file} does not match config.json ({str(e).splitlines()[0][:120]}); "
                              "the files come from different models") from None
    return model.to(device).eval(), tokenizer, cfg
