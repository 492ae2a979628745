"""What the sampling benchmarks share: the smoke-size model of their ``--quick`` runs and how they get a model
they were not given (trained, resumed or reused through ``loopmdm.experiments.common.train_or_reuse``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from loopmdm.config import load_config

# --quick: a smoke-size tiny-preset model (the pipeline, not the numbers)
QUICK_TINY = [
    "model.d_model=64",
    "model.n_heads=2",
    "model.max_seq_len=64",
    "model.vocab_size=512",
    "model.cond_dim=32",
    "train.max_steps=60",
    "train.eval_every=60",
    "train.save_every=60",
    "train.batch_size=16",
    "data.max_train_bytes=400000",
]


def train_run(run: Path, preset: str, overrides: list[str], what: str) -> Path:
    """A CPU fp32 run of ``preset`` + ``overrides`` in ``run``: reused when finished with the same config, resumed
    when unfinished, so an interrupted benchmark continues where it stopped (a run stopped by a signal raises
    ``LoopMDMError``)."""
    from loopmdm.experiments.common import train_or_reuse

    cfg = load_config(preset, None, ["train.precision=fp32", "train.device=cpu"] + overrides)
    print(f"{what} in {run} ({cfg.train.max_steps} steps)...", file=sys.stderr)
    t0 = time.perf_counter()
    train_or_reuse(cfg, run, log=lambda s: print(s, file=sys.stderr))
    print(f"  ready after {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return run
