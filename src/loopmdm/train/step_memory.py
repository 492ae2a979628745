"""The bytes of one training step at ``rows`` sequences and loop count S: modelled (``MemoryModel``, a linear fit
on three tiny steps) and measured (the CUDA allocator's peak, or, where there is no allocator peak, the bytes of
the tensors autograd saves for backward plus the gradients).

A step's memory grows with the micro-batch and with S: every loop of the mid block (n_m layers, run S times)
keeps its activations for backward. The model is fitted on ``PROBES`` with full backprop:

    bytes(rows, S) = static + const + rows * (per_row + S * per_loop)

and answers for checkpointed loops and truncated backprop too. ``train/preflight.py`` uses it to decide whether
a run fits and which option would.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn

from ..diffusion import Batch, Noise
from ..runtime import autocast_context

PROBES = ((1, 1), (1, 2), (2, 1))  # (sequences, S) of the tiny steps that fit the MemoryModel


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


def probe(
    model: nn.Module, objective, data, device: torch.device, precision: str, static: int, state: int
) -> MemoryModel:
    """Fit the ``MemoryModel`` on the tiny ``PROBES`` steps of ``model`` with full backprop (no checkpointing, no
    truncation; random deep supervision supervises every loop), on worst-case rows of ``data``."""
    measure = cuda_peak if device.type == "cuda" else saved_bytes
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


def cuda_peak(
    model, objective, batch, noise, loops, device, precision, absolute: bool = False
) -> int:
    """The allocator's peak during one forward / backward: above the idle model, or ``absolute``."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _forward_backward(model, objective, batch, noise, loops, device, precision)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    clear_grads(model)
    return int(peak if absolute else peak - before)


def saved_bytes(model, objective, batch, noise, loops, device, precision) -> int:
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
    clear_grads(model)
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


def clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


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
