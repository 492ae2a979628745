"""The registry of backbones and ``build_model``, the one place a run's ``ModelConfig`` becomes a network.

A backbone says where a model's layers come from. ``loopmdm`` is the library's own ``LoopMDM`` (adaLN DiT
blocks, rotary attention). The others are transformers families (``bert``, ``roberta``, ``modernbert``,
``dream``; ``transformers_family.TransformersFamily``): a loopified checkpoint of one of them holds the source
model's own modules, and ``WrappedLoopMDM`` runs them as head -> mid block (S times) -> tail.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..model import LoopMDM, ModelConfig
from ..model.config import OWN_BACKBONE
from ..registry import Registry


class Backbone:
    """One kind of layers. ``build(cfg)`` makes the (randomly initialised) network a ``ModelConfig`` describes;
    ``check(cfg)`` refuses configs it cannot build, with a one-line ``ConfigError``; ``resplit`` maps the
    weights of a checkpoint to a new head / mid / tail split of the same layers (``loopmdm loopify``)."""

    name = ""
    model_types: tuple[str, ...] = ()  # transformers ``config.model_type`` values this family reads
    exportable = True  # ``loopmdm export`` can write a checkpoint of this backbone

    def build(self, cfg: ModelConfig) -> nn.Module:
        raise NotImplementedError

    def check(self, cfg: ModelConfig) -> None:
        """Raise ``ConfigError`` when ``cfg`` cannot describe a model of this backbone."""

    def resplit(
        self, state: dict[str, torch.Tensor], old: ModelConfig, new: ModelConfig
    ) -> dict[str, torch.Tensor]:
        """The state dict of a model with split ``new`` holding the same layers as ``state`` (split ``old``)."""
        return dict(state)


BACKBONES: Registry[Backbone] = Registry("backbone")


class OwnBackbone(Backbone):
    """The library's own ``LoopMDM``: layer i lives in ``head.blocks.i`` (i < n_h), ``mid.blocks.(i - n_h)`` or
    ``tail.blocks.(i - n_h - n_m)``, so a new split is a renaming of block keys."""

    name = OWN_BACKBONE

    def build(self, cfg: ModelConfig) -> nn.Module:
        return LoopMDM(cfg)

    def resplit(self, state, old, new):
        out = {}
        for key, value in state.items():
            out[_block_key(key, old, new)] = value
        return out


BACKBONES.register(OWN_BACKBONE)(OwnBackbone())  # the registry holds one instance per backbone


def _block_key(key: str, old: ModelConfig, new: ModelConfig) -> str:
    """``mid.blocks.0.attn.qkv.weight`` of split ``old`` -> the key of the same layer under split ``new``."""
    stage, _, rest = key.partition(".")
    if stage not in ("head", "mid", "tail") or not rest.startswith("blocks."):
        return key
    index, _, tail = rest[len("blocks.") :].partition(".")
    layer = int(index) + {"head": 0, "mid": old.n_h, "tail": old.n_h + old.n_m}[stage]
    if layer < new.n_h:
        return f"head.blocks.{layer}.{tail}"
    if layer < new.n_h + new.n_m:
        return f"mid.blocks.{layer - new.n_h}.{tail}"
    return f"tail.blocks.{layer - new.n_h - new.n_m}.{tail}"


def get_backbone(name: str) -> Backbone:
    """The registered backbone ``name`` (one-line ``ConfigError`` listing the known ones otherwise)."""
    return BACKBONES.get(name)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network a run's ``ModelConfig`` describes, freshly initialised: ``LoopMDM`` for ``backbone="loopmdm"``,
    a ``WrappedLoopMDM`` around a randomly initialised transformers model for a loopify family (the weights
    are then loaded from a checkpoint). Every place that builds a model from a config calls this."""
    backbone = get_backbone(cfg.backbone)
    backbone.check(cfg)
    check_model_memory(cfg)
    return backbone.build(cfg)


def check_model_memory(cfg: ModelConfig, available: Optional[int] = None) -> None:
    """Refuse, with one line, a config whose fp32 weights (parameters x 4 bytes, ``model.flops.parameter_count``)
    exceed the memory available now, before anything is allocated (``build_model`` builds on the CPU first)."""
    from ..model.flops import parameter_count
    from ..runtime import available_memory

    need = parameter_count(cfg) * 4
    have = available_memory("cpu") if available is None else available
    if have is None or need <= have:
        return
    raise ConfigError(
        f"a model with vocab_size={cfg.vocab_size:,}, d_model={cfg.d_model:,}, "
        f"n_layers={cfg.n_h + cfg.n_m + cfg.n_o} has about {parameter_count(cfg):,} parameters, whose "
        f"fp32 weights need about {need / 2**30:,.1f} GiB, but only {have / 2**30:,.1f} GiB of memory "
        "is available; lower model.d_model / model.vocab_size / model.n_layers (or use a machine with "
        "more memory)"
    )


def family_for(model_type: Optional[str]) -> Backbone:
    """The transformers family whose ``model_types`` include ``model_type`` (a config.json's field)."""
    for name in BACKBONES.names():
        b = BACKBONES.get(name)
        if model_type in b.model_types:
            return b
    if model_type == "loopmdm":  # a `loopmdm export` folder: already looped, read back with import
        raise ConfigError(
            "this folder is a LoopMDM export (config.json model_type 'loopmdm'), already looped; read it "
            "back as a run with `loopmdm import --hf DIR --out RUN`"
        )
    raise ConfigError(
        f"architecture {model_type!r} (config.json model_type) has no loopify adapter; known: "
        f"{known_architectures()}; add one in loopmdm.backbones or pass --family"
    )


def known_architectures() -> str:
    """``bert (bert), dream (Dream), ...``: the families and the model_type values each reads."""
    return ", ".join(
        f"{n} ({'/'.join(BACKBONES.get(n).model_types)})"
        for n in BACKBONES.names()
        if BACKBONES.get(n).model_types
    )
