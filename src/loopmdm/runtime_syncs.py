"""Host-device synchronisations, counted on any machine: ``SyncCounter``.

On an accelerator the host queues kernels and runs ahead; an op whose *result on the host* depends on device
data makes it wait until the device has caught up (a sync), and a hot loop with syncs leaves the device idle
between them. The ops that force one, by the name they are counted under:

* ``item``: ``aten._local_scalar_dense`` (``.item()``, ``float(t)``, ``int(t)``, ``bool(t)``, ``if t.any():``);
* ``nonzero``: ``aten.nonzero`` (also ``torch.where(cond)``, ``nonzero(as_tuple=True)``, ``argwhere``), and
  ``unique``: output shapes that depend on the data;
* ``bool_index``: ``aten.index`` / ``index_put`` with a boolean index (``x[mask]``, ``x[mask] = values``; one
  mask and one value is a ``masked_fill``, no sync), ``masked_select``;
* ``repeat_interleave``: with a tensor of repeats and no ``output_size``;
* ``equal``: ``torch.equal`` (a Python bool);
* ``to_host``: a copy of a device tensor to the CPU (``.cpu()``, ``.to("cpu")``, ``.tolist()``, ``copy_`` into
  a CPU tensor), which the host must wait for;
* ``to_device``: a *blocking* copy from the CPU to the device (``.to(device)`` without ``non_blocking=True``,
  ``torch.tensor(data, device=...)``): PyTorch synchronises the stream after it.

``SyncCounter`` is a ``TorchDispatchMode``: it sees every aten op run inside its ``with`` block and counts those
by name (``counts``), and by the line of our code that asked (``where``). ``device`` (e.g. ``"cuda"``) counts only
ops on tensors of that device type. Without it (a CPU-only run) every tensor stands for the accelerator's, so the
count is what the same code would sync on a GPU; the copies, which are no-ops on the CPU, are then counted where
they are asked for by our code (PyTorch's own ``.to`` calls move tensors already on the device): ``.tolist()`` /
``.cpu()`` / ``.cuda()``, ``.to`` naming a device without ``non_blocking``, ``torch.tensor`` / ``torch.as_tensor``
naming a device. Host-side work that never touches the device (data, noise,
the index sets found from them) reads its values with NumPy, which the counter does not see: ``.numpy()`` exists
only for CPU tensors, so such code cannot sync.

    with SyncCounter() as syncs:
        train_step(...)
    syncs.total, syncs.counts, syncs.where  # e.g. 3, {"item": 2, "nonzero": 1}, {"item at step.py:32": 2, ...}
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

ALWAYS = {  # op packet -> the name it is counted under
    aten._local_scalar_dense: "item",
    aten.nonzero: "nonzero",
    aten.argwhere: "nonzero",
    aten._unique2: "unique",
    aten.unique_dim: "unique",
    aten.unique_consecutive: "unique",
    aten.masked_select: "bool_index",
    aten.equal: "equal",
}
READS = (aten.index, aten._unsafe_index)
WRITES = (aten.index_put, aten.index_put_, aten._index_put_impl_)
TORCH_DIR = os.path.dirname(torch.__file__)


def _tensors(args: Any) -> list[torch.Tensor]:
    """The tensors among ``args`` (one level of lists / tuples: index lists)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def _bool_indexing(packet, args: tuple) -> bool:
    """``x[mask]`` / ``x[mask] = values``, except one mask given one value (PyTorch runs a masked_fill)."""
    if packet not in READS + WRITES or len(args) < 2:
        return False
    if not any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1]
    ):
        return False
    fill = (
        packet in WRITES
        and len(args[1]) == 1
        and isinstance(args[2], torch.Tensor)
        and args[2].numel() == 1
    )
    return not fill


def _copy_name(packet, args: tuple, kwargs: dict) -> Optional[str]:
    """``to_host`` / ``to_device`` for a copy between the CPU and a device that the host waits for."""
    if packet is aten._to_copy:
        target = kwargs.get("device")
        src, dst = args[0].device.type, None if target is None else torch.device(target).type
        blocking = not kwargs.get("non_blocking")
    elif packet is aten.copy_:
        src, dst = args[1].device.type, args[0].device.type
        blocking = not (len(args) > 2 and args[2]) and not kwargs.get("non_blocking")
    else:
        return None
    if dst is None or src == dst:
        return None
    if dst == "cpu":
        return "to_host"  # the host reads what the device computed: it waits, non-blocking or not
    return "to_device" if src == "cpu" and blocking else None


def sync_name(func, args: tuple, kwargs: dict) -> Optional[str]:
    """The name an aten op is counted under when it forces a host-device sync, else None."""
    packet = func.overloadpacket
    if packet in ALWAYS:
        return ALWAYS[packet]
    if (
        packet is aten.repeat_interleave
        and func is not aten.repeat_interleave.self_int
        and kwargs.get("output_size") is None
    ):
        return "repeat_interleave"
    if _bool_indexing(packet, args):
        return "bool_index"
    return _copy_name(packet, args, kwargs)


def caller() -> str:
    """``file:line`` of the innermost frame outside PyTorch and this module (the line that asked for the sync)."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(TORCH_DIR) or frame.f_code.co_filename == __file__
    ):
        frame = frame.f_back
    return (
        "?" if frame is None else f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
    )


def _from_torch() -> bool:
    """Whether PyTorch's own code made the call (e.g. ``clip_grad_norm_`` moving norms to the device they are on:
    no-ops on an accelerator too), rather than ours."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.startswith(TORCH_DIR)


def _names_device(args: tuple, kwargs: dict) -> bool:
    """``Tensor.to`` / factory arguments that name a device (a string or ``torch.device``)."""
    return kwargs.get("device") is not None or any(
        isinstance(a, (str, torch.device)) for a in args[1:]
    )


class _CpuCopies(TorchFunctionMode):
    """On a CPU-only count: the copies a device would make, which run no aten op on the CPU (see the module
    docstring)."""

    def __init__(self, owner: "SyncCounter"):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = self.copy_name(func, args, kwargs)
        if name is not None and not _from_torch():
            self.owner.record(name)
        return func(*args, **kwargs)

    @staticmethod
    def copy_name(func, args: tuple, kwargs: dict) -> Optional[str]:
        if func in (torch.tensor, torch.as_tensor):
            return "to_device" if kwargs.get("device") is not None else None
        if not args or not isinstance(args[0], torch.Tensor) or args[0].device.type != "cpu":
            return None
        if func in (torch.Tensor.tolist, torch.Tensor.cpu):
            return "to_host"
        if func is torch.Tensor.cuda or (
            func is torch.Tensor.to
            and _names_device(args, kwargs)
            and not kwargs.get("non_blocking")
        ):
            return "to_device"
        return None


class SyncCounter(TorchDispatchMode):
    """Counts the ops run inside ``with SyncCounter() as c:`` that force a host-device sync on an accelerator (see
    the module docstring). ``device``: count only ops on tensors of this device type (e.g. ``"cuda"``); None:
    every op (a CPU-only run, where every tensor stands for the device's). ``counts``: name -> number; ``where``:
    ``"name at file:line"`` -> number; ``total``: their sum."""

    def __init__(self, device: Optional[str | torch.device] = None):
        super().__init__()
        self.device = None if device is None else torch.device(device).type
        self.counts: Counter = Counter()
        self.where: Counter = Counter()
        self._copies = _CpuCopies(self) if self.device in (None, "cpu") else None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def record(self, name: str) -> None:
        self.counts[name] += 1
        self.where[f"{name} at {caller()}"] += 1

    def __enter__(self) -> "SyncCounter":
        if self._copies is not None:
            self._copies.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        if self._copies is not None:
            self._copies.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = sync_name(func, args, kwargs)
        if name is not None and (
            self.device is None or any(t.device.type == self.device for t in _tensors(args))
        ):
            self.record(name)
        return func(*args, **kwargs)
