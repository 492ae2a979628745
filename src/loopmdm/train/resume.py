"""What an exact resume needs besides weights and optimizer moments: every random state (the shared noise and
loop-count generators, and each rank's global torch / CUDA / Python / NumPy states), the metrics log cut back
to the checkpoint's step, and the check that the checkpoint belongs to this run (same model, same tokenizer)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checkpoint import load_tokenizer_file, resolve_checkpoint, verify_checkpoint
from ..errors import CheckpointError
from ..fileio import atomic_write_bytes
from .distributed import DistEnv

RESUME_FILES = ("trainer_state.json", "rng.safetensors")


def rng_tensors(
    gen_noise: torch.Generator, gen_loops: torch.Generator, device: torch.device, env: DistEnv
) -> dict[str, torch.Tensor]:
    """Generator states. ``noise`` (t, masks) and ``loops`` (S) are identical on every rank by construction (same
    seed, same draws over the global batch), so rank 0's copy restores every rank. ``torch`` / ``cuda`` are
    per-process global states (only dropout draws from them): in a torchrun launch every rank's are gathered (a
    collective: call on all ranks) and saved as ``torch_rank{r}`` / ``cuda_rank{r}``."""
    own = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    out = {"noise": gen_noise.get_state(), "loops": gen_loops.get_state(), **own}
    if env.enabled:
        gathered: list = [None] * env.world_size
        torch.distributed.all_gather_object(gathered, own)
        for r, states in enumerate(gathered):
            out.update({f"{k}_rank{r}": v for k, v in states.items()})
    return out


def restore_rng(
    rng: dict[str, torch.Tensor],
    gen_noise: torch.Generator,
    gen_loops: torch.Generator,
    device: torch.device,
    rank: int,
) -> None:
    """Inverse of ``rng_tensors`` for this rank (its own global states when the run was distributed)."""
    gen_noise.set_state(rng["noise"])
    gen_loops.set_state(rng["loops"])
    torch.set_rng_state(rng.get(f"torch_rank{rank}", rng["torch"]))
    if device.type == "cuda" and ("cuda" in rng or f"cuda_rank{rank}" in rng):
        torch.cuda.set_rng_state(rng.get(f"cuda_rank{rank}", rng.get("cuda")), device)


def global_random_state() -> dict:
    """Python's and NumPy's global random states as JSON."""
    return {
        "python_random": _lists(random.getstate()),
        "numpy_random": _lists(np.random.get_state()),
    }


def restore_global_random(state: dict) -> None:
    random.setstate(_tuples(state["python_random"]))
    np_state = state["numpy_random"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))


def _lists(x):
    if isinstance(x, tuple):
        return [_lists(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the metric lines of steps after ``step`` so a resumed run's log continues exactly where the checkpoint
    was. Every other line is kept byte for byte (a line that is not a record, or not UTF-8, is the user's to
    keep), except a last line cut by a kill (no newline, not JSON)."""
    if not path.is_file():
        return
    lines = path.read_bytes().splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n") and _record(lines[-1]) is None:
        lines.pop()
    keep = [line for line in lines if not _after(_record(line), step)]
    atomic_write_bytes(path, b"".join(k if k.endswith(b"\n") else k + b"\n" for k in keep))


def _record(line: bytes):
    try:
        return json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or a number too long
        return None


def _after(rec, step: int) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] > step


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["train.max_steps: 8 -> 12", ...]`` for every leaf that differs between two config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b and not (
            isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)
        ):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def resumable_folder(path: str | Path) -> Path:
    """The verified checkpoint folder ``path`` names, refused when it cannot resume a run exactly."""
    folder = resolve_checkpoint(path)
    verify_checkpoint(folder)
    for f in RESUME_FILES:
        if not (folder / f).is_file():
            raise CheckpointError(
                f"checkpoint {str(folder)!r} has no {f}: it holds weights only (an export?) "
                "and cannot resume a run exactly; resume from a checkpoint written by "
                "`loopmdm train`, or start a new run (`--init` starts one from its weights)"
            )
    return folder


def check_resumable(saved, cfg, folder: Path, tokenizer, log: Callable[[str], None]) -> None:
    """The model shape and tokenizer must match the checkpoint's; other changed settings are logged."""
    diffs = config_diff(saved.to_dict(), cfg.to_dict())
    model_diffs = [d for d in diffs if d.startswith("model.")]
    if model_diffs:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} has a different model config "
            f"({'; '.join(model_diffs[:3])}); resume with the same --preset / --config / "
            "--set model.* as the original run"
        )
    if load_tokenizer_file(folder).tok.get_vocab() != tokenizer.tok.get_vocab():
        raise CheckpointError(
            f"the data's tokenizer differs from {str(folder / 'tokenizer.json')!r} (the corpus "
            "or data settings changed); keep the checkpoint's tokenizer with --set "
            f"data.tokenizer={folder / 'tokenizer.json'}"
        )
    if diffs:
        log(
            f"resuming with changed settings ({'; '.join(diffs[:6])}); the run will not match an "
            "uninterrupted one exactly (train.max_steps sets the LR schedule)"
        )
