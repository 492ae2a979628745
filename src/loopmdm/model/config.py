"""``ModelConfig``: the transformer split into head (n_h layers, once) -> mid (n_m layers, shared, S times) ->
tail (n_o layers), and its options. Value checks give one-line errors naming the field and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError
from .fields import at_least, at_most, check_types

TIME_CONDITIONINGS = ("adaln", "none")
OWN_BACKBONE = "loopmdm"  # the library's own blocks (layers.py); other names are transformers families (loopify)


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
    # a learned absolute position embedding added to the token embedding
    learned_positions: bool = False
    # RMS-normalise queries and keys per head before rotary (sharper attention early on)
    qk_norm: bool = False
    init_std: float = 0.02  # std of the normal initialisation of every weight matrix and embedding
    dropout: float = 0.0
    # Loop options (all off by default; the paper describes none of them).
    input_injection: bool = False  # Huginn-style adapter on concat[h, h0], identity-initialised
    # sinusoidal loop index -> zero-initialised projection, added per loop
    loop_embedding: bool = False
    checkpoint_loops: bool = False  # activation checkpointing of each loop iteration
    # truncated backprop: gradients through the last k loops only
    backprop_depth: Optional[int] = None
    # Where the layers come from: "loopmdm" (this package's blocks) or a transformers family whose own layers
    # are wrapped (``loopmdm loopify``: bert, roberta, modernbert, dream; see loopmdm.backbones). For those the
    # fields above describe the source for FLOP accounting only, and ``source_config`` holds its config.
    backbone: str = OWN_BACKBONE
    source_config: Optional[dict] = None  # the source model's transformers config (``to_dict()``)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def mlp_dim(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))

    @property
    def wrapped(self) -> bool:
        """True when the layers are a transformers model's own (``backbone`` is not ``"loopmdm"``)."""
        return self.backbone != OWN_BACKBONE

    @property
    def time_conditioned(self) -> bool:
        """True when the diffusion time t conditions every block through adaLN (MDLM's DiT)."""
        return self.time_conditioning == "adaln"

    def validate(self) -> "ModelConfig":
        check_types(self, "model")
        at_least(
            self,
            "model",
            1,
            "vocab_size",
            "max_seq_len",
            "d_model",
            "n_heads",
            "n_layers",
            "cond_dim",
        )
        at_most(
            self,
            "model",
            vocab_size=1 << 24,
            max_seq_len=1 << 20,
            d_model=1 << 16,
            n_heads=1 << 12,
            n_layers=4096,
            cond_dim=1 << 16,
        )
        at_least(self, "model", 0, "n_h", "n_m", "n_o")
        if self.n_h + self.n_m + self.n_o != self.n_layers:
            raise ConfigError(
                f"model.n_h + n_m + n_o = {self.n_h}+{self.n_m}+{self.n_o} = {self.n_h + self.n_m + self.n_o} "
                f"but model.n_layers={self.n_layers}; make the three parts add up to n_layers"
            )
        self._validate_backbone()
        if self.d_model % self.n_heads or (self.head_dim % 2 and not self.wrapped):
            raise ConfigError(
                f"model.d_model={self.d_model} must split into n_heads={self.n_heads} heads of even size "
                "(rotary embeddings); pick d_model divisible by 2 * n_heads"
            )
        if not 0 < self.mlp_ratio <= 64:
            raise ConfigError(f"model.mlp_ratio={self.mlp_ratio} must be in (0, 64]")
        if self.rope_theta <= 0:
            raise ConfigError(
                f"model.rope_theta={self.rope_theta} must be > 0 (rotary base, e.g. 10000)"
            )
        if self.time_conditioning not in TIME_CONDITIONINGS:
            raise ConfigError(
                f"model.time_conditioning={self.time_conditioning!r} is unknown; use "
                f"{' or '.join(repr(t) for t in TIME_CONDITIONINGS)}"
            )
        if not 0.0 < self.init_std <= 1.0:
            raise ConfigError(f"model.init_std={self.init_std} must be in (0, 1]")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.backprop_depth is not None:
            if self.backprop_depth < 1:
                raise ConfigError(
                    f"model.backprop_depth={self.backprop_depth} must be >= 1 "
                    "(or null for full backprop)"
                )
            if not self.input_injection and self.n_h > 0:
                raise ConfigError(
                    "model.backprop_depth is set but model.input_injection is false: the head layers would get "
                    "no gradient; set model.input_injection=true or model.backprop_depth=null"
                )
        return self

    def _validate_backbone(self) -> None:
        """A wrapped source carries its own config and has no time conditioning (the registry of families is
        checked by ``loopmdm.config``, which knows it)."""
        if not self.backbone.strip():
            raise ConfigError(
                f"model.backbone='' is empty; use {OWN_BACKBONE!r} or a loopify family"
            )
        if not self.wrapped:
            if self.source_config is not None:
                raise ConfigError(
                    f"model.source_config is set but model.backbone={OWN_BACKBONE!r}; it describes a "
                    "wrapped transformers model: set it to null or use `loopmdm loopify`"
                )
            return
        if not isinstance(self.source_config, dict) or not self.source_config:
            raise ConfigError(
                f"model.backbone={self.backbone!r} needs model.source_config (the source's transformers "
                "config as a mapping); create the run with `loopmdm loopify`"
            )
        if self.time_conditioned:
            raise ConfigError(
                f"model.backbone={self.backbone!r} has no time conditioning; set "
                "model.time_conditioning=none"
            )
