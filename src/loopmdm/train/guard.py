"""What stops a run, and how it says why: out-of-memory as a one-line error naming the knobs that reduce memory,
non-finite steps skipped and counted until ``train.max_bad_steps`` in a row (then the likely causes), and
SIGTERM / SIGINT turned into "save this step and exit" (a second Ctrl-C stops at once).

A non-finite step is found on the host at the steps whose loss the trainer reads (the logged ones), and on the
device at the others (``DeviceGuard``), where reading the loss would make the host wait for the device;
``SkippedSteps`` keeps the run's counts of both, records them in metrics.jsonl and stops a diverged run."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import list_checkpoints
from ..errors import ConfigError, LoopMDMError


class TrainingDiverged(LoopMDMError):
    """Too many non-finite steps in a row, or weights that became non-finite."""


def out_of_memory(e: BaseException, cfg, step: int, loops: int) -> Optional[ConfigError]:
    """The one-line error for an out-of-memory exception ``e`` (None when ``e`` is something else)."""
    text = str(e)
    if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and "alloc" not in text.lower():
        return None
    tc, m = cfg.train, cfg.model
    return ConfigError(
        f"out of memory at step {step} (train.batch_size={tc.batch_size}, train.grad_accum={tc.grad_accum}, "
        f"model.max_seq_len={m.max_seq_len}, S={loops}); raise train.grad_accum, lower train.batch_size or "
        "model.max_seq_len, or set model.checkpoint_loops=true"
    )


def divergence_message(
    cfg, run_dir: Path, bad_in_row: int, step: int, loss: float, gnorm: float
) -> str:
    """Why a run diverged, the likely causes and the checkpoint to continue from."""
    tc = cfg.train
    causes = [
        f"learning rate too high (train.lr={tc.lr}, train.warmup_steps={tc.warmup_steps}): lower train.lr "
        "or raise train.warmup_steps"
    ]
    if tc.precision != "fp32":
        causes.append(f"overflow in train.precision={tc.precision}: use train.precision=fp32")
    if tc.grad_clip == 0:
        causes.append("no gradient clipping (train.grad_clip=0): set train.grad_clip=1.0")
    kept = list_checkpoints(run_dir / "checkpoints")
    last = (
        (
            f"the last good checkpoint {str(kept[-1])!r} is kept; after the fix continue with --resume "
            f"{str(run_dir)!r}"
        )
        if kept
        else "no checkpoint was saved yet"
    )
    return (
        f"training diverged: {bad_in_row} non-finite steps in a row before step {step} "
        f"(loss={loss}, grad_norm={gnorm}); likely causes: {'; '.join(causes)}; {last}"
    )


def signal_exit_code(name: Optional[str]) -> int:
    """The shell's exit code for a process stopped by signal ``name`` (128 + its number: SIGINT 130, SIGTERM
    143), so that ``loopmdm train ... && loopmdm sample ...`` stops after an interrupted run."""
    try:
        return 128 + int(signal.Signals[name]) if name else 130
    except KeyError:
        return 130


class SecondSignal(KeyboardInterrupt):
    """A second SIGINT / SIGTERM while a stop is pending: exit at once, without saving (the checkpoint saved last
    is kept). ``exit_code`` is 128 + the signal number; the message was already written to stderr."""

    def __init__(self, name: str):
        super().__init__(f"second {name}: exiting now without saving")
        self.name, self.exit_code, self.reported = name, signal_exit_code(name), True


class StopSignals:
    """While active (``with StopSignals() as stop``), SIGTERM / SIGINT set ``stop.requested`` (and ``stop.name``)
    instead of killing the process; the run then saves the step it is on and stops. A second signal writes
    "second SIGINT: exiting now without saving ..." to stderr and raises ``SecondSignal`` (a KeyboardInterrupt):
    nothing more is saved, a save in progress is abandoned, and the last complete checkpoint stays ``latest``."""

    def __init__(self):
        self.requested, self.name = False, None
        self._old: dict = {}

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            _write_stderr(
                f"second {name}: exiting now without saving; the last saved checkpoint is kept\n"
            )
            raise SecondSignal(name)
        self.requested, self.name = True, name
        _write_stderr(
            f"{name}: finishing this step, then saving it and exiting ({name} again exits at once "
            "without saving)\n"
        )

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)


def _write_stderr(text: str) -> None:
    """Write from a signal handler: ``os.write`` (a buffered ``sys.stderr`` may be in the middle of a write)."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


class DeviceGuard:
    """Non-finite steps found and counted on the device, for the steps whose loss the host does not read.

    ``flag(loss, gnorm)`` is 1.0 ([] float32, on the device) when the loss or the gradient norm is not finite: the
    fused AdamW kernel takes it as ``found_inf`` and leaves weights and moments as they are. ``counts`` [2] holds
    the steps flagged since the last ``settle`` and the run of non-finite steps in a row, which goes on from the
    host's (``in_row``; small counts: exact in float32)."""

    def __init__(self, device: torch.device):
        self.counts = torch.zeros(2, device=device)  # [skipped since the last read, in a row]

    def flag(self, loss: torch.Tensor, gnorm: torch.Tensor) -> torch.Tensor:
        bad = (~(torch.isfinite(loss) & torch.isfinite(gnorm))).float()  # []
        # skipped += bad; in a row: +1 or 0
        self.counts += torch.stack([bad, self.counts[1] * (bad - 1.0) + bad])
        return bad

    def in_row(self, n: int) -> None:
        """The run of non-finite steps in a row is ``n`` (as the host counted it at a step it checked)."""
        self.counts[1] = n

    def settle(self, values: list[float]) -> tuple[int, int]:
        """(skipped, in a row) from ``counts`` as read on the host (``values``); the skipped count starts over."""
        self.counts[0] = 0
        return int(values[0]), int(values[1])


class SkippedSteps:
    """The run's non-finite steps: found on the host at the steps whose loss the trainer reads, and on the device
    (``DeviceGuard``; ``on_device`` False where the optimizer cannot skip there) at the others. Each is counted
    (``in_row``, ``total``: both checkpointed), written to ``metrics`` (the open metrics.jsonl) and logged; after
    ``train.max_bad_steps`` in a row the run stops with ``TrainingDiverged`` and the likely causes. ``step``
    arguments are the trainer's step count (the steps done)."""

    def __init__(self, cfg, run_dir: Path, device: torch.device, on_device: bool, log):
        self.cfg, self.run_dir, self.device, self.log = cfg, run_dir, device, log
        self.guard = DeviceGuard(device) if on_device else None
        self.in_row, self.total = 0, 0

    def set_in_row(self, n: int) -> None:
        """Non-finite steps in a row, as the host counted them; the device guard goes on from there."""
        self.in_row = n
        if self.guard is not None:
            self.guard.in_row(n)

    def flag(self, loss, gnorm) -> torch.Tensor:
        """The device guard's flag for a step the host does not read (1.0 where it is skipped)."""
        return self.guard.flag(self._on_device(loss), self._on_device(gnorm))

    def read(self, loss, gnorm, step: int, metrics) -> tuple[float, float]:
        """The step's loss and gradient norm as Python floats, read together with the device guard's counts in one
        transfer; non-finite steps skipped on the device since the last read are recorded first."""
        parts = [
            self._on_device(loss).double().reshape(1),
            self._on_device(gnorm).double().reshape(1),
        ]
        if self.guard is not None:
            parts.append(self.guard.counts.double())
        values = torch.cat(parts).tolist()
        if self.guard is not None:
            self._device_skips(*self.guard.settle(values[2:]), step, metrics)
        return values[0], values[1]

    def settle(self, step: int, metrics) -> None:
        """Take the device guard's counts (one sync) before a checkpoint or the end of the run."""
        if self.guard is not None:
            self._device_skips(*self.guard.settle(self.guard.counts.tolist()), step, metrics)

    def found_on_host(self, loss: float, gnorm: float, step: int, metrics) -> None:
        """Step ``step + 1`` read a non-finite loss or gradient norm (its gradients are dropped by the caller):
        count, record and log it."""
        self.set_in_row(self.in_row + 1)
        self.total += 1
        _write_line(
            metrics,
            {
                "step": step + 1,
                "skipped": True,
                "loss": str(loss),
                "grad_norm": str(gnorm),
                "bad_in_row": self.in_row,
                "bad_total": self.total,
            },
        )
        self.log(
            f"step {step + 1}: non-finite loss={loss} / grad_norm={gnorm}; skipped "
            f"({self.in_row}/{self.cfg.train.max_bad_steps} in a row)"
        )
        self._stop_if_diverged(step, loss, gnorm)

    def _device_skips(self, skipped: int, in_row: int, step: int, metrics) -> None:
        """Record the ``skipped`` steps the device guard skipped since its last read (the run of non-finite steps
        in a row is ``in_row`` now)."""
        self.in_row = in_row
        if not skipped:
            return
        self.total += skipped
        _write_line(
            metrics,
            {
                "step": step,
                "skipped": True,
                "skipped_steps": skipped,
                "bad_in_row": in_row,
                "bad_total": self.total,
            },
        )
        self.log(
            f"before step {step + 1}: {skipped} step{'s' if skipped != 1 else ''} with a non-finite loss "
            f"or grad_norm skipped ({in_row}/{self.cfg.train.max_bad_steps} in a row)"
        )
        self._stop_if_diverged(step, float("nan"), float("nan"))

    def _stop_if_diverged(self, step: int, loss: float, gnorm: float) -> None:
        if self.in_row >= self.cfg.train.max_bad_steps:
            raise TrainingDiverged(
                divergence_message(self.cfg, self.run_dir, self.in_row, step + 1, loss, gnorm)
            )

    def _on_device(self, value: torch.Tensor | float) -> torch.Tensor:
        """A step's loss or gradient norm as a device scalar (steps replaced under test may return floats)."""
        if isinstance(value, torch.Tensor):
            return value
        return torch.full((), float(value), dtype=torch.float64, device=self.device)


def _write_line(metrics, record: dict) -> None:
    metrics.write(json.dumps(record) + "\n")
    metrics.flush()
