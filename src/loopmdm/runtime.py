"""The machine and how we run on it: device choice, threads, bf16 autocast, ``torch.compile`` of the
transformer blocks, memory available, and a description of the machine for result files. (What only the
benchmarks need, the GPU peak FLOPs for MFU, SDPA backend pinning and peak RSS, is in
``benchmarks/bench_hardware.py``.)
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from .errors import ConfigError
from .model.layers import Block

DEVICE_SYNTAX = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    try:
        return bool(backend is not None and backend.is_available())
    except Exception:  # noqa: BLE001 - a broken MPS probe means: no MPS
        return False


def available_devices() -> list[str]:
    """The devices this machine can run on: ``cpu``, then ``cuda:0`` .. ``cuda:N-1``, then ``mps``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def pick_device(name: str | torch.device, what: str = "device") -> torch.device:
    """The device ``name`` names, checked against this machine: ``auto`` (CUDA when available, else CPU),
    ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. A malformed name, or a device this machine does not have, is a
    one-line ``ConfigError`` that lists what it has, e.g. "device 'cuda': this machine has no CUDA device;
    available: cpu". ``what`` names the setting in the message (``train.device``, ``--device``)."""
    text = str(name).strip() if isinstance(name, (str, torch.device)) else None
    have = ", ".join(available_devices())
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    dev = None
    if text:
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError, TypeError):
            dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"{what}={name!r} is not a device; use {DEVICE_SYNTAX} (this machine has: {have})"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{what}={text!r}: this machine has no CUDA device; available: {have} (or auto)"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ConfigError(
                f"{what}={text!r}: this machine has {n} CUDA device{'s' if n != 1 else ''} "
                f"(cuda:0..cuda:{n - 1}); available: {have}"
            )
    if dev.type == "mps" and not _mps_available():
        raise ConfigError(
            f"{what}={text!r}: this machine has no MPS (Apple GPU) device; available: {have} "
            "(or auto)"
        )
    if dev.type == "cuda":
        # TF32 tensor cores for fp32 matmuls (Ampere and newer)
        torch.set_float32_matmul_precision("high")
    return dev


def check_precision(device: torch.device | str, precision: str, what: str = "precision") -> None:
    """bf16 autocast where the device cannot run it (a CUDA card before Ampere; MPS without bf16 support) is a
    one-line ``ConfigError`` naming the fix (fp32). CPU autocast runs bf16 everywhere PyTorch does."""
    if precision != "bf16":
        return
    device = torch.device(device)
    if not _bf16_ok(device.type, device.index):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        raise ConfigError(f"{what}=bf16 is not supported on {name}; use fp32")


@functools.lru_cache(maxsize=None)
def _bf16_ok(kind: str, index: Optional[int]) -> bool:
    if kind == "cuda":
        try:
            with torch.cuda.device(index if index is not None else torch.cuda.current_device()):
                try:
                    return bool(torch.cuda.is_bf16_supported(including_emulation=False))
                except TypeError:  # older PyTorch: no including_emulation
                    return bool(torch.cuda.is_bf16_supported())
        except Exception:  # noqa: BLE001 - cannot tell: let the run try
            return True
    if kind == "mps":
        try:
            torch.ones(1, device="mps", dtype=torch.bfloat16)
        except (RuntimeError, TypeError):
            return False
    return True


def available_memory(device: torch.device | str = "cpu") -> Optional[int]:
    """Bytes a new allocation on ``device`` can take now: free CUDA memory (plus what PyTorch holds cached), else
    the system's available RAM (Linux ``MemAvailable``, else free pages); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(
                free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            )
        except Exception:  # noqa: BLE001 - no answer: unknown
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def set_threads(threads: Optional[int]) -> None:
    """``torch.set_num_threads`` when a count is given (one thread is fastest for tiny models on a busy CPU)."""
    if threads:
        torch.set_num_threads(threads)


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast when ``precision == 'bf16'`` (CPU or CUDA), otherwise a no-op context. A device without bf16
    support is a one-line ``ConfigError`` (``check_precision``)."""
    if precision == "bf16":
        check_precision(device, precision)
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def machine_info() -> dict:
    """What ran an experiment or benchmark (for result files)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def compile_blocks(model: nn.Module, **options) -> int:
    """``torch.compile`` every transformer block in place (the loop over S and the stages stay eager, so a new
    S never triggers a recompilation). Returns the number of compiled blocks."""
    n = 0
    for module in model.modules():
        if isinstance(module, Block):
            module.compile(**options)
            n += 1
    return n
