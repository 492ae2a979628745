"""Loading checkpoints: a run folder, a ``checkpoints`` folder or one checkpoint folder is resolved, its files
checked against ``index.json`` (size and SHA-256), and weights read from safetensors only. Nothing here ever
unpickles: a pickle or ``torch.save`` archive found where a safetensors file is expected is refused by its
magic bytes before any parser sees it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..backbones import build_model
from ..config import RunConfig
from ..data import TextTokenizer
from ..errors import CheckpointError, ConfigError, DataError
from ..fileio import describe_os_error, path_kind, sha256_file
from .layout import PICKLE_MAGIC, PICKLE_SUFFIXES, REQUIRED, list_checkpoints, read_latest


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its ``checkpoints/latest``), or a ``checkpoints`` folder.

    A path to a file inside a checkpoint (``.../model.safetensors``) resolves to its folder."""
    path = Path(path).expanduser()
    kind = path_kind(path)
    if kind is None:
        raise CheckpointError(
            f"checkpoint path {str(path)!r} does not exist; pass a run folder (--out of "
            "`loopmdm train`) or a checkpoint folder"
        )
    if kind not in ("a file", "a folder"):
        raise CheckpointError(
            f"checkpoint path {str(path)!r} is {kind}, not a folder; pass a run folder (--out of "
            "`loopmdm train`) or a checkpoint folder"
        )
    if path.is_file():
        if path.name in REQUIRED or path.name == "index.json" or path.suffix == ".safetensors":
            return path.parent
        raise CheckpointError(
            f"checkpoint path {str(path)!r} is a file; pass the run folder or the checkpoint "
            "folder that holds model.safetensors"
        )
    if (path / "model.safetensors").exists() or (
        (path / "config.json").exists() and not (path / "checkpoints").is_dir()
    ):
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
    raise CheckpointError(
        f"{str(path)!r} holds no checkpoint (no model.safetensors, no checkpoints/latest); "
        "train one with `loopmdm train --out DIR`"
    )


def _pickle_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    except OSError:
        return []


def _pickle_refusal(p: Path) -> str:
    return (
        f"{str(p)!r} is a pickle-format file; LoopMDM loads weights only from safetensors because unpickling "
        "can run arbitrary code: convert it with a trusted tool, or use a checkpoint written by `loopmdm train`"
    )


def verify_checkpoint(folder: Path) -> None:
    """Check that required files exist and match the size and SHA-256 recorded in ``index.json``."""
    folder = Path(folder)
    for f in REQUIRED:
        if not (folder / f).is_file():
            pickles = _pickle_files(folder) if f == "model.safetensors" else []
            if pickles:
                raise CheckpointError(_pickle_refusal(pickles[0]))
            raise CheckpointError(
                f"checkpoint {str(folder)!r} is missing {f}; it is incomplete: "
                "use an earlier checkpoint or re-save it"
            )
    index_path = folder / "index.json"
    if not index_path.is_file():
        return  # exported / hand-made folders carry no index; safetensors still checks its header
    index = load_json(index_path)
    files = index.get("files") if isinstance(index, dict) else None
    sizes = index.get("sizes", {}) if isinstance(index, dict) else {}
    if not isinstance(files, dict) or not isinstance(sizes, dict):
        raise CheckpointError(
            f"{str(index_path)!r} is malformed (no 'files' mapping); use an earlier checkpoint"
        )
    for name, digest in files.items():
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            raise CheckpointError(
                f"{str(index_path)!r} lists an invalid file name {name!r}; the index is damaged"
            )
        p = folder / name
        if not p.is_file():
            raise CheckpointError(
                f"checkpoint file {str(p)!r} is listed in index.json but missing; "
                "use an earlier checkpoint"
            )
        try:
            size = p.stat().st_size
            if name in sizes and size != sizes[name]:
                raise CheckpointError(
                    f"checkpoint file {str(p)!r} is truncated or corrupt ({size} bytes, "
                    f"index.json says {sizes[name]}); use an earlier checkpoint"
                )
            if sha256_file(p) != digest:
                raise CheckpointError(
                    f"checkpoint file {str(p)!r} is corrupt or truncated (checksum mismatch); "
                    "use an earlier checkpoint"
                )
        except OSError as e:
            raise CheckpointError(
                f"cannot read checkpoint file {str(p)!r} ({describe_os_error(e)})"
            ) from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing anything else; pickles never reach an unpickler here."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except FileNotFoundError:
        raise CheckpointError(
            f"{str(path)!r} is missing; the checkpoint is incomplete: use an earlier one"
        ) from None
    except OSError as e:
        raise CheckpointError(f"cannot read {str(path)!r} ({describe_os_error(e)})") from None
    # a safetensors file is an 8-byte little-endian header length, then the JSON header: its first length byte
    # may be 0x80, pickle's PROTO opcode, so only a file that is not shaped like safetensors is called a pickle
    if head[8:9] != b"{" and head.startswith(PICKLE_MAGIC):
        raise CheckpointError(
            f"{str(path)!r} is a pickle / torch.save file, not safetensors, and was refused: "
            "unpickling can run arbitrary code; use a checkpoint written by `loopmdm train`"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(
            f"{str(path)!r} is not a valid safetensors file ({str(e).splitlines()[0][:80]}); "
            "it may be truncated or corrupt: use an earlier or trusted checkpoint"
        ) from None


def load_json(path: Path) -> Any:
    """Parse a JSON file of a checkpoint; anything unreadable becomes ``CheckpointError`` naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{str(path)!r} is missing; the checkpoint is incomplete: use an earlier one"
        ) from None
    # JSONDecodeError is a ValueError
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(
            f"{str(path)!r} is not valid JSON (corrupt, truncated or not a JSON file); "
            "the checkpoint is damaged: use an earlier one"
        ) from None


def load_config_file(folder: Path) -> RunConfig:
    data = load_json(folder / "config.json")
    if isinstance(data, dict) and ("architectures" in data or "model_type" in data):
        raise CheckpointError(
            f"{str(folder)!r} is a Hugging Face transformers folder, not a loopmdm checkpoint; "
            f"convert it with `loopmdm import --hf {folder} --out RUN` (or load it with "
            "transformers' from_pretrained)"
        )
    try:
        return RunConfig.from_dict(data).validate()
    except ConfigError as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None


def load_tokenizer_file(folder: Path) -> TextTokenizer:
    try:
        return TextTokenizer.load(folder / "tokenizer.json")
    except (DataError, ConfigError) as e:
        raise CheckpointError(f"checkpoint {str(folder)!r}: {e}") from None


def load_model(path: str | Path, device: str | torch.device = "cpu", ema: Optional[bool] = False):
    """Load ``(model, tokenizer, config)`` from a run or checkpoint folder, safetensors only. The model is the
    one ``model.backbone`` names (``LoopMDM``, or a loopified transformers model: ``loopmdm.backbones``).

    ema: True = the EMA weights when the checkpoint has them, None = the same ("auto", what training validates
    with), False = the raw weights (``uses_ema`` tells which a call picks). ``device`` is checked against this
    machine first (``loopmdm.runtime.pick_device``: a missing CUDA / MPS device is a one-line ``ConfigError``)."""
    from ..runtime import pick_device  # imports the model layers: only when a model is loaded

    device = pick_device(device)
    folder = resolve_checkpoint(path)
    verify_checkpoint(folder)
    cfg = load_config_file(folder)
    tokenizer = load_tokenizer_file(folder)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise CheckpointError(
            f"checkpoint {str(folder)!r}: tokenizer.json has {tokenizer.vocab_size} tokens but "
            f"config.json says model.vocab_size={cfg.model.vocab_size}; the files do not belong "
            "together"
        )
    model = build_model(cfg.model)
    load_weights(
        model, folder / ("ema.safetensors" if uses_ema(folder, ema) else "model.safetensors"), cfg
    )
    return model.to(device).eval(), tokenizer, cfg


def uses_ema(path: str | Path, ema: Optional[bool]) -> bool:
    """Whether ``load_model(path, ema=ema)`` loads the EMA weights (they exist, and ``ema`` is not False)."""
    return ema is not False and (resolve_checkpoint(path) / "ema.safetensors").is_file()


def checked_weights(
    path: Path, cfg: RunConfig, like: Optional[torch.nn.Module] = None
) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file, tied embeddings restored, refused when any value is NaN / inf or (given
    the model ``like`` they are for) when an integer or boolean tensor stands where the model has floating-point
    weights (``load_state_dict`` would cast it silently)."""
    state = load_safetensors(path)
    if like is not None:
        check_float_dtypes(state, like.state_dict(), path)
    if cfg.model.tie_embeddings and "embed.weight" in state:
        state.setdefault("lm_head.weight", state["embed.weight"])
    bad = [
        k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise CheckpointError(
            f"{str(path)!r} holds non-finite weights (NaN / inf in {bad[0]}); "
            "the run diverged before this save: use an earlier checkpoint"
        )
    return state


def check_float_dtypes(state: dict, expected: dict, path: Path) -> None:
    for name, value in state.items():
        if (
            name in expected
            and expected[name].is_floating_point()
            and not value.is_floating_point()
        ):
            raise CheckpointError(
                f"{str(path)!r} holds {name} as {str(value.dtype).removeprefix('torch.')}, not as "
                "floating-point weights; the file is damaged or not a LoopMDM checkpoint: use an "
                "earlier checkpoint"
            )


def load_weights(model: torch.nn.Module, path: Path, cfg: RunConfig) -> None:
    """``model.load_state_dict(checked_weights(path), strict=True)`` with a one-line error on a mismatch (an integer
    or boolean tensor where the model has floating-point weights would otherwise be cast silently)."""
    state = checked_weights(path, cfg, like=model)
    expected = model.state_dict()
    mismatch = state_dict_mismatch(expected, state)
    if mismatch:
        raise CheckpointError(
            f"{path} does not match config.json: {mismatch}; the files come from different models "
            "(use the config.json saved with these weights)"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} does not match config.json ({str(e).splitlines()[0][:120]}); "
            "the files come from different models"
        ) from None


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(n) for n in t.shape) + "]"


def state_dict_mismatch(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]
) -> Optional[str]:
    """The first difference between the model's state dict and a file's, in words (None when they match): a
    tensor whose shape differs (expected vs found), one the model needs but the file lacks, or an extra one."""
    for name, want in expected.items():
        if name in found and tuple(found[name].shape) != tuple(want.shape):
            return f"tensor {name} has shape {_shape(found[name])} in the file but the model expects {_shape(want)}"
    missing = [k for k in expected if k not in found]
    if missing:
        return (
            f"tensor {missing[0]} (shape {_shape(expected[missing[0]])}) is missing from the file"
            + (f", and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    extra = [k for k in found if k not in expected]
    if extra:
        return (
            f"the file has tensor {extra[0]} (shape {_shape(found[extra[0]])}) the model does not"
            + (f", and {len(extra) - 1} more" if len(extra) > 1 else "")
        )
    return None
