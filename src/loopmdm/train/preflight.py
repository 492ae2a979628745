"""Memory pre-flight: before the first training step, find out whether the largest step the run can draw fits.

A step's memory grows with the micro-batch and with the loop count S: every loop of the mid block (n_m layers,
run S times) keeps its activations for backward. ``check_memory`` runs one forward / backward at the largest S
the run draws and the full micro-batch (``train.batch_size / (world_size x train.grad_accum)`` sequences) and
compares the peak with what the device can hold; a step that does not fit becomes one ``ConfigError`` line that
names what was tried and which option would fit (``model.checkpoint_loops=true``, truncated backprop
``model.backprop_depth=k``, a larger ``train.grad_accum`` or a smaller ``train.batch_size``).

The options are estimated from a linear model of a step's bytes (``MemoryModel``), fitted on three tiny steps
(1 sequence at S = 1 and S = 2, 2 sequences at S = 1) with full backprop:

    bytes(rows, S) = static + const + rows * (per_row + S * per_loop)

On CUDA each tiny step is measured with the allocator's peak (``torch.cuda.max_memory_allocated``); elsewhere,
where no allocator peak exists, with the bytes of the tensors autograd saves for backward plus the gradients
(CPU runs are checked only against an explicit budget). The pre-flight changes nothing the run depends on: the
RNG states are restored, gradients cleared, no optimizer step is taken.

``expandable_segments`` sets ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` for CUDA runs (unless the user
set an allocator configuration): the caching allocator then grows segments instead of fragmenting memory over
the different activation sizes that different S produce.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn

from ..diffusion import Batch, Noise
from ..errors import ConfigError
from ..runtime import autocast_context
from . import distributed
from .distributed import DistEnv

ALLOC_CONF = "expandable_segments:True"
PROBES = ((1, 1), (1, 2), (2, 1))  # (sequences, S) of the tiny steps that fit the MemoryModel


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


# --------------------------------------------------------------------------- the model of a step's bytes


@dataclass(frozen=True)
class MemoryModel:
    """Bytes of one training step at ``rows`` sequences per micro-batch and loop count S.

    static: held between steps (parameters and optimizer state); const: a step's bytes that do not grow with
    the rows (gradients, FSDP-gathered parameters, autocast weight copies); per_row: activation bytes of one
    sequence that do not grow with S (embedding, head n_h, tail n_o, LM head); per_loop: activation bytes of
    one sequence for each loop whose graph is kept (the mid block's n_m layers); state: one loop state h [T, D]
    of one sequence (what a checkpointed loop keeps)."""

    static: int
    const: int
    per_row: int
    per_loop: int
    state: int

    def peak(
        self, rows: int, loops: int, depth: Optional[int] = None, checkpoint: bool = False
    ) -> int:
        """Bytes of a step at S = ``loops``; ``depth``: truncated backprop through the last k loops only (the
        others run without a graph); ``checkpoint``: each kept loop stores its input state and is recomputed in
        backward, one loop's activations at a time."""
        kept = loops if depth is None else min(depth, loops)
        per_seq = kept * self.state + self.per_loop if checkpoint and kept else kept * self.per_loop
        return self.static + self.const + rows * (self.per_row + per_seq)

    @classmethod
    def fit(cls, measured: dict[tuple[int, int], int], static: int, state: int) -> "MemoryModel":
        """From a step's bytes above the idle model at ``PROBES``: (1, 1), (1, 2) and (2, 1) (sequences, S)."""
        per_loop = max(measured[1, 2] - measured[1, 1], 0)
        per_row = max(measured[2, 1] - measured[1, 1] - per_loop, 0)
        const = max(measured[1, 1] - per_row - per_loop, 0)
        return cls(static=static, const=const, per_row=per_row, per_loop=per_loop, state=state)


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
        return _cuda_peak(
            train_model, objective, batch, noise, loops, device, precision, absolute=True
        )
    except torch.OutOfMemoryError:
        pass
    # (outside the except: its traceback no longer holds the step's tensors)
    _recover(model, device)
    return None


def probe(
    model: nn.Module, objective, data, device: torch.device, precision: str, static: int, state: int
) -> MemoryModel:
    """Fit the ``MemoryModel`` on the tiny ``PROBES`` steps of ``model`` with full backprop (no checkpointing, no
    truncation; random deep supervision supervises every loop), on worst-case rows of ``data``."""
    measure = _cuda_peak if device.type == "cuda" else _saved_bytes
    deep = (
        {"deep_supervision": "all"}
        if getattr(objective, "deep_supervision", None) == "random"
        else {}
    )
    measured = {}
    with (
        overridden(model_cfg(model), checkpoint_loops=False, backprop_depth=None),
        overridden(objective, **deep),
    ):
        for n, s in PROBES:
            batch, noise = worst_case_rows(objective, data, n)  # x0 [n, L]
            measured[n, s] = measure(model, objective, batch, noise, s, device, precision)
    return MemoryModel.fit(measured, static, state)


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


# --------------------------------------------------------------------------- measuring one step


def _forward_backward(
    model: nn.Module,
    objective,
    batch: Batch,
    noise: Optional[Noise],
    loops: int,
    device: torch.device,
    precision: str,
) -> None:
    with autocast_context(device, precision):
        out = objective.loss(model, batch.to(device), loops, noise)
    out.loss.backward()


def _cuda_peak(
    model, objective, batch, noise, loops, device, precision, absolute: bool = False
) -> int:
    """The allocator's peak during one forward / backward: above the idle model, or ``absolute``."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _forward_backward(model, objective, batch, noise, loops, device, precision)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    _clear_grads(model)
    return int(peak if absolute else peak - before)


def _saved_bytes(model, objective, batch, noise, loops, device, precision) -> int:
    """Bytes of the tensors autograd saves for backward during one step (each storage once, parameters
    excluded) plus the gradients it leaves: the activation memory where no allocator peak is available."""
    own = {_storage(p)[0] for p in _local_params(model)}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr, nbytes = _storage(t)
        if ptr not in own:
            saved[ptr] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _forward_backward(model, objective, batch, noise, loops, device, precision)
    grads = sum(_local(p.grad).nbytes for p in model.parameters() if p.grad is not None)
    _clear_grads(model)
    return sum(saved.values()) + grads


def _storage(t: torch.Tensor) -> tuple[int, int]:
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # a tensor without plain storage
        return id(t), t.numel() * t.element_size()


# --------------------------------------------------------------------------- pieces


def worst_case_rows(objective, data, rows: int) -> tuple[Batch, Optional[Noise]]:
    """The first ``rows`` training sequences with every free position masked (t near 1, u = 0): the most
    positions the LM head and the loss can ever run on. x0 [rows, L]."""
    idx = np.arange(rows) % len(data.train)
    batch = data.batch("train", idx)
    length = batch.x0.shape[1]
    # no noise (next-token objective)
    if objective.draw(2, length, torch.Generator().manual_seed(0)) is None:
        return batch, None
    # t [rows], u [rows, L]
    return batch, Noise(torch.full((rows,), 1.0 - 1e-3), torch.zeros(rows, length), None)


def device_budget(device: torch.device) -> int:
    """What a CUDA device can give PyTorch now: its free memory plus what PyTorch's allocator already holds."""
    torch.cuda.synchronize(device)
    return int(torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device))


def optimizer_state_bytes(model: nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> int:
    """Bytes the optimizer will allocate at its first step (AdamW: two moments per parameter); 0 once it has."""
    if optimizer is not None and (
        optimizer.state or not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
    ):
        return 0
    return 2 * sum(_local(p).nbytes for p in model.parameters() if p.requires_grad)


def idle_bytes(model: nn.Module, device: torch.device) -> int:
    """What the model holds between steps: the allocator's count on CUDA, else this rank's parameters and
    buffers."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return sum(_local(t).nbytes for t in [*model.parameters(), *model.buffers()])


def model_cfg(model: nn.Module):
    return getattr(model, "config", None) or _NoConfig()


class _NoConfig:
    checkpoint_loops, backprop_depth = False, None


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _local_params(model: nn.Module) -> list[torch.Tensor]:
    return [_local(p) for p in model.parameters()]


def _clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


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
    _clear_grads(model)
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
        _clear_grads(model)
        model.train(mode)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)


@contextlib.contextmanager
def overridden(obj: Any, **values: Any) -> Iterator[None]:
    """Set the attributes of ``obj`` it has for the block, and restore them."""
    values = {k: v for k, v in values.items() if hasattr(obj, k)}
    old = {k: getattr(obj, k) for k in values}
    try:
        for k, v in values.items():
            setattr(obj, k, v)
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


def fmt_bytes(n: Optional[float]) -> str:
    """Bytes for a message: '1.5 GiB', '320 MiB', '12 KiB'."""
    if n is None:
        return "?"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 10 * size else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"
