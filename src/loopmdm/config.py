"""Typed configuration: model shape (n_h / n_m / n_o), diffusion, loop count S, data and training.

Every field is validated with a one-line error that names the field, the bad value and the fix.
Configs come from a preset, optionally a YAML file, then ``--set section.key=value`` overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError


@dataclass
class ModelConfig:
    """The transformer: head (n_h layers, once) -> mid (n_m layers, shared, S times) -> tail (n_o layers).

    A plain (non-looped) MDM is the same model with n_m = 0 or S = 1.
    """

    vocab_size: int = 4096
    max_seq_len: int = 128
    d_model: int = 256
    n_heads: int = 4
    mlp_ratio: float = 4.0
    n_layers: int = 6
    n_h: int = 1
    n_m: int = 2
    n_o: int = 3
    time_conditioning: str = "adaln"  # "adaln" (MDLM's DiT) or "none" (LLaDA / SMDM)
    cond_dim: int = 128
    tie_embeddings: bool = True
    causal: bool = False  # True only for the autoregressive evaluator / baseline
    rope_theta: float = 10000.0
    dropout: float = 0.0
    # Loop options (all off by default; the paper describes none of them).
    input_injection: bool = False  # Huginn-style adapter on concat[h, h0], identity-initialised
    loop_embedding: bool = False  # sinusoidal loop index -> zero-initialised projection, added per loop
    checkpoint_loops: bool = False  # activation checkpointing of each loop iteration
    backprop_depth: Optional[int] = None  # truncated backprop: gradients through the last k loops only

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_dim(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))

    def validate(self) -> None:
        _check_types(self)
        _positive(self, "vocab_size", "max_seq_len", "d_model", "n_heads", "n_layers", "cond_dim")
        _at_most(self, vocab_size=1 << 24, max_seq_len=1 << 20, d_model=1 << 16, n_heads=1 << 12, n_layers=4096,
                 cond_dim=1 << 16)
        for name in ("n_h", "n_m", "n_o"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name}={getattr(self, name)} is negative; layer counts must be >= 0")
        if self.n_h + self.n_m + self.n_o != self.n_layers:
            raise ConfigError(
                f"model.n_h + n_m + n_o = {self.n_h}+{self.n_m}+{self.n_o} = {self.n_h + self.n_m + self.n_o} "
                f"but model.n_layers={self.n_layers}; make the three parts add up to n_layers"
            )
        if self.d_model % self.n_heads or self.head_dim % 2:
            raise ConfigError(
                f"model.d_model={self.d_model} must split into n_heads={self.n_heads} heads of even size "
                "(rotary embeddings); pick d_model divisible by 2 * n_heads"
            )
        if not 0 < self.mlp_ratio <= 64:
            raise ConfigError(f"model.mlp_ratio={self.mlp_ratio} must be in (0, 64]")
        if self.rope_theta <= 0:
            raise ConfigError(f"model.rope_theta={self.rope_theta} must be > 0 (rotary base, e.g. 10000)")
        if self.time_conditioning not in ("adaln", "none"):
            raise ConfigError(
                f"model.time_conditioning={self.time_conditioning!r} is unknown; use 'adaln' or 'none'"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.backprop_depth is not None:
            if self.backprop_depth < 1:
                raise ConfigError(f"model.backprop_depth={self.backprop_depth} must be >= 1 "
                                  "(or null for full backprop)")
            if not self.input_injection and self.n_h > 0:
                raise ConfigError(
                    "model.backprop_depth is set but model.input_injection is false: the head layers would get "
                    "no gradient; set model.input_injection=true or model.backprop_depth=null"
                )


@dataclass
class DiffusionConfig:
    """MDLM continuous-time objective: noise schedule alpha_t, antithetic t, training loop count S."""

    objective: str = "mdm"  # "mdm" (masked diffusion NELBO) or "ar" (next-token, causal evaluator)
    schedule: str = "loglinear"  # see loopmdm.schedules.SCHEDULES
    antithetic: bool = True
    t_eps: float = 1e-3  # t ~ U[eps, 1) keeps the weight -alpha'_t / (1 - alpha_t) finite
    loop_dist: str = "uniform"  # see loopmdm.loops.LOOP_DISTRIBUTIONS
    s_max: int = 4  # S ~ Uniform{1..s_max}; also the upper clip of "lognormal_poisson"
    s_fixed: int = 1  # S for loop_dist = "fixed"
    s_mean: float = 4.0  # mean of loop_dist = "lognormal_poisson"

    def validate(self) -> None:
        _check_types(self)
        if self.objective not in ("mdm", "ar"):
            raise ConfigError(f"diffusion.objective={self.objective!r} is unknown; use 'mdm' or 'ar'")
        _at_most(self, s_max=4096, s_fixed=4096, s_mean=4096)
        if self.s_max < 1:
            raise ConfigError(f"diffusion.s_max={self.s_max} must be >= 1 (S is a count of loop iterations)")
        if self.s_fixed < 1:
            raise ConfigError(f"diffusion.s_fixed={self.s_fixed} must be >= 1")
        if self.s_mean <= 0:
            raise ConfigError(f"diffusion.s_mean={self.s_mean} must be > 0")
        if not 0.0 <= self.t_eps < 0.5:
            raise ConfigError(f"diffusion.t_eps={self.t_eps} must be in [0, 0.5)")
        from .loops import LOOP_DISTRIBUTIONS
        from .schedules import SCHEDULES

        SCHEDULES.get(self.schedule)
        LOOP_DISTRIBUTIONS.get(self.loop_dist)


@dataclass
class DataConfig:
    """Where text comes from and how it becomes packed sequences of length model.max_seq_len."""

    source: str = "stdlib"  # "stdlib" (built-in, offline), a file, a folder, a .jsonl file, or "hf:NAME"
    text_field: str = "text"  # JSONL / datasets column
    val_fraction: float = 0.05  # by a stable hash of each document's name
    max_train_bytes: Optional[int] = None  # cap the training text (quick runs); null = all
    tokenizer: Optional[str] = None  # null: train a byte-level BPE on the training split
    bad_files: str = "skip"  # "skip" (count and go on) or "error" for unreadable / binary files
    cache_dir: Optional[str] = None  # null: ~/.cache/loopmdm

    def validate(self) -> None:
        _check_types(self)
        if not self.source.strip():
            raise ConfigError("data.source='' is empty; use 'stdlib', a file or folder path, or 'hf:NAME'")
        if self.source.startswith("hf:") and not self.source[3:].strip():
            raise ConfigError(f"data.source={self.source!r} names no dataset; use hf:NAME, e.g. hf:openwebtext")
        if not self.text_field.strip():
            raise ConfigError("data.text_field='' is empty; name the JSONL / dataset column that holds the text")
        for name in ("tokenizer", "cache_dir"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise ConfigError(f"data.{name}='' is empty; give a path (or a Hub name for tokenizer) or null")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        if self.max_train_bytes is not None and self.max_train_bytes <= 0:
            raise ConfigError(f"data.max_train_bytes={self.max_train_bytes} must be > 0 or null")
        if self.bad_files not in ("skip", "error"):
            raise ConfigError(f"data.bad_files={self.bad_files!r} is unknown; use 'skip' or 'error'")


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
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 1  # metrics.jsonl line every N steps
    max_bad_steps: int = 5  # non-finite loss / grad norms in a row before the run stops
    device: str = "auto"
    compile: bool = False
    threads: Optional[int] = None
    fsdp: bool = False  # under torchrun: shard parameters / grads / optimizer with FSDP2 instead of DDP

    def validate(self) -> None:
        _check_types(self)
        _positive(self, "batch_size", "grad_accum", "max_steps", "eval_every", "eval_batches", "save_every",
                  "keep_last", "log_every", "max_bad_steps")
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
            raise ConfigError(f"train.precision={self.precision!r} is unknown; use 'fp32' or 'bf16'")
        if self.grad_clip < 0:
            raise ConfigError(f"train.grad_clip={self.grad_clip} must be >= 0 (0 disables clipping)")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas={list(self.betas)} must be two numbers in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay={self.weight_decay} must be >= 0")
        if not 0 <= self.seed < 1 << 62:
            raise ConfigError(f"train.seed={self.seed} must be in [0, 2**62); pick a non-negative integer")
        if self.threads is not None and not 1 <= self.threads <= 4096:
            raise ConfigError(f"train.threads={self.threads} must be >= 1 or null (PyTorch's default)")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"train.device={self.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")


@dataclass
class RunConfig:
    """Everything a training run needs; saved as config.json beside every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.diffusion.validate()
        self.data.validate()
        self.train.validate()
        if self.diffusion.objective == "ar" and not self.model.causal:
            raise ConfigError("diffusion.objective='ar' needs model.causal=true (next-token prediction)")
        if self.diffusion.objective == "ar" and self.model.time_conditioning != "none":
            raise ConfigError("diffusion.objective='ar' has no diffusion time; set model.time_conditioning=none")
        if self.diffusion.objective == "mdm" and self.model.causal:
            raise ConfigError("model.causal=true only fits diffusion.objective='ar'; masked diffusion is bidirectional")
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


# --------------------------------------------------------------------------- presets

def _tiny() -> RunConfig:
    """About 10 minutes on 2 CPU cores. At d_model 128 fp32 is faster than bf16 autocast on CPU (measured:
    5.3k vs 4.8k tokens/s), and lr 1e-3 leaves the unigram plateau within ~400 steps where 2e-3 stays on it."""
    return RunConfig(
        model=ModelConfig(vocab_size=2048, max_seq_len=128, d_model=128, n_heads=4, n_layers=6,
                          n_h=1, n_m=2, n_o=3),
        diffusion=DiffusionConfig(s_max=4),
        data=DataConfig(max_train_bytes=6_000_000),
        train=TrainConfig(batch_size=32, max_steps=800, lr=1e-3, warmup_steps=50, eval_every=200,
                          eval_batches=4, save_every=200, precision="fp32"),
    )


def _paper() -> RunConfig:
    return RunConfig(
        model=ModelConfig(vocab_size=50258, max_seq_len=1024, d_model=768, n_heads=12, n_layers=12,
                          n_h=1, n_m=2, n_o=9, cond_dim=128),
        diffusion=DiffusionConfig(s_max=12),
        data=DataConfig(source="hf:openwebtext", tokenizer="gpt2"),
        train=TrainConfig(batch_size=512, max_steps=1_000_000, lr=3e-4, warmup_steps=2500,
                          eval_every=10_000, save_every=10_000, ema=0.9999, precision="bf16",
                          betas=(0.9, 0.999)),
    )


def _baseline(make):
    """The non-looped twin: same layers, S fixed at 1 (a plain MDM, every line shared)."""

    def build() -> RunConfig:
        cfg = make()
        cfg.diffusion.loop_dist = "fixed"
        cfg.diffusion.s_fixed = 1
        return cfg

    return build


PRESETS = {
    "tiny": _tiny,
    "tiny-baseline": _baseline(_tiny),
    "paper": _paper,
    "paper-baseline": _baseline(_paper),
}


def preset(name: str) -> RunConfig:
    """A fresh copy of a named preset (``tiny``, ``paper`` and their ``-baseline`` twins)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------- loading / overrides

def apply_dict(cfg: Any, d: dict[str, Any], prefix: str = "") -> None:
    """Recursively set dataclass fields from a nested dict, rejecting unknown keys with their valid names."""
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix or '<root>'!r} must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {', '.join(fields)}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            apply_dict(current, value, prefix=f"{path}.")
        else:
            setattr(cfg, key, _coerce(path, value, _field_type(cfg, key)))


def _field_type(cfg: Any, key: str) -> Any:
    return typing.get_type_hints(type(cfg))[key]


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check / convert a value to the field's declared type; one-line error otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(path, value, inner[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path}={_short(value)} must be a list of {len(args)} numbers")
        return tuple(_coerce(path, v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}={_short(value)} must be true or false")
    if tp in (int, float) and isinstance(value, str):
        value = _parse_number(value)  # YAML 1.1 reads 3e-4 as a string
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
                return int(value)
            raise ConfigError(f"{path}={_short(value)} must be an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{path}={_short(value)} must be a number")
        try:
            out = float(value)
        except OverflowError:
            out = math.inf
        if not math.isfinite(out):
            raise ConfigError(f"{path}={_short(value)} must be a finite number")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}={_short(value)} must be a string")
        if "\x00" in value:
            raise ConfigError(f"{path}={_short(value)} contains a NUL character; remove it")
        return value
    return value


def _parse_number(text: str) -> Any:
    """``"3e-4"`` -> 0.0003, ``"12"`` -> 12; anything else is returned unchanged (and refused by the caller)."""
    t = text.strip().replace("_", "")
    for conv in (int, float):
        try:
            return conv(t)
        except (ValueError, OverflowError):
            continue
    return text


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (errors stay one readable line)."""
    r = repr(value).replace("\n", "\\n")
    return r if len(r) <= limit else r[: limit - 3] + "..."


def parse_override(item: str) -> dict[str, Any]:
    """``"model.d_model=512"`` -> ``{"model": {"d_model": 512}}`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like section.key=value, e.g. model.d_model=512")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(preset_name: str = "tiny", config_file: str | Path | None = None,
                overrides: list[str] | None = None, base: Optional[RunConfig] = None) -> RunConfig:
    """Preset (or ``base``, e.g. a checkpoint's config) -> YAML file -> ``--set`` overrides, then validated."""
    cfg = copy.deepcopy(base) if base is not None else preset(preset_name)
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {str(path)!r} {what}; pass a YAML file path")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML ({type(e).__name__}); "
                              "fix its syntax") from None
        except OSError as e:
            raise ConfigError(f"config file {str(path)!r} cannot be read ({e.strerror or e}); "
                              "check its permissions") from None
        apply_dict(cfg, data)
    for item in overrides or []:
        apply_dict(cfg, parse_override(item))
    return cfg.validate()


def _section(obj: Any) -> str:
    return type(obj).__name__.replace("Config", "").lower()


def _check_types(obj: Any) -> None:
    """Re-check every field of a config section against its declared type (a config built in Python, not from
    YAML / --set, may hold a string where a number belongs); numbers are normalised (1 -> 1.0, list -> tuple)."""
    for f in dataclasses.fields(obj):
        path = f"{_section(obj)}.{f.name}"
        setattr(obj, f.name, _coerce(path, getattr(obj, f.name), _field_type(obj, f.name)))


def _at_most(obj: Any, **limits: int) -> None:
    """Sanity upper bounds that catch typos (an extra zero) before they become an out-of-memory crash."""
    for name, limit in limits.items():
        v = getattr(obj, name)
        if v > limit:
            raise ConfigError(f"{_section(obj)}.{name}={_short(v)} is larger than the supported {limit}; "
                              "check for a typo")


def _positive(obj: Any, *names: str) -> None:
    section = _section(obj)
    for name in names:
        v = getattr(obj, name)
        if v < 1:
            raise ConfigError(f"{section}.{name}={v} must be >= 1")
