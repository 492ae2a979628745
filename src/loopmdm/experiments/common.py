"""Shared plumbing of the experiments: config presets / YAML files, the S sampler used for exact
compute matching, the machine description, and JSON output."""

from __future__ import annotations

import copy
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch
import yaml

from ..config import DiffusionConfig, apply_dict
from ..errors import ConfigError
from ..loops import UniformLoops

C = TypeVar("C")


def load_experiment_config(spec: str | Path, presets: Mapping[str, Callable[[], C]], kind: str) -> C:
    """A named preset (``laptop``, ``paper``) or a YAML file. A file overrides the preset named by its
    optional top-level ``base:`` key (default ``laptop``); unknown keys are one-line ConfigErrors."""
    spec = str(spec)
    if spec in presets:
        return presets[spec]()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"{kind} config {spec!r} is neither a preset ({', '.join(presets)}) nor a YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{kind} config file {spec!r} is not valid YAML ({type(e).__name__}); fix its syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} config file {spec!r} must hold a mapping of settings")
    base = data.pop("base", "laptop")
    if base not in presets:
        raise ConfigError(f"{kind} config file {spec!r}: base={base!r} is unknown; use one of {', '.join(presets)}")
    cfg = presets[base]()
    apply_dict(cfg, data)
    return cfg


class BalancedUniformLoops(UniformLoops):
    """S ~ Uniform{1..S_max} at every step, drawn as shuffled blocks that hold each S once.

    Each step's S is still uniform, but the loop counts of every complete block of S_max steps add up
    to exactly S_max (S_max + 1) / 2, so cumulative training FLOPs follow their expectation and runs can
    be matched in total compute (a variance reduction, like antithetic t). With ``total_steps`` known, the
    last, incomplete block is made of random pairs (s, S_max + 1 - s) (plus the middle value when its length
    is odd), so the run ends within half a loop iteration of its expected FLOPs. The block state is not
    checkpointed: experiments train each run in one go."""

    def __init__(self, cfg: DiffusionConfig, total_steps: int | None = None):
        super().__init__(cfg)
        self.total_steps = total_steps
        self._block: list[int] = []
        self._drawn = 0

    def sample(self, gen: torch.Generator) -> int:
        if not self._block:
            left = None if self.total_steps is None else self.total_steps - self._drawn
            if left is not None and 0 < left < self.s_max:
                self._block = self._final_block(left, gen)
            else:
                self._block = (torch.randperm(self.s_max, generator=gen) + 1).tolist()
        self._drawn += 1
        return int(self._block.pop())

    def _final_block(self, r: int, gen: torch.Generator) -> list[int]:
        n = self.s_max
        lows = (torch.randperm(n // 2, generator=gen) + 1).tolist()[: r // 2]
        out = [v for s in lows for v in (s, n + 1 - s)]
        if r % 2:
            mid = (n + 1) // 2 + (int(torch.randint(0, 2, (1,), generator=gen)) if n % 2 == 0 else 0)
            out.append(mid)
        return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


def machine_info() -> dict:
    """What ran the experiment (for the results page)."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def default_loop_grid(s_max: int) -> list[int]:
    """S in {1, 2, 4, ..., 2 * S_max} (powers of two, plus S_max and 2 * S_max themselves)."""
    grid = {1, s_max, 2 * s_max}
    s = 2
    while s < 2 * s_max:
        grid.add(s)
        s *= 2
    return sorted(grid)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (NaN written as null so every reader can parse it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique per process (seeds may run in parallel)
    tmp.write_text(json.dumps(_clean(obj), indent=2))
    os.replace(tmp, path)


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "tolist"):
        return _clean(x.tolist())
    return x


def clone(obj: C) -> C:
    return copy.deepcopy(obj)
