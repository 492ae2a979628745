"""The loopify experiment's configuration (``LoopifyExperimentConfig``) and its preset ``laptop``: the two sources
(the library's plain MDM and a transformers BERT), the layers that loop and the fine-tuning arms."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import DataConfig, RunConfig, preset
from ..errors import ConfigError
from .common import load_experiment_config

SOURCES = ("mdm", "bert")
ARMS = ("finetune", "loopify", "curriculum")


@dataclass
class LoopifyExperimentConfig:
    """The loopify experiment. ``run`` is the library MDM source's run (its model; the data and optimisation
    settings every run shares; S fixed at 1); ``bert`` the ``BertConfig`` fields of the transformers source
    (vocabulary, positions and padding come from the data); the fine-tuning runs share ``finetune_*`` and
    ``warmup_frac``."""

    name: str = "laptop"
    run: RunConfig = field(default_factory=RunConfig)
    mdm_steps: int = 600
    bert: dict = field(default_factory=dict)
    bert_steps: int = 600
    bert_lr: float = 1e-3
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    loop_layers: list[int] = field(default_factory=lambda: [1, 3])  # A, B: layers A..B-1 loop
    s_max: int = 4
    finetune_steps: int = 240  # steps of (a); (b) and (c) get its training FLOPs
    finetune_lr: float = 3e-4
    warmup_frac: float = 0.05
    # (c): ramp S_max up over this fraction of its steps; null = no (c)
    curriculum_frac: Optional[float] = None
    n_evals: int = 8  # validation points per fine-tuning run
    final_eval_batches: int = 48
    eval_seed: int = 1234
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    flops_tolerance: float = 0.02
    expected_minutes: Optional[float] = None
    description: str = ""

    def validate(self) -> "LoopifyExperimentConfig":
        self.run.validate()
        for name in (
            "mdm_steps",
            "bert_steps",
            "finetune_steps",
            "n_evals",
            "final_eval_batches",
            "s_max",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise ConfigError(
                f"sources={self.sources} must be a non-empty list of {', '.join(SOURCES)}"
            )
        if len(self.loop_layers) != 2:
            raise ConfigError(f"loop_layers={self.loop_layers} must be [A, B] (layers A..B-1 loop)")
        if not self.seeds:
            raise ConfigError("seeds is empty; pass at least one seed (two or more for a spread)")
        if self.curriculum_frac is not None and not 0.0 < self.curriculum_frac <= 1.0:
            raise ConfigError(f"curriculum_frac={self.curriculum_frac} must be in (0, 1] or null")
        for name in ("warmup_frac", "flops_tolerance"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.run.diffusion.objective != "mdm":
            raise ConfigError("run.diffusion.objective must be 'mdm'")
        return self

    def loops_grid(self) -> list[int]:
        return sorted({1, self.s_max, 2 * self.s_max})

    def arms(self) -> list[str]:
        return list(ARMS if self.curriculum_frac is not None else ARMS[:2])


def _laptop() -> LoopifyExperimentConfig:
    run = preset("tiny-baseline")  # the quickstart recipe: 4 x 96, adaLN, AdamW 2e-3, S = 1
    run.data = DataConfig(source="stdlib", max_train_bytes=6_000_000)
    t = run.train
    t.eval_every, t.save_every, t.eval_batches, t.log_every, t.keep_last = 200, 200, 6, 10, 1
    t.device, t.threads = "cpu", 1
    bert = dict(
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=384,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        type_vocab_size=1,
    )
    return LoopifyExperimentConfig(
        name="laptop",
        run=run,
        mdm_steps=800,
        bert=bert,
        bert_steps=800,
        finetune_steps=300,
        finetune_lr=5e-4,
        expected_minutes=25.0,
        description="Sources: the tiny-baseline MDM (4 x 96, adaLN, S = 1) and a BertForMaskedLM of the same shape "
        "(no dropout), each trained 800 steps of 32 x 128 tokens at lr 2e-3 on 6 MB of the Python "
        "standard library (BPE 2048). Loopify layers 1-2 (n_h=1, n_m=2, n_o=1), S_max=4; (a) fine-tunes "
        "300 steps at S=1, (b) the FLOP-equal number of steps with S ~ U{1..4}; lr 5e-4 with 5% warmup "
        "and cosine decay. One thread per process: run the two seeds as two processes on 2 cores.",
    )


PRESETS = {"laptop": _laptop}


def load_loopify_config(spec: str | Path = "laptop") -> LoopifyExperimentConfig:
    """``laptop`` or a YAML file (``base: laptop`` plus overrides, e.g. ``finetune_steps: 400`` or
    ``run: {train: {threads: 2}}``)."""
    return load_experiment_config(spec, PRESETS, "loopify").validate()
