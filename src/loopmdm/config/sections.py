"""The sections of a run's configuration: diffusion (objective, schedule, loop count S), data, training, and
``RunConfig`` that holds them with the model's ``ModelConfig``. Every field is validated with a one-line error
that names the field, the bad value and the fix; names of variants are checked against their registries."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..backbones import get_backbone
from ..data import FORMATS
from ..data.sudoku.augment import AUGMENTS
from ..diffusion import (
    LOOP_DISTRIBUTIONS,
    LOSS_WEIGHTS,
    OBJECTIVES,
    SCHEDULES,
    check_time_sampling,
    make_loop_distribution,
)
from ..errors import ConfigError
from ..model import ModelConfig
from ..model.fields import apply_dict, at_least, at_most, check_int, check_types


@dataclass
class SudokuDataConfig:
    """Puzzles for ``data.format = "sudoku"``: the built-in generator (``data.source = "generate"``: unique
    solutions, train / validation / test disjoint by solution grid) or a puzzle file (``data.source = FILE``,
    split into train / validation by ``data.val_fraction``)."""

    # difficulty of generated puzzles: a range of givens within 17..80
    givens: tuple[int, int] = (30, 42)
    n_train: int = 20000
    n_val: int = 200
    n_test: int = 200
    seed: int = 0
    # per batch: "all" (digit relabelling, band / row / stack / column permutations,
    # transpose), "digits" (relabelling only) or "none"
    augment: str = "all"
    max_rows: Optional[int] = None  # read at most this many valid rows of a file

    def validate(self) -> None:
        check_types(self, "data.sudoku")
        lo, hi = self.givens
        if not 17 <= lo <= hi <= 80:
            raise ConfigError(
                f"data.sudoku.givens={list(self.givens)} must be a range [min, max] within 17..80 "
                "(no 9x9 Sudoku with fewer than 17 givens has a unique solution)"
            )
        if self.augment not in AUGMENTS:
            raise ConfigError(
                f"data.sudoku.augment={self.augment!r} is unknown; use one of {', '.join(AUGMENTS)}"
            )
        for name in ("n_train", "n_val", "n_test"):
            check_int(getattr(self, name), f"data.sudoku.{name}", 1)
        if self.max_rows is not None:
            check_int(self.max_rows, "data.sudoku.max_rows", 1)


DEEP_SUPERVISION = ("none", "all", "random")


@dataclass
class AnswersDataConfig:
    """Prompt / answer and infill rows for ``data.format = "answers"`` (``loopmdm.data.answers``): the field
    names, the tokenizer kind when ``data.tokenizer`` is null, and an optional separate validation file."""

    prompt_field: str = "prompt"
    answer_field: str = "answer"
    # infill rows: data.text_field holds the text, this field the answer spans
    targets_field: str = "targets"
    tokenizer: str = "char"  # "char" (one token per character of the training file) or "bpe"
    # null: data.source's val.jsonl (a task folder) or a hash split
    val_source: Optional[str] = None

    def validate(self) -> None:
        check_types(self, "data.answers")
        for name in ("prompt_field", "answer_field", "targets_field"):
            if not getattr(self, name).strip():
                raise ConfigError(f"data.answers.{name}='' is empty; name the JSONL field")
        if self.prompt_field == self.answer_field:  # the answer would be given in its own prompt
            raise ConfigError(
                f"data.answers.prompt_field and answer_field are both {self.prompt_field!r}; name two "
                "different JSONL fields"
            )
        if self.tokenizer not in ("char", "bpe"):
            raise ConfigError(
                f"data.answers.tokenizer={self.tokenizer!r} is unknown; use 'char' or 'bpe' (or set "
                "data.tokenizer to a tokenizer.json)"
            )
        if self.val_source is not None and not self.val_source.strip():
            raise ConfigError("data.answers.val_source='' is empty; give a .jsonl path or null")


@dataclass
class DiffusionConfig:
    """MDLM continuous-time objective: noise schedule alpha_t, the training distribution of t (antithetic, uniform
    or another ``loopmdm.diffusion.TIME_SAMPLERS`` density with its weighting), complementary masks, training loop
    count S."""

    objective: str = "mdm"  # "mdm" (masked diffusion NELBO) or "ar" (next-token, causal evaluator)
    schedule: str = "loglinear"  # see loopmdm.diffusion.SCHEDULES
    antithetic: bool = True
    t_eps: float = 1e-3  # t ~ U[eps, 1) keeps the weight -alpha'_t / (1 - alpha_t) finite
    loop_dist: str = "uniform"  # see loopmdm.diffusion.LOOP_DISTRIBUTIONS (uniform, fixed, balanced, lognormal_poisson,
    #                             flop_proportional: p(S) proportional to 1 / FLOPs of a step at S)
    s_max: int = 4  # S ~ Uniform{1..s_max}; also the upper clip of "lognormal_poisson"
    s_fixed: int = 1  # S for loop_dist = "fixed"
    s_mean: float = 4.0  # mean of loop_dist = "lognormal_poisson"
    # > 0: the largest S ramps from 1 to S_max over these first steps (0 = off)
    loop_curriculum_steps: int = 0
    loss_weight: str = "elbo"  # "elbo": MDLM's -alpha'_t / (1 - alpha_t) (the NELBO); "uniform": mean CE over masks
    # "none": the loss on the final loop's output (the paper's); "all": the mean of the
    # losses on every loop's output h_1..h_S (R-MDM, TRM); "random": h_S and a random
    # half of the earlier loops
    deep_supervision: str = "none"
    # training density of t: "uniform" (MDLM), "bell", "ppots" (diffusion.timesteps)
    t_sampler: str = "uniform"
    # its parameters, e.g. {std: 0.2} (bell), {w: [...]} (ppots)
    t_sampler_params: dict = field(default_factory=dict)
    t_weighting: str = "exact"  # "exact": importance weights u(t)/p(t), the loss stays the unbiased NELBO; "paper": none
    # rows in pairs: one sequence, complementary masks (u, 1 - u; t, 1 + eps - t)
    complementary_masks: bool = False
    # > 0: PUMA progressive unmasking with this many stages K: a pool of rows whose masks follow the order in
    # which confidence-ordered sampling reveals tokens (diffusion/progressive.py); 0: masks at a random t
    progressive_stages: int = 0

    @property
    def max_loops(self) -> int:
        """The largest S training draws (S_max; ``s_fixed`` for the fixed distribution): the default S of
        validation, evaluation and sampling."""
        return make_loop_distribution(self).max()

    def validate(self) -> None:
        check_types(self, "diffusion")
        OBJECTIVES.get(self.objective)
        SCHEDULES.get(self.schedule)
        LOOP_DISTRIBUTIONS.get(self.loop_dist)
        if self.deep_supervision not in DEEP_SUPERVISION:
            raise ConfigError(
                f"diffusion.deep_supervision={self.deep_supervision!r} is unknown; use one of "
                f"{', '.join(DEEP_SUPERVISION)}"
            )
        if self.loss_weight not in LOSS_WEIGHTS:
            raise ConfigError(
                f"diffusion.loss_weight={self.loss_weight!r} is unknown; use one of "
                f"{', '.join(LOSS_WEIGHTS)}"
            )
        at_most(self, "diffusion", s_max=4096, s_fixed=4096, s_mean=4096)
        if self.s_max < 1:
            raise ConfigError(
                f"diffusion.s_max={self.s_max} must be >= 1 (S is a count of loop iterations)"
            )
        if self.s_fixed < 1:
            raise ConfigError(f"diffusion.s_fixed={self.s_fixed} must be >= 1")
        if self.s_mean <= 0:
            raise ConfigError(f"diffusion.s_mean={self.s_mean} must be > 0")
        if self.loop_curriculum_steps < 0:
            raise ConfigError(
                f"diffusion.loop_curriculum_steps={self.loop_curriculum_steps} must be >= 0 "
                "(0 turns the curriculum over S off)"
            )
        if not 0.0 <= self.t_eps < 0.5:
            raise ConfigError(f"diffusion.t_eps={self.t_eps} must be in [0, 0.5)")
        self.t_sampler_params = check_time_sampling(self)
        if self.objective != "mdm" and (self.t_sampler != "uniform" or self.complementary_masks):
            raise ConfigError(
                f"diffusion.t_sampler={self.t_sampler!r} / complementary_masks only apply to "
                f"diffusion.objective='mdm' (objective {self.objective!r} has no diffusion time); set "
                "diffusion.t_sampler=uniform and diffusion.complementary_masks=false"
            )
        self.check_progressive()

    def check_progressive(self) -> None:
        """PUMA's pool sets every row's masks and t itself: it excludes the other mask / time options."""
        k = self.progressive_stages
        if k == 0:
            return
        if not 2 <= k <= 1024:
            raise ConfigError(
                f"diffusion.progressive_stages={k} must be 0 (off) or in 2..1024 (stages of the pool)"
            )
        clash = [
            name
            for name, on in (
                (f"objective={self.objective!r}", self.objective != "mdm"),
                (f"t_sampler={self.t_sampler!r}", self.t_sampler != "uniform"),
                ("complementary_masks=true", self.complementary_masks),
            )
            if on
        ]
        if clash:
            raise ConfigError(
                f"diffusion.progressive_stages={k} sets the masks and t of every row itself; it cannot be "
                f"combined with diffusion.{clash[0]} (use objective='mdm', t_sampler='uniform', "
                "complementary_masks=false, or progressive_stages=0)"
            )


@dataclass
class DataConfig:
    """Where text comes from and how it becomes packed sequences of length model.max_seq_len."""

    # "stdlib" (built-in, offline), a file, a folder, a .jsonl file, or "hf:NAME"
    source: str = "stdlib"
    text_field: str = "text"  # JSONL / datasets column
    val_fraction: float = 0.05  # by a stable hash of each document's name
    max_train_bytes: Optional[int] = None  # cap the training text (quick runs); null = all
    tokenizer: Optional[str] = None  # null: train a byte-level BPE on the training split
    bad_files: str = "skip"  # "skip" (count and go on) or "error" for unreadable / binary files
    cache_dir: Optional[str] = None  # null: ~/.cache/loopmdm
    format: str = "text"  # how sources become rows: "text" (BPE, packed), "sudoku" (81 cells, givens frozen) or
    #                       "answers" (prompt / answer and infill JSONL rows, only the answers scored)
    sudoku: SudokuDataConfig = field(default_factory=SudokuDataConfig)  # used by format="sudoku"
    # used by format="answers"
    answers: AnswersDataConfig = field(default_factory=AnswersDataConfig)

    def validate(self) -> None:
        check_types(self, "data")
        FORMATS.get(self.format)
        self.sudoku.validate()
        self.answers.validate()
        if not self.source.strip():
            raise ConfigError(
                "data.source='' is empty; use 'stdlib', a file or folder path, or 'hf:NAME'"
            )
        if self.source.startswith("hf:") and not self.source[3:].strip():
            raise ConfigError(
                f"data.source={self.source!r} names no dataset; use hf:NAME, e.g. hf:openwebtext"
            )
        if not self.text_field.strip():
            raise ConfigError(
                "data.text_field='' is empty; name the JSONL / dataset column that holds the text"
            )
        for name in ("tokenizer", "cache_dir"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise ConfigError(
                    f"data.{name}='' is empty; give a path (or a Hub name for tokenizer) or null"
                )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        if self.max_train_bytes is not None and self.max_train_bytes <= 0:
            raise ConfigError(f"data.max_train_bytes={self.max_train_bytes} must be > 0 or null")
        if self.bad_files not in ("skip", "error"):
            raise ConfigError(
                f"data.bad_files={self.bad_files!r} is unknown; use 'skip' or 'error'"
            )


INIT_WEIGHTS = ("auto", "ema", "raw")


@dataclass
class TrainConfig:
    """Optimisation: AdamW, warmup + cosine, clipping, EMA, bf16 autocast, accumulation."""

    batch_size: int = 32  # global batch (sequences per optimizer step)
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    ema: Optional[float] = None  # e.g. 0.999; null disables EMA
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    seed: int = 0
    eval_every: int = 200
    eval_batches: int = 8
    # seeds validation's t and masks, not train.seed: runs with different seeds are scored on the same draw
    eval_seed: int = 0
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 1  # metrics.jsonl line every N steps
    max_bad_steps: int = 5  # non-finite loss / grad norms in a row before the run stops
    device: str = "auto"
    compile: bool = False
    threads: Optional[int] = None
    # under torchrun: shard parameters / grads / optimizer with FSDP2 instead of DDP
    fsdp: bool = False
    # the checkpoint whose weights start this run (`--init`: fine-tuning with a new
    init: Optional[str] = None
    #                             optimizer, learning-rate schedule and step count); recorded as the folder it named
    # which weights of `init`: "auto" (EMA when it has them), "ema" or "raw"
    init_weights: str = "auto"

    def validate(self) -> None:
        check_types(self, "train")
        at_least(
            self,
            "train",
            1,
            "batch_size",
            "grad_accum",
            "max_steps",
            "eval_every",
            "eval_batches",
            "save_every",
            "keep_last",
            "log_every",
            "max_bad_steps",
        )
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not divisible by train.grad_accum={self.grad_accum}; "
                "make the batch a multiple of the accumulation steps"
            )
        if self.lr <= 0:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ConfigError(f"train.ema={self.ema} must be in (0, 1) or null")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(
                f"train.precision={self.precision!r} is unknown; use 'fp32' or 'bf16'"
            )
        if self.grad_clip < 0:
            raise ConfigError(
                f"train.grad_clip={self.grad_clip} must be >= 0 (0 disables clipping)"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas={list(self.betas)} must be two numbers in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay={self.weight_decay} must be >= 0")
        for name in ("seed", "eval_seed"):
            if not 0 <= getattr(self, name) < 1 << 62:
                raise ConfigError(
                    f"train.{name}={getattr(self, name)} must be in [0, 2**62); pick a non-negative integer"
                )
        if self.threads is not None and not 1 <= self.threads <= 4096:
            raise ConfigError(
                f"train.threads={self.threads} must be >= 1 or null (PyTorch's default)"
            )
        if self.init is not None and not self.init.strip():
            raise ConfigError("train.init='' is empty; name a run or checkpoint folder, or null")
        if self.init_weights not in INIT_WEIGHTS:
            raise ConfigError(
                f"train.init_weights={self.init_weights!r} is unknown; use one of "
                f"{', '.join(INIT_WEIGHTS)}"
            )
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(
                f"train.device={self.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
            )


@dataclass
class RunConfig:
    """Everything a training run needs; saved as config.json beside every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        backbone = get_backbone(self.model.backbone)  # a known backbone ...
        self.model.validate()
        backbone.check(self.model)  # ... that can build this config
        self.diffusion.validate()
        self.data.validate()
        self.train.validate()
        if self.diffusion.objective == "ar" and not self.model.causal:
            raise ConfigError(
                "diffusion.objective='ar' needs model.causal=true (next-token prediction)"
            )
        if self.diffusion.objective == "ar" and self.model.time_conditioned:
            raise ConfigError(
                "diffusion.objective='ar' has no diffusion time; set model.time_conditioning=none"
            )
        if self.model.wrapped and self.diffusion.objective != "mdm":
            raise ConfigError(
                f"model.backbone={self.model.backbone!r} is a bidirectional masked LM; it trains with "
                "diffusion.objective='mdm'"
            )
        if self.diffusion.objective == "mdm" and self.model.causal:
            raise ConfigError(
                "model.causal=true only fits diffusion.objective='ar'; masked diffusion is bidirectional"
            )
        if self.diffusion.deep_supervision != "none" and (
            self.model.backprop_depth is not None or self.diffusion.objective != "mdm"
        ):
            raise ConfigError(
                "diffusion.deep_supervision needs diffusion.objective='mdm' and model.backprop_depth="
                "null (every supervised loop is differentiated)"
            )
        bd = self.model.backprop_depth
        if bd is not None and bd > self.diffusion.s_max:
            raise ConfigError(
                f"model.backprop_depth={bd} exceeds diffusion.s_max={self.diffusion.s_max}; "
                "the truncation depth must be <= the largest loop count S"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        cfg = cls()
        apply_dict(cfg, d)
        return cfg

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))
