"""Checkpoints: safetensors + JSON only (never pickle), written atomically, verified on load.

A run folder looks like::

    OUT/metrics.jsonl
    OUT/checkpoints/latest               <- name of the newest complete checkpoint (moved last)
    OUT/checkpoints/step_000600/model.safetensors, config.json, tokenizer.json,
                                trainer_state.json, optimizer.safetensors, rng.safetensors,
                                [ema.safetensors], index.json

Every file is serialised in memory first, so its SHA-256 and size are those of the bytes we meant to
write (a short write on a full disk cannot go unnoticed), then written into a temporary sibling folder
with Python's own file I/O (which reports ENOSPC / EACCES), fsynced, and the folder renamed into
place; only then does ``latest`` move (write + fsync + ``os.replace``). A kill at any moment leaves the
previous checkpoint and ``latest`` untouched. ``index.json`` holds the SHA-256 and size of every file,
so truncation or corruption is detected and the damaged file named on load.

Nothing here ever unpickles: weights and optimizer moments are safetensors, everything else JSON. A
pickle or ``torch.save`` archive found where a safetensors file is expected is refused by its magic
bytes before any parser sees it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from .config import RunConfig
from .errors import CheckpointError, ConfigError, DataError
from .tokenizer import TextTokenizer

REQUIRED = ("model.safetensors", "config.json", "tokenizer.json")
LATEST = "latest"
STEP_DIR = re.compile(r"^step_(\d+)$")
# Formats that need an unpickler to load: we name them in errors and never open them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; torch.save zip archive


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


def write_bytes_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with Python file I/O (errors such as ENOSPC surface here), then fsync."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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


def describe_os_error(e: BaseException) -> str:
    """A short human reason for an OSError (disk full, read-only, permission denied, ...)."""
    code = getattr(e, "errno", None)
    if code == errno.ENOSPC:
        return "disk full (ENOSPC)"
    if code == errno.EDQUOT:
        return "disk quota exceeded (EDQUOT)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EROFS:
        return "read-only file system"
    return getattr(e, "strerror", None) or str(e).splitlines()[0][:100] or type(e).__name__


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
        raise CheckpointError("the optimizer state in trainer_state.json / optimizer.safetensors is malformed; "
                              "use an earlier checkpoint") from None


# --------------------------------------------------------------------------- checkpoint folders

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


# --------------------------------------------------------------------------- save

def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, cfg: RunConfig,
                    tokenizer: TextTokenizer, trainer_state: Optional[dict[str, Any]] = None,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    extra_tensors: Optional[dict[str, dict[str, torch.Tensor]]] = None,
                    keep_last: int = 2, model_state: Optional[dict[str, torch.Tensor]] = None,
                    optimizer_state: Optional[dict[str, Any]] = None) -> Path:
    """Write checkpoint ``step`` under ``run_dir/checkpoints`` atomically, move ``latest``, prune old ones.

    ``extra_tensors`` maps a file stem (``ema``, ``rng``) to tensors saved as ``<stem>.safetensors``.
    ``model_state`` / ``optimizer_state`` replace ``model.state_dict()`` / ``optimizer.state_dict()`` when given
    (already gathered full states of a sharded run). Any failure (disk full, no permission) raises
    ``CheckpointError`` and leaves the previous checkpoint and ``latest`` exactly as they were."""
    ckpt_root = Path(run_dir) / "checkpoints"
    name = f"step_{step:06d}"
    final = ckpt_root / name
    try:
        files = _serialise(model, cfg, tokenizer, trainer_state, optimizer, extra_tensors or {}, step,
                           model_state, optimizer_state)
    except (SafetensorError, TypeError, ValueError) as e:
        raise CheckpointError(f"could not serialise checkpoint {name} ({str(e).splitlines()[0][:100]}); "
                              "the previous checkpoint is intact") from None
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=name + ".tmp-", dir=ckpt_root))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoints under {str(ckpt_root)!r} ({describe_os_error(e)}); "
                              "free disk space or choose a writable --out folder") from None
    aside = None
    try:
        for fname, data in files.items():
            write_bytes_synced(tmp / fname, data)
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step: move the old folder aside, swap, then delete it
            aside = ckpt_root / f"{name}.tmp-old"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
        atomic_write_text(ckpt_root / LATEST, name + "\n")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and aside.exists() and not final.exists():
            os.replace(aside, final)
        if not isinstance(e, OSError):
            raise
        raise CheckpointError(f"could not save checkpoint {str(final)!r} ({describe_os_error(e)}); the previous "
                              "checkpoint is intact: free disk space or fix permissions, then --resume") from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    prune_checkpoints(ckpt_root, keep_last)
    return final


def _serialise(model, cfg: RunConfig, tokenizer: TextTokenizer, trainer_state, optimizer, extra_tensors,
               step: int, model_state=None, optimizer_state=None) -> dict[str, bytes]:
    """Every file of a checkpoint as bytes, plus ``index.json`` with their SHA-256 and sizes."""
    state = model_state if model_state is not None else model.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if cfg.model.tie_embeddings:
        state.pop("lm_head.weight", None)  # tied to embed.weight; safetensors refuses shared storage
    files = {"model.safetensors": st_save(state, metadata={"format": "pt"}),
             "config.json": json.dumps(cfg.to_dict(), indent=2).encode(),
             "tokenizer.json": _tokenizer_bytes(tokenizer)}
    if optimizer is not None or optimizer_state is not None:
        tensors, meta = flatten_optimizer(optimizer_state if optimizer_state is not None
                                          else optimizer.state_dict())
        files["optimizer.safetensors"] = st_save(tensors)
        trainer_state = dict(trainer_state or {}, optimizer=meta)
    for stem, tensors in extra_tensors.items():
        files[f"{stem}.safetensors"] = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    if trainer_state is not None:
        files["trainer_state.json"] = json.dumps(trainer_state, indent=1).encode()
    index = {"format": 1, "step": step,
             "files": {f: hashlib.sha256(b).hexdigest() for f, b in sorted(files.items())},
             "sizes": {f: len(b) for f, b in sorted(files.items())}}
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


def read_latest(ckpt_root: Path) -> Optional[str]:
    """The folder name in ``ckpt_root/latest`` when it is a well-formed ``step_N`` name, else None."""
    try:
        name = (ckpt_root / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if STEP_DIR.match(name) else None


# --------------------------------------------------------------------------- load

def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its ``checkpoints/latest``), or a ``checkpoints`` folder.

    A path to a file inside a checkpoint (``.../model.safetensors``) resolves to its folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist; pass a run folder (--out of "
                              "`loopmdm train`) or a checkpoint folder")
    if path.is_file():
        if path.name in REQUIRED or path.name == "index.json" or path.suffix == ".safetensors":
            return path.parent
        raise CheckpointError(f"checkpoint path {str(path)!r} is a file; pass the run folder or the checkpoint "
                              "folder that holds model.safetensors")
    if (path / "model.safetensors").exists() or (
            (path / "config.json").exists() and not (path / "checkpoints").is_dir()):
        return path
    for root in (path / "checkpoints", path):
        name = read_latest(root)
        if name and (root / name).is_dir():
            return root / name
        steps = list_checkpoints(root)
        if steps:
            return steps[-1]
    pickles = _pickle_files(path)
    if pickles:
        raise CheckpointError(_pickle_refusal(pickles[0]))
    raise CheckpointError(f"{str(path)!r} holds no checkpoint (no model.safetensors, no checkpoints/latest); "
                          "train one with `loopmdm train --out DIR`")


def _pickle_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    except OSError:
        return []


def _pickle_refusal(p: Path) -> str:
    return (f"{str(p)!r} is a pickle-format file; LoopMDM loads weights only from safetensors because unpickling "
            "can run arbitrary code: convert it with a trusted tool, or use a checkpoint written by `loopmdm train`")


def verify_checkpoint(folder: Path) -> None:
    """Check that required files exist and match the size and SHA-256 recorded in ``index.json``."""
    folder = Path(folder)
    for f in REQUIRED:
        if not (folder / f).is_file():
            pickles = _pickle_files(folder) if f == "model.safetensors" else []
            if pickles:
                raise CheckpointError(_pickle_refusal(pickles[0]))
            raise CheckpointError(f"checkpoint {str(folder)!r} is missing {f}; it is incomplete: "
                                  "use an earlier checkpoint or re-save it")
    index_path = folder / "index.json"
    if not index_path.is_file():
        return  # exported / hand-made folders carry no index; safetensors still checks its header
    index = load_json(index_path)
    files = index.get("files") if isinstance(index, dict) else None
    sizes = index.get("sizes", {}) if isinstance(index, dict) else {}
    if not isinstance(files, dict) or not isinstance(sizes, dict):
        raise CheckpointError(f"{str(index_path)!r} is malformed (no 'files' mapping); use an earlier checkpoint")
    for name, digest in files.items():
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            raise CheckpointError(f"{str(index_path)!r} lists an invalid file name {name!r}; the index is damaged")
        p = folder / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {str(p)!r} is listed in index.json but missing; "
                                  "use an earlier checkpoint")
        try:
            size = p.stat().st_size
            if name in sizes and size != sizes[name]:
                raise CheckpointError(f"checkpoint file {str(p)!r} is truncated or corrupt ({size} bytes, "
                                      f"index.json says {sizes[name]}); use an earlier checkpoint")
            if sha256_file(p) != digest:
                raise CheckpointError(f"checkpoint file {str(p)!r} is corrupt or truncated (checksum mismatch); "
                                      "use an earlier checkpoint")
        except OSError as e:
            raise CheckpointError(f"cannot read checkpoint file {str(p)!r} ({describe_os_error(e)})") from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing anything else; pickles never reach an unpickler here."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise CheckpointError(f"{str(path)!r} is missing; the checkpoint is incomplete: use an earlier one") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {str(path)!r} ({describe_os_error(e)})") from None
    if head.startswith(PICKLE_MAGIC):
        raise CheckpointError(f"{str(path)!r} is a pickle / torch.save file, not safetensors, and was refused: "
                              "unpickling can run arbitrary code; use a checkpoint written by `loopmdm train`")
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{str(path)!r} is not a valid safetensors file ({str(e).splitlines()[0][:80]}); "
                              "it may be truncated or corrupt: use an earlier or trusted checkpoint") from None


def load_json(path: Path) -> Any:
    """Parse a JSON file of a checkpoint; anything unreadable becomes ``CheckpointError`` naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{str(path)!r} is missing; the checkpoint is incomplete: use an earlier one") from None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{str(path)!r} is not valid JSON (corrupt, truncated or not a JSON file); "
                              "the checkpoint is damaged: use an earlier one") from None


def load_config_file(folder: Path) -> RunConfig:
    try:
        return RunConfig.from_dict(load_json(folder / "config.json")).validate()
    except ConfigError as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None


def load_tokenizer_file(folder: Path) -> TextTokenizer:
    try:
        return TextTokenizer.load(folder / "tokenizer.json")
    except (DataError, ConfigError) as e:
        raise CheckpointError(f"checkpoint {str(folder)!r}: {e}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu", ema: bool = False):
    """Load ``(model, tokenizer, config)`` from a run or checkpoint folder, safetensors only.

    With ``ema=True`` the EMA weights are used when the checkpoint has them."""
    from .model import LoopMDM

    folder = resolve_checkpoint(path)
    verify_checkpoint(folder)
    cfg = load_config_file(folder)
    tokenizer = load_tokenizer_file(folder)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise CheckpointError(f"checkpoint {str(folder)!r}: tokenizer.json has {tokenizer.vocab_size} tokens but "
                              f"config.json says model.vocab_size={cfg.model.vocab_size}; the files do not belong "
                              "together")
    model = LoopMDM(cfg.model)
    use_ema = ema and (folder / "ema.safetensors").is_file()
    weights_file = folder / ("ema.safetensors" if use_ema else "model.safetensors")
    load_weights(model, weights_file, cfg)
    return model.to(device).eval(), tokenizer, cfg


def checked_weights(path: Path, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file, tied embeddings restored, refused when any value is NaN / inf."""
    state = load_safetensors(path)
    if cfg.model.tie_embeddings and "embed.weight" in state:
        state.setdefault("lm_head.weight", state["embed.weight"])
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{str(path)!r} holds non-finite weights (NaN / inf in {bad[0]}); "
                              "the run diverged before this save: use an earlier checkpoint")
    return state


def load_weights(model: torch.nn.Module, path: Path, cfg: RunConfig) -> None:
    """``model.load_state_dict(checked_weights(path), strict=True)`` with a one-line error on a mismatch."""
    try:
        model.load_state_dict(checked_weights(path, cfg), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match config.json ({str(e).splitlines()[0][:120]}); "
                              "the files come from different models") from None
