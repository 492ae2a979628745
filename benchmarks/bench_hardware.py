"""What the benchmarks need from the hardware and nothing else does: the dense bf16 peak of a GPU (for MFU),
restricting SDPA to one backend, and the peak resident-set growth of a step on CPU (Linux)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from loopmdm.errors import ConfigError

# Dense bf16 tensor-core peak, FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name(), compared
# case-insensitively; the first match wins, so the specific names come before the family name.
PEAK_BF16_FLOPS = (
    ("GH200", 989e12),
    ("H200 NVL", 835e12),
    ("H200", 989e12),  # H200 SXM: "NVIDIA H200"
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # H100 SXM: "NVIDIA H100 80GB HBM3"
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)


def peak_flops_for_name(name: str) -> Optional[float]:
    """The dense bf16 peak in FLOP/s of a card named ``name`` (as ``torch.cuda.get_device_name()`` spells it,
    e.g. "NVIDIA H100 80GB HBM3"), or None when the table does not list it."""
    lowered = name.lower()
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in lowered:
            return flops
    return None


def peak_flops(device: torch.device | str) -> Optional[float]:
    """The card's dense bf16 peak in FLOP/s, or None when unknown (CPU, unlisted GPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


# bf16 below this share of the fp32 matmul rate means the CPU has no bf16 instructions (AVX-512 BF16 / AMX) and
# PyTorch emulates it: 0.83 against 97 GFLOP/s on an AVX2-only EPYC, where a 2048^2 bf16 product takes seconds
SLOW_BF16_SHARE = 0.25


def slow_bf16_note(
    n: int = 256, reps: int = 3, seconds: Optional[Callable[[torch.dtype], float]] = None
) -> Optional[str]:
    """None when bf16 matmuls run at least ``SLOW_BF16_SHARE`` of the fp32 rate on this CPU, else a note saying why
    the bf16 rows are skipped (measured on a product small enough to finish in well under a second when bf16 is
    emulated; ``seconds(dtype)`` replaces the timing). GPUs always return None."""
    if torch.cuda.is_available():
        return None

    def matmul_seconds(dtype: torch.dtype) -> float:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        return best

    seconds = seconds or matmul_seconds
    fp32, bf16 = seconds(torch.float32), seconds(torch.bfloat16)
    if fp32 / bf16 >= SLOW_BF16_SHARE:
        return None
    return (
        f"bf16 skipped: a {n}x{n} bf16 matmul runs at {fp32 / bf16:.1%} of the fp32 rate on this CPU (no bf16 "
        "instructions, emulated); its figures would not compare with machines that have them"
    )


SDPA_BACKENDS = ("flash", "efficient", "cudnn", "math")


@contextlib.contextmanager
def sdpa_backend(name: Optional[str]) -> Iterator[None]:
    """Restrict ``scaled_dot_product_attention`` to one backend (``flash``, ``efficient``, ``cudnn``, ``math``);
    None leaves PyTorch's automatic choice (flash / memory-efficient on CUDA when the inputs allow)."""
    if name is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    if name not in table:
        raise ConfigError(
            f"SDPA backend {name!r} is unknown; use one of: {', '.join(SDPA_BACKENDS)}"
        )
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
