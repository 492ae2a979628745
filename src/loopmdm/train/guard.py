"""What stops a run, and how it says why: out-of-memory as a one-line error naming the knobs that reduce memory,
non-finite steps skipped and counted until ``train.max_bad_steps`` in a row (then the likely causes), and
SIGTERM / SIGINT turned into "save this step and exit" (a second Ctrl-C stops at once)."""

from __future__ import annotations

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
        "model.max_seq_len, or set model.checkpoint_loops=true")


def divergence_message(cfg, run_dir: Path, bad_in_row: int, step: int, loss: float, gnorm: float) -> str:
    """Why a run diverged, the likely causes and the checkpoint to continue from."""
    tc = cfg.train
    causes = [f"learning rate too high (train.lr={tc.lr}, train.warmup_steps={tc.warmup_steps}): lower train.lr "
              "or raise train.warmup_steps"]
    if tc.precision != "fp32":
        causes.append(f"overflow in train.precision={tc.precision}: use train.precision=fp32")
    if tc.grad_clip == 0:
        causes.append("no gradient clipping (train.grad_clip=0): set train.grad_clip=1.0")
    kept = list_checkpoints(run_dir / "checkpoints")
    last = (f"the last good checkpoint {str(kept[-1])!r} is kept; after the fix continue with --resume "
            f"{str(run_dir)!r}") if kept else "no checkpoint was saved yet"
    return (f"training diverged: {bad_in_row} non-finite steps in a row before step {step} "
            f"(loss={loss}, grad_norm={gnorm}); likely causes: {'; '.join(causes)}; {last}")


class StopSignals:
    """While active (``with StopSignals() as stop``), SIGTERM / SIGINT set ``stop.requested`` (and ``stop.name``)
    instead of killing the process; a second signal raises KeyboardInterrupt (the last checkpoint is intact)."""

    def __init__(self):
        self.requested, self.name = False, None
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.name = True, signal.Signals(signum).name

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
