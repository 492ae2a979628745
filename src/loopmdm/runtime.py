"""The machine and how we run on it: device choice, threads, bf16 autocast, ``torch.compile`` of the
transformer blocks, SDPA backend selection, the accelerator peak used for MFU (model FLOPs utilisation), the
peak memory of a step, and a description of the machine for result files.

Measured effects (see docs/ecosystem.md): compile the blocks on CUDA; on CPU it does not pay for tiny models.
bf16 autocast (``train.precision=bf16``), activation checkpointing of loops (``model.checkpoint_loops``),
truncated backprop (``model.backprop_depth``) and fused AdamW on CUDA live in the model / trainer.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import platform
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.nn as nn

from .errors import ConfigError
from .model.layers import Block


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; CUDA asked for but
    missing is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} but CUDA is not available; use cpu or auto")
    return dev


def set_threads(threads: Optional[int]) -> None:
    """``torch.set_num_threads`` when a count is given (one thread is fastest for tiny models on a busy CPU)."""
    if threads:
        torch.set_num_threads(threads)


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast when ``precision == 'bf16'`` (CPU or CUDA), otherwise a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def machine_info() -> dict:
    """What ran an experiment or benchmark (for result files)."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}

# Dense bf16 tensor-core peak, FLOP/s, by a substring of torch.cuda.get_device_name() (first match wins).
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / NVL per-GPU dense
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)


def compile_blocks(model: nn.Module, **options) -> int:
    """``torch.compile`` every transformer block in place (the loop over S and the stages stay eager, so a new
    S never triggers a recompilation). Returns the number of compiled blocks."""
    n = 0
    for module in model.modules():
        if isinstance(module, Block):
            module.compile(**options)
            n += 1
    return n


def peak_flops(device: torch.device) -> Optional[float]:
    """The card's dense bf16 peak in FLOP/s, or None when unknown (CPU, unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


@contextlib.contextmanager
def sdpa_backend(name: Optional[str]) -> Iterator[None]:
    """Restrict ``scaled_dot_product_attention`` to one backend (``flash``, ``efficient``, ``cudnn``, ``math``);
    None leaves PyTorch's automatic choice (flash / memory-efficient on CUDA when the inputs allow)."""
    if name is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    if name not in table:
        raise ConfigError(f"SDPA backend {name!r} is unknown; use one of: {', '.join(SDPA_BACKENDS)}")
    with sdpa_kernel(table[name]):
        yield


# --------------------------------------------------------------------------- CPU peak memory (Linux)

def _proc_status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` (peak RSS) of this process from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _peak_child(make: Callable[..., Callable[[], Any]], args: tuple, repeats: int, q) -> None:
    step = make(*args)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = _proc_status_bytes("VmRSS")
    for _ in range(repeats):
        step()
    q.put(_proc_status_bytes("VmHWM") - before)


def peak_rss_growth(make: Callable[..., Callable[[], Any]], *args: Any, repeats: int = 2) -> int:
    """Bytes by which the peak resident set grows while ``make(*args)()`` runs ``repeats`` times, measured in a
    fresh spawned process (``make`` must be importable: a module-level function returning the step to time).

    ``ru_maxrss`` cannot be used: Linux carries it across exec, so a spawned child starts with its parent's
    peak. The per-address-space peak ``VmHWM`` is reset through /proc/self/clear_refs instead. PyTorch's CPU
    allocator has no peak counter and tracemalloc does not see its C++ allocations, hence the process level."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(make, args, repeats, q))
    p.start()
    out = q.get()
    p.join()
    return out
