"""Memory pre-flight: before the first training step, find out whether the largest step the run can draw fits.

A step's memory grows with the micro-batch and with the loop count S: every loop of the mid block (n_m layers,
run S times) keeps its activations for backward. ``check_memory`` runs one forward / backward at the largest S
the run draws and the full micro-batch (``train.batch_size / (world_size x train.grad_accum)`` sequences) and
compares the peak with what the device can hold; a step that does not fit becomes one ``ConfigError`` line that
names what was tried and which option would fit (``model.checkpoint_loops=true``, truncated backprop
``model.backprop_depth=k``, a larger ``train.grad_accum`` or a smaller ``train.batch_size``).

The options are estimated from a linear model of a step's bytes (``step_memory.MemoryModel``), fitted on three
tiny steps with full backprop; on CUDA the real step is measured with the allocator's peak, elsewhere (CPU runs
are checked only against an explicit budget) the model's estimate decides. The pre-flight changes nothing the
run depends on: the RNG states are restored, gradients cleared, no optimizer step is taken.

``expandable_segments`` sets ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` for CUDA runs (unless the user
set an allocator configuration): the caching allocator then grows segments instead of fragmenting memory over
the different activation sizes that different S produce.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn

from ..diffusion import Batch, Noise
from ..errors import ConfigError
from . import distributed, step_memory
from .distributed import DistEnv
from .step_memory import (
    MemoryModel,
    clear_grads,
    device_budget,
    idle_bytes,
    optimizer_state_bytes,
    probe,
    worst_case_rows,
)

ALLOC_CONF = "expandable_segments:True"


def expandable_segments(device: torch.device) -> torch.device:
    """On CUDA, set ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` unless the user configured the allocator
    (``PYTORCH_CUDA_ALLOC_CONF`` / ``PYTORCH_ALLOC_CONF``); call it before CUDA initialises (if CUDA already
    has, the setting is applied to the running allocator). Returns ``device`` so it wraps ``pick_device``."""
    if torch.device(device).type != "cuda" or any(
        os.environ.get(v) for v in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
    ):
        return device
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOC_CONF
    if torch.cuda.is_initialized() and hasattr(torch.cuda.memory, "_set_allocator_settings"):
        torch.cuda.memory._set_allocator_settings(ALLOC_CONF)
    return device


@dataclass(frozen=True)
class MemoryReport:
    """What the pre-flight found: the step tried (S = ``loops``, ``rows`` sequences per micro-batch), its bytes
    with the optimizer state (``measured`` on the device, else estimated) and the ``budget`` it was held to."""

    loops: int
    rows: int
    needed: int
    budget: int
    measured: bool


# --------------------------------------------------------------------------- the check


def check_memory(
    model: nn.Module,
    train_model: nn.Module,
    objective,
    data,
    cfg,
    device: torch.device,
    env: Optional[DistEnv] = None,
    *,
    loops: Optional[int] = None,
    optimizer: Optional[torch.optim.Optimizer] = None,
    budget_bytes: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> Optional[MemoryReport]:
    """Check that one step at the largest S (``loops``, default ``cfg.diffusion.max_loops``) on the full
    micro-batch fits; raise a one-line ``ConfigError`` naming the options that would fit when it does not.

    model: the unwrapped module (its parameters, config and the tiny probe steps); train_model: the module the
    step runs (DDP / FSDP wrapper or ``model``); objective: the training objective; data: the prepared data
    (``data.batch("train", idx)``; its first rows are used, every position masked: the LM head's worst case);
    optimizer: its state, when not allocated yet, is counted (AdamW: two moments per parameter);
    budget_bytes: the bytes a step may use (default on CUDA: what the device can still give PyTorch; on other
    devices the check runs only with a budget). Every rank runs it; they fail together."""
    env = env or DistEnv(device=device)
    if device.type != "cuda" and budget_bytes is None:
        return None
    tc = cfg.train
    loops = int(loops or cfg.diffusion.max_loops)
    rows = tc.batch_size // (env.world_size * tc.grad_accum)
    # x0 [rows, L], every free position masked
    batch, noise = worst_case_rows(objective, data, rows)
    extra = optimizer_state_bytes(model, optimizer)  # allocated by the first optimizer step
    budget = int(budget_bytes) if budget_bytes is not None else device_budget(device)
    static = idle_bytes(model, device) + extra
    state = batch.x0.shape[1] * cfg.model.d_model * 4  # one loop state h [T, D] per sequence, fp32
    measured = device.type == "cuda"
    plan = None
    with preserved(model, device):
        if measured:
            needed = _device_step(
                train_model, model, objective, batch, noise, loops, device, tc.precision
            )
            needed, budget = worst_over_ranks(
                None if needed is None else needed + extra, budget, env
            )
        # (every rank: FSDP's probes are collective)
        if not measured or needed is None or needed > budget:
            plan = probe(model, objective, data, device, tc.precision, static, state)
        if not measured:
            needed = plan.peak(rows, loops, cfg.model.backprop_depth, cfg.model.checkpoint_loops)
            needed, budget = worst_over_ranks(needed, budget, env)
    if needed is None or needed > budget:
        raise ConfigError(advice(plan, cfg, env, rows, loops, needed, budget, measured))
    report = MemoryReport(loops, rows, int(needed), int(budget), measured)
    log(
        f"memory pre-flight: a step at S={loops} with {rows} sequences per micro-batch needs {fmt_bytes(needed)} "
        f"of {fmt_bytes(budget)} ({'measured' if report.measured else 'estimated'}, optimizer state included)"
    )
    return report


def _device_step(
    train_model: nn.Module,
    model: nn.Module,
    objective,
    batch: Batch,
    noise: Optional[Noise],
    loops: int,
    device: torch.device,
    precision: str,
) -> Optional[int]:
    """The real step on CUDA: its absolute allocator peak, or None when it ran out of memory."""
    try:
        return step_memory.cuda_peak(
            train_model, objective, batch, noise, loops, device, precision, absolute=True
        )
    except torch.OutOfMemoryError:
        pass
    # (outside the except: its traceback no longer holds the step's tensors)
    _recover(model, device)
    return None


def advice(
    plan: MemoryModel,
    cfg,
    env: DistEnv,
    rows: int,
    loops: int,
    needed: Optional[int],
    budget: int,
    measured: bool,
) -> str:
    """The one-line error: what was tried, what it needs, and every single option that the ``plan`` says fits
    (``model.checkpoint_loops=true``, ``model.backprop_depth=k``, ``train.grad_accum``, ``train.batch_size``)."""
    tc, mc = cfg.train, cfg.model
    depth, ckpt = mc.backprop_depth, mc.checkpoint_loops
    if needed is None:  # out of memory
        need = (
            f"ran out of device memory (estimated {fmt_bytes(plan.peak(rows, loops, depth, ckpt))})"
        )
    else:
        need = f"needs {fmt_bytes(needed)} ({'measured' if measured else 'estimated'})"
    tried = (
        f"memory pre-flight: one training step at S={loops} (the largest loop count the run draws) with "
        f"{rows} sequences per micro-batch (train.batch_size={tc.batch_size} over {env.world_size} rank(s) x "
        f"train.grad_accum={tc.grad_accum}) {need} but {fmt_bytes(budget)} is available"
    )
    scale = _calibration(plan, rows, loops, depth, ckpt, needed if measured else None)
    options = fitting_options(plan, scale, cfg, env, rows, loops, budget)
    if not options:
        return (
            f"{tried}; not even one sequence fits with model.checkpoint_loops=true: lower model.max_seq_len or "
            f"the largest S (diffusion.s_max / s_fixed), or shard the model with train.fsdp=true over more GPUs"
        )
    return f"{tried}; would fit: {' or '.join(options)}"


def fitting_options(
    plan: MemoryModel, scale: float, cfg, env: DistEnv, rows: int, loops: int, budget: int
) -> list[str]:
    """Each single change that brings the step under ``budget``, with its estimated bytes (``scale``: the
    measured / estimated ratio of the step that was measured): checkpointing every loop, the deepest truncated
    backprop that fits, the smallest ``train.grad_accum`` that fits, the largest smaller batch that fits."""
    tc, mc = cfg.train, cfg.model
    depth, ckpt = mc.backprop_depth, mc.checkpoint_loops

    def est(*args) -> int:
        return _cal(plan, scale, *args)

    options = []
    if not ckpt and loops > 1 and est(rows, loops, depth, True) <= budget:
        options.append(f"model.checkpoint_loops=true (~{fmt_bytes(est(rows, loops, depth, True))})")
    # (deep supervision needs full backprop)
    if cfg.diffusion.deep_supervision == "none" and loops > 1:
        k = next(
            (
                k
                for k in range(min(depth or loops, loops) - 1, 0, -1)
                if est(rows, loops, k, ckpt) <= budget
            ),
            0,
        )
        if k:
            needs = "" if mc.input_injection or mc.n_h == 0 else " with model.input_injection=true"
            options.append(
                f"model.backprop_depth={k}{needs} (~{fmt_bytes(est(rows, loops, k, ckpt))})"
            )
    per_rank = tc.batch_size // env.world_size
    g = next(
        (
            g
            for g in range(tc.grad_accum + 1, per_rank + 1)
            if per_rank % g == 0 and est(per_rank // g, loops, depth, ckpt) <= budget
        ),
        0,
    )
    if g:
        options.append(
            f"train.grad_accum={g} ({per_rank // g} sequences per micro-batch, "
            f"~{fmt_bytes(est(per_rank // g, loops, depth, ckpt))})"
        )
    micro = max((m for m in range(1, rows) if est(m, loops, depth, ckpt) <= budget), default=0)
    if micro:
        options.append(
            f"a smaller batch, train.batch_size={micro * env.world_size * tc.grad_accum}"
        )
    if not options and est(1, loops, depth, True) <= budget:
        options.append(
            f"model.checkpoint_loops=true with train.grad_accum={per_rank} (1 sequence per micro-batch)"
        )
    return options


def _calibration(plan: MemoryModel, rows, loops, depth, ckpt, measured: Optional[int]) -> float:
    """Measured / estimated bytes above the static part for the step that was measured (1 when not measured)."""
    est = plan.peak(rows, loops, depth, ckpt) - plan.static
    if measured is None or est <= 0 or measured <= plan.static:
        return 1.0
    return (measured - plan.static) / est


def _cal(plan: MemoryModel, scale: float, *args) -> int:
    return int(plan.static + scale * (plan.peak(*args) - plan.static))


def worst_over_ranks(needed: Optional[int], budget: int, env: DistEnv) -> tuple[Optional[int], int]:
    """The largest step (None: some rank ran out of memory) and the smallest budget over the ranks (one tiny
    all-reduce under torchrun), so that every rank decides, and words its error, alike."""
    if not env.enabled:
        return needed, budget
    t = torch.tensor(
        [needed or 0, -budget, int(needed is None)], dtype=torch.int64, device=env.device
    )
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return (None if int(t[2]) else int(t[0])), -int(t[1])


def _recover(model: nn.Module, device: torch.device) -> None:
    """After an out-of-memory step: drop its gradients, reset FSDP2's per-step state, return cached blocks."""
    clear_grads(model)
    if distributed.is_sharded(model) and hasattr(model, "reset_iter_state"):
        model.reset_iter_state()
    torch.cuda.empty_cache()


@contextlib.contextmanager
def preserved(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run the pre-flight without a trace: RNG states (CPU and this CUDA device) restored, training mode set
    and restored, gradients cleared, the CUDA peak counter reset afterwards."""
    mode = model.training
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.train()
            yield
    finally:
        clear_grads(model)
        model.train(mode)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)


def fmt_bytes(n: Optional[float]) -> str:
    """Bytes for a message: '1.5 GiB', '320 MiB', '12 KiB'."""
    if n is None:
        return "?"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"
