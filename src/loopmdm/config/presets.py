"""Named starting points for ``loopmdm train --preset NAME``: ``tiny`` (the laptop quickstart), ``paper`` (the
paper's 12 x 768 model on OpenWebText), ``sudoku`` (puzzles as conditional masked diffusion), ``answers``
(prompt / answer and infill rows) and their ``-baseline`` twins (the same layers with S fixed at 1)."""

from __future__ import annotations

from typing import Callable

from ..model import ModelConfig
from ..registry import Registry
from .sections import DataConfig, DiffusionConfig, RunConfig, SudokuDataConfig, TrainConfig

PRESETS: Registry[Callable[[], RunConfig]] = Registry("preset")


@PRESETS.register("tiny")
def tiny() -> RunConfig:
    """The quickstart model: 4 layers of width 96 (n_h / n_m / n_o = 1 / 2 / 1), AdamW at 2e-3, 1600 steps, t from
    a bell (truncated normal, mean 0.5, std 0.2) with the paper's weighting. Chosen by ``benchmarks/recipe_sweep.py``
    (docs/results.md): no setting of learning rate, warmup, batch, vocabulary, width / depth, initialisation or
    QK-norm left the unigram plateau much earlier, so the preset is the small model that runs the most optimizer
    steps in the time; of the MDM accelerators (round 5) bell-shaped time sampling under the paper's weighting
    reached the uniform recipe's final validation NELBO in 50-75% of its steps. fp32: bf16 autocast is slower on
    CPU at these widths (measured when the preset was chosen)."""
    return RunConfig(
        model=ModelConfig(
            vocab_size=2048, max_seq_len=128, d_model=96, n_heads=3, n_layers=4, n_h=1, n_m=2, n_o=1
        ),
        diffusion=DiffusionConfig(s_max=4, t_sampler="bell", t_weighting="paper"),
        data=DataConfig(max_train_bytes=6_000_000),
        train=TrainConfig(
            batch_size=32,
            max_steps=1600,
            lr=2e-3,
            warmup_steps=50,
            eval_every=200,
            eval_batches=4,
            save_every=400,
            precision="fp32",
        ),
    )


@PRESETS.register("paper")
def paper() -> RunConfig:
    """The paper's model: 12 layers x 768, n_h / n_m / n_o = 1 / 2 / 9, S_max = 12, OpenWebText at length 1024."""
    return RunConfig(
        model=ModelConfig(
            vocab_size=50258,
            max_seq_len=1024,
            d_model=768,
            n_heads=12,
            n_layers=12,
            n_h=1,
            n_m=2,
            n_o=9,
            cond_dim=128,
        ),
        diffusion=DiffusionConfig(s_max=12),
        data=DataConfig(source="hf:openwebtext", tokenizer="gpt2"),
        train=TrainConfig(
            batch_size=512,
            max_steps=1_000_000,
            lr=3e-4,
            warmup_steps=2500,
            eval_every=10_000,
            save_every=10_000,
            ema=0.9999,
            precision="bf16",
            betas=(0.9, 0.999),
        ),
    )


@PRESETS.register("sudoku")
def sudoku() -> RunConfig:
    """Conditional masked diffusion on built-in 30-42-given puzzles: a 4-layer d=128 denoiser with a learned
    position embedding (rotary alone does not learn the board's geometry), no time conditioning, layers 1-2
    looped with S ~ U{1..S_max}; the givens are never masked and the loss is the mean cross-entropy of the
    masked blanks. ``loopmdm eval --metric sudoku`` solves the test boards."""
    return RunConfig(
        model=ModelConfig(
            vocab_size=11,
            max_seq_len=81,
            d_model=128,
            n_heads=4,
            n_layers=4,
            n_h=1,
            n_m=2,
            n_o=1,
            time_conditioning="none",
            tie_embeddings=False,
            learned_positions=True,
        ),
        diffusion=DiffusionConfig(s_max=4, loss_weight="uniform"),
        data=DataConfig(
            source="generate",
            format="sudoku",
            sudoku=SudokuDataConfig(givens=(30, 42), n_train=10000, n_val=200, n_test=200),
        ),
        train=TrainConfig(
            batch_size=32,
            max_steps=4000,
            lr=1e-3,
            warmup_steps=100,
            weight_decay=0.01,
            eval_every=500,
            eval_batches=4,
            save_every=1000,
            precision="fp32",
        ),
    )


@PRESETS.register("answers")
def answers() -> RunConfig:
    """Prompt / answer or infill JSONL rows (``--data FILE.jsonl`` or a ``loopmdm task make`` folder): a 4-layer
    d=128 character-level denoiser with learned positions, no time conditioning, layers 1-2 looped with
    S ~ U{1..4}; only the answer tokens are masked and scored (mean cross-entropy); rows padded to 128 tokens.
    ``loopmdm eval --metric exact-match`` scores it."""
    return RunConfig(
        model=ModelConfig(
            vocab_size=256,
            max_seq_len=128,
            d_model=128,
            n_heads=4,
            n_layers=4,
            n_h=1,
            n_m=2,
            n_o=1,
            time_conditioning="none",
            tie_embeddings=False,
            learned_positions=True,
        ),
        diffusion=DiffusionConfig(s_max=4, loss_weight="uniform"),
        data=DataConfig(source="train.jsonl", format="answers"),
        train=TrainConfig(
            batch_size=64,
            max_steps=3000,
            lr=1e-3,
            warmup_steps=100,
            weight_decay=0.01,
            eval_every=500,
            eval_batches=4,
            save_every=500,
            precision="fp32",
        ),
    )


def baseline_of(make: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
    """The non-looped twin: same layers, S fixed at 1 (a plain MDM, every line shared)."""

    def build() -> RunConfig:
        cfg = make()
        cfg.diffusion.loop_dist = "fixed"
        cfg.diffusion.s_fixed = 1
        return cfg

    build.__doc__ = f"{make.__name__} with S fixed at 1 (the plain MDM of the same size)."
    return build


for _name in ("tiny", "paper", "sudoku", "answers"):
    PRESETS.register(f"{_name}-baseline")(baseline_of(PRESETS.get(_name)))


def preset(name: str) -> RunConfig:
    """A fresh copy of a named preset (``PRESETS.names()``)."""
    return PRESETS.get(name)()
