"""The loop-scaling study's configuration (``LoopScalingConfig``: a compute-matched config plus the budgets and
the seeds of each) and its preset ``laptop``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from ..config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from ..errors import ConfigError
from ..model.fields import check_int
from .common import load_experiment_config
from .compute_matched_config import ComputeMatchedConfig


@dataclass
class LoopScalingConfig(ComputeMatchedConfig):
    """A compute-matched configuration plus the budgets (training FLOPs per run, increasing) and the seeds of
    each: ``seeds_per_budget[i]`` is a count n (the first n of ``seeds``) or an explicit list of seeds."""

    budgets: list[float] = field(default_factory=lambda: [7.5e11, 2.5e12, 7.5e12, 2.25e13])
    seeds_per_budget: list[Union[int, list[int]]] = field(default_factory=lambda: [1, 1, 2, 2])
    bootstrap: int = 2000
    bootstrap_seed: int = 0
    plateau_margin: float = 0.25  # nats below the unigram plateau H that count as having left it
    # a fifth run per budget and seed: LoopMDM with p(S) proportional to 1 / F(S) at the same budget
    flop_proportional_arm: bool = False

    def validate(self) -> "LoopScalingConfig":
        super().validate()
        if len(self.budgets) < 2 or any(b <= 0 for b in self.budgets):
            raise ConfigError(f"budgets={self.budgets} must hold at least two positive FLOP counts")
        if any(b2 <= b1 for b1, b2 in zip(self.budgets, self.budgets[1:])):
            raise ConfigError(f"budgets={self.budgets} must be increasing (training FLOPs per run)")
        if len(self.seeds_per_budget) != len(self.budgets):
            raise ConfigError(
                f"seeds_per_budget has {len(self.seeds_per_budget)} entries for {len(self.budgets)} "
                "budgets; give one per budget"
            )
        for entry in self.seeds_per_budget:
            if isinstance(entry, (list, tuple)):
                if not entry or len(set(entry)) != len(entry):
                    raise ConfigError(
                        f"seeds_per_budget entry {entry} must be a non-empty list of distinct seeds"
                    )
                for s in entry:
                    check_int(s, "seeds_per_budget seed", low=0)
            elif check_int(entry, "seeds_per_budget entry") < 1 or entry > len(self.seeds):
                raise ConfigError(
                    f"seeds_per_budget asks for {entry} seeds but seeds={self.seeds}; give a count "
                    "from 1 to len(seeds) or a list of seeds"
                )
        check_int(self.bootstrap, "bootstrap", low=0)
        if not self.plateau_margin > 0:
            raise ConfigError(
                f"plateau_margin={self.plateau_margin} must be > 0 (nats below the plateau)"
            )
        return self

    def budget_seeds(self, i: int) -> list[int]:
        """The seeds of budget ``i``."""
        entry = self.seeds_per_budget[i]
        return (
            [int(s) for s in entry]
            if isinstance(entry, (list, tuple))
            else list(self.seeds[: int(entry)])
        )


def _laptop() -> LoopScalingConfig:
    run = RunConfig(
        model=ModelConfig(
            vocab_size=2048,
            max_seq_len=128,
            d_model=64,
            n_heads=2,
            n_layers=4,
            n_h=1,
            n_m=2,
            n_o=1,
            cond_dim=32,
        ),
        diffusion=DiffusionConfig(s_max=4, t_sampler="bell", t_weighting="paper"),
        data=DataConfig(source="stdlib"),
        train=TrainConfig(
            batch_size=32,
            lr=2e-3,
            warmup_steps=0,
            eval_batches=16,
            precision="fp32",
            device="cpu",
            log_every=25,
            keep_last=1,
            threads=1,
        ),
    )
    return LoopScalingConfig(
        name="laptop",
        run=run,
        n_evals=12,
        seeds=[0, 1, 2, 3, 4],
        final_eval_batches=64,
        eval_seed=1234,
        expected_minutes=575.0,
        budgets=[7.5e11, 2.5e12, 7.5e12, 2.25e13],
        seeds_per_budget=[2, 5, 5, 5],
        flop_proportional_arm=True,
        description="4-layer d=64 models (0.4M parameters) on the whole standard-library corpus of the running "
        "Python, BPE 2048, length 128, batch 32, AdamW 2e-3, t from the bell with the paper's weighting (the "
        "quickstart recipe's); LoopMDM loops "
        "layers 1-2 with S_max = 4 (the deeper MDM has 7 layers), plus the plain MDM trained for "
        "LoopMDM's step count with its own schedule (the equal-steps baseline), and LoopMDM with p(S) "
        "proportional to 1 / F(S) at the same budget; budgets 7.5e11 .. "
        "2.25e13 training FLOPs per run (30x), 5 seeds at the three largest, 2 at the smallest. "
        "Validation: curves on 16 batches (65k tokens), final NELBO on 64 batches (262k tokens), the "
        "same rows, t and masks for every run (eval_seed 1234). Run as two one-thread processes "
        "(--shard 0/2 and 1/2; about 9.5 hours when the cores are free), then once without --shard "
        "for the report.",
    )


PRESETS = {"laptop": _laptop}


def load_loop_scaling_config(spec: str | Path = "laptop") -> LoopScalingConfig:
    """``laptop`` or a YAML file (``base: laptop`` plus overrides)."""
    return load_experiment_config(spec, PRESETS, "loop-scaling").validate()
