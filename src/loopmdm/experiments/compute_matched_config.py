"""The compute-matched comparison's configuration: ``ComputeMatchedConfig`` (the LoopMDM run (b) from which (a) and
(c) are derived, the budget in (a)'s steps, evaluation and ablation settings) and its presets ``laptop`` and
``paper``; ``load_compute_matched_config`` reads a preset name or a YAML file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig, preset
from ..errors import ConfigError
from ..model.fields import check_seeds
from .common import load_experiment_config
from .placements import LOOP_PLACEMENTS


@dataclass
class ComputeMatchedConfig:
    """One compute-matched experiment. ``run`` is the LoopMDM (b) configuration: its model gives L and the
    (n_h, n_m, n_o) split, ``diffusion.s_max`` the training S_max; (a) and (c) are derived from it."""

    name: str = "laptop"
    run: RunConfig = field(default_factory=RunConfig)
    # steps of (a); total budget = baseline_steps * tokens/step * F_train(a)
    baseline_steps: int = 1000
    n_evals: int = 16  # validation points per run, at about the same FLOPs for every run
    # S for LoopMDM's final NELBO; null = [1, S_max/2, S_max, 2 S_max]
    eval_loops: Optional[list[int]] = None
    # validation batches of the final NELBO (more than during training)
    final_eval_batches: int = 48
    eval_seed: int = 1234  # same t and masks for every model in the final evaluation
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    warmup_frac: float = 0.05  # warmup steps as a fraction of each run's steps
    balanced_loops: bool = True  # S drawn in shuffled blocks (see common.BalancedUniformLoops)
    depth_tolerance: float = 0.05  # largest relative per-step FLOPs mismatch accepted for (c)
    # largest relative total-FLOPs mismatch the step rounding may cause
    flops_tolerance: float = 0.02
    ablation_placements: list[str] = field(
        default_factory=lambda: ["early", "early-middle", "middle", "late", "all"]
    )
    ablation_n_m: list[int] = field(default_factory=lambda: [1, 2, 3])
    ablation_baseline_steps: Optional[int] = None  # budget of the ablation; null = baseline_steps
    expected_minutes: Optional[float] = None  # what the config is sized for (documentation only)
    description: str = ""

    def validate(self) -> "ComputeMatchedConfig":
        self.run.validate()
        for name in ("baseline_steps", "n_evals", "final_eval_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.run.diffusion.objective != "mdm":
            raise ConfigError(
                "run.diffusion.objective must be 'mdm' for the compute-matched comparison"
            )
        if self.run.diffusion.loop_dist != "uniform" or self.run.diffusion.s_max < 2:
            raise ConfigError(
                "run.diffusion must be loop_dist=uniform with s_max >= 2: (b) is LoopMDM with "
                "S ~ U{1..S_max}"
            )
        if self.run.model.n_m < 1:
            raise ConfigError("run.model.n_m must be >= 1: (b) needs a mid block to loop")
        d = self.run.diffusion
        if d.deep_supervision != "none" or d.loop_curriculum_steps > 0:
            raise ConfigError(
                f"run.diffusion.deep_supervision={d.deep_supervision!r} / loop_curriculum_steps="
                f"{d.loop_curriculum_steps} change the FLOPs of a step in ways the compute-matched plan does not "
                "count (up to 37% off the budget); set deep_supervision: none and loop_curriculum_steps: 0"
            )
        if not self.seeds:
            raise ConfigError("seeds is empty; pass at least one seed (two or more for a spread)")
        check_seeds(self.seeds)
        for s in self.loops_grid():
            if s < 1:
                raise ConfigError(f"eval_loops holds {s}; every S must be >= 1")
        for name in ("warmup_frac", "depth_tolerance", "flops_tolerance"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1)")

        for p in self.ablation_placements:
            LOOP_PLACEMENTS.get(p)
        return self

    def loops_grid(self) -> list[int]:
        """S values of LoopMDM's final NELBO: {1, S_max/2, S_max, 2 S_max} unless set."""
        s_max = self.run.diffusion.s_max
        return (
            list(self.eval_loops)
            if self.eval_loops
            else sorted({1, max(1, s_max // 2), s_max, 2 * s_max})
        )


def _laptop() -> ComputeMatchedConfig:
    run = RunConfig(
        model=ModelConfig(
            vocab_size=2048,
            max_seq_len=128,
            d_model=128,
            n_heads=4,
            n_layers=6,
            n_h=1,
            n_m=2,
            n_o=3,
            cond_dim=64,
        ),
        diffusion=DiffusionConfig(s_max=4),
        data=DataConfig(source="stdlib", max_train_bytes=6_000_000),
        train=TrainConfig(
            batch_size=16,
            lr=1e-3,
            warmup_steps=0,
            eval_batches=6,
            precision="fp32",
            device="cpu",
            log_every=10,
            keep_last=1,
            threads=1,
        ),
    )
    return ComputeMatchedConfig(
        name="laptop",
        run=run,
        baseline_steps=700,
        n_evals=14,
        seeds=[0, 1],
        final_eval_batches=48,
        ablation_baseline_steps=400,
        expected_minutes=35.0,
        description="6-layer, d=128 MDM (1.8M parameters) on 6 MB of the Python standard library, BPE 2048, "
        "length 128, batch 16; LoopMDM loops layers 1-2 (n_h=1, n_m=2, n_o=3) with S_max=4, so the "
        "deeper baseline has 6 + 1.5 * 2 = 9 layers. One thread per process: run the two seeds as two "
        "processes on 2 cores (about 35 minutes when the cores are free).",
    )


def _paper() -> ComputeMatchedConfig:
    # 12 x 768, n_h=1, n_m=2, n_o=9, S_max=12, OpenWebText, GPT-2 tokenizer, length 1024
    run = preset("paper")
    run.train.max_steps = 1_000_000
    return ComputeMatchedConfig(
        name="paper",
        run=run,
        baseline_steps=1_000_000,
        n_evals=100,
        seeds=[0, 1],
        final_eval_batches=256,
        ablation_baseline_steps=250_000,
        expected_minutes=None,
        description="The GPU-scale run of the paper: 12-layer, d=768 DiT MDM (~170M parameters), loop layers 1-2 "
        "(n_h=1, n_m=2, n_o=9), S_max=12 (E[S]=6.5), so (c) has 12 + 5.5 * 2 = 23 layers; batch 512 "
        "x 1024 tokens, 1M steps for (a). Needs a multi-GPU machine; use `--plan` to print the steps.",
    )


PRESETS = {"laptop": _laptop, "paper": _paper}


def load_compute_matched_config(spec: str | Path = "laptop") -> ComputeMatchedConfig:
    """``laptop``, ``paper`` or a YAML file (``base: laptop`` plus overrides, e.g. ``run: {model: {d_model: 96}}``)."""
    return load_experiment_config(spec, PRESETS, "compute-matched").validate()
