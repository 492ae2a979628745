"""``WrappedLoopMDM``: a transformers model's own layers run as head -> mid block (S times) -> tail.

    h_0 = head(embed(x_t));   h_k = mid(h_{k-1}) for k = 1..S;   logits = decoder(features(tail(h_S)))

The source model (``source``, e.g. a ``BertForMaskedLM``) keeps its modules and its state-dict names
(``source.bert.encoder.layer.3...``); ``head`` / ``mid`` / ``tail`` are parameter-free views of its layer
ranges [0, A), [A, B), [B, L). Its family (``transformers_family.TransformersFamily``) says how to embed, which
masks and position tables the layers take, and how to turn the last hidden state into logits. At S = 1 the
model computes exactly what the source computes. The interface is ``LoopMDM``'s: ``config``, ``prelude`` /
``loop_step`` / ``coda``, ``run_loops``, ``forward`` with sparse prediction and the fused loss, ``mid`` (called
once per loop), ``num_parameters``. Per-token partial updates (kv-cached per-position loop exit) are refused.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import LoopContext, LoopMDM, ModelConfig
from ..model.layers import sinusoidal
from ..model.looped import select_positions


class LayerRange(nn.Module):
    """Layers [start, stop) of the wrapped source model, run in order (one of head, mid, tail). It owns no
    parameters (the source model does), so the state dict keeps the source's names; the mid range is called
    once per loop iteration, so a forward hook on ``model.mid`` counts loops."""

    def __init__(self, owner: "WrappedLoopMDM", start: int, stop: int):
        super().__init__()
        self.start, self.stop = start, stop
        # a plain reference: the owner holds this module, not the reverse
        object.__setattr__(self, "_owner", owner)

    def forward(self, h: torch.Tensor, ctx: LoopContext) -> torch.Tensor:
        return self._owner.run_layers(self.start, self.stop, h, ctx)  # [B, T, D]

    def __len__(self) -> int:
        return self.stop - self.start


class WrappedLoopMDM(nn.Module):
    """A loopified transformers model: ``forward(x_t, t, loops=S)`` returns raw logits [B, T, V] (t is accepted
    and ignored: these families have no time conditioning). ``family`` is the source's adapter, ``source`` the
    transformers model whose layers [n_h, n_h + n_m) form the looped mid block."""

    # forward takes predict / labels: objectives need no full-vocabulary logits
    sparse_prediction = True

    def __init__(self, cfg: ModelConfig, family, source: nn.Module):
        super().__init__()
        cfg.validate()
        self.config, self.family, self.source = cfg, family, source
        n = len(family.layers(source))
        if n != cfg.n_layers:
            raise ConfigError(
                f"model.n_layers={cfg.n_layers} but the {family.name} source has {n} layers; the run's "
                "config does not describe this model"
            )
        self.head = LayerRange(self, 0, cfg.n_h)
        self.mid = LayerRange(self, cfg.n_h, cfg.n_h + cfg.n_m)
        self.tail = LayerRange(self, cfg.n_h + cfg.n_m, n)
        d = cfg.d_model
        self.injection = nn.Linear(2 * d, d, bias=False) if cfg.input_injection else None
        self.loop_embed = nn.Linear(64, d, bias=False) if cfg.loop_embedding else None
        self.reset_loop_options()
        # Tied weights (BERT's decoder = word embeddings) appear under two names; checkpoints keep one of them.
        self._aliases = tied_aliases(self)
        self.register_state_dict_post_hook(_drop_aliases)
        self.register_load_state_dict_pre_hook(_fill_aliases)

    def reset_loop_options(self) -> None:
        """Input injection starts as [I | 0] (h_k = h) and the loop embedding at zero, so S = 1 stays exact."""
        with torch.no_grad():
            if self.injection is not None:
                d = self.config.d_model
                self.injection.weight.zero_()
                self.injection.weight[:, :d].copy_(torch.eye(d))
            if self.loop_embed is not None:
                self.loop_embed.weight.zero_()

    # ------------------------------------------------------------------ stages
    def run_layers(self, start: int, stop: int, h: torch.Tensor, ctx: LoopContext) -> torch.Tensor:
        """The source's layers start..stop-1 on h [B, T, D], with the masks built once for this call."""
        if start == stop:
            return h
        fam, src = self.family, self.source
        layers = fam.layers(src)
        masks = fam.masks(src, h, ctx.attn_mask)
        for i in range(start, stop):
            h = fam.run_layer(src, layers[i], h, ctx.rope, masks)
        return h

    def _whole_sequences_only(self, cache) -> None:
        """Refuse the inference-only partial updates / key-value caches of ``LoopMDM`` (one-line error)."""
        if cache is not None:
            raise ConfigError(
                f"a loopified {self.family.name} model runs the source's own layers, which cannot "
                "update some positions only or reuse cached keys / values; use --policy fixed, "
                "schedule, converge or warm, and no sampler cache option"
            )

    def prelude(
        self,
        x_t: torch.Tensor,
        t: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[Any] = None,
    ) -> LoopContext:
        """Embed tokens x_t [B, T] as the source does and run the head (layers [0, n_h)) once. ``t`` is ignored
        (no time conditioning); ``attention_mask`` [B, T] is True on real tokens (positions stay 0..T-1)."""
        self._whole_sequences_only(cache)
        B, T = x_t.shape
        if T > self.config.max_seq_len:
            raise ConfigError(
                f"sequence length {T} exceeds model.max_seq_len={self.config.max_seq_len}; shorten the "
                "input (or loopify again with a longer --seq-len, up to the source's positions)"
            )
        h = self.family.embed(self.source, x_t)  # [B, T, D]
        # the same for every row (sampling slices rows of ctx)
        rope = self.family.positions(self.source, h)
        mask = None if attention_mask is None else attention_mask.bool()  # [B, T]
        ctx = LoopContext(h0=None, cond=None, rope=rope, attn_mask=mask, causal=False)  # type: ignore[arg-type]
        ctx.h0 = self.head(h, ctx)
        return ctx

    def loop_step(
        self, h: torch.Tensor, ctx: LoopContext, k: int, cache: Optional[Any] = None
    ) -> torch.Tensor:
        """Loop iteration k (0-based): optional input injection and loop embedding, then the mid block."""
        self._whole_sequences_only(cache)
        if self.injection is not None:
            h = self.injection(torch.cat([h, ctx.h0], dim=-1))  # [B, T, 2D] -> [B, T, D]
        if self.loop_embed is not None:
            k_t = torch.full((1,), float(k), device=h.device)
            h = h + self.loop_embed(sinusoidal(k_t, 64).to(h.dtype))[:, None]  # [1, 1, D]
        return self.mid(h, ctx)

    # The loop over S, truncated backprop and per-loop checkpointing: exactly LoopMDM's.
    run_loops = LoopMDM.run_loops

    def coda_features(
        self,
        h: torch.Tensor,
        ctx: LoopContext,
        predict: Optional[torch.Tensor] = None,
        cache: Optional[Any] = None,
    ) -> torch.Tensor:
        """Tail (layers [n_h + n_m, L)) over every position, then the source's per-position features before its
        decoder (final norm / prediction-head transform): [B, T, D], or [N, D] at the positions ``predict`` marks
        (``select_positions``). Families that read position i's logits from position i - 1 (Dream) shift here."""
        self._whole_sequences_only(cache)
        h = self.tail(h, ctx)
        if self.family.shift:
            h = torch.cat([h[:, :1], h[:, :-1]], dim=1)
        if predict is not None:
            h = select_positions(h, predict)[0]  # [N, D]
        return self.family.features(self.source, h)

    def coda(
        self,
        h: torch.Tensor,
        ctx: LoopContext,
        predict: Optional[torch.Tensor] = None,
        cache: Optional[Any] = None,
    ) -> torch.Tensor:
        """Tail, features and the source's decoder: logits [B, T, V], or [N, V] at the positions ``predict`` marks."""
        weight, bias = self.decoder()
        return F.linear(self.coda_features(h, ctx, predict, cache), weight, bias)

    def decoder(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The source's decoder weight [V, D] and bias [V] (or None)."""
        return self.family.decoder(self.source)

    # The forward pass (dense, sparse prediction, fused loss with a decoder bias) and the parameter count:
    # exactly LoopMDM's, over this model's prelude / loops / coda.
    forward = LoopMDM.forward
    # forward's fused loss (labels given) over coda_features / decoder
    _sparse_loss = LoopMDM._sparse_loss
    num_parameters = LoopMDM.num_parameters


# --------------------------------------------------------------------------- tied weights in state dicts


def tied_aliases(module: nn.Module) -> dict[str, str]:
    """{alias key: kept key} for tensors that appear under several state-dict names (tied parameters)."""
    seen: dict[int, str] = {}
    out = {}
    for key, value in module.state_dict(keep_vars=True).items():
        if id(value) in seen:
            out[key] = seen[id(value)]
        else:
            seen[id(value)] = key
    return out


def _drop_aliases(module, state_dict, prefix, local_metadata) -> None:
    """State-dict post-hook: keep one name per tied tensor (safetensors refuses shared storage)."""
    for alias in module._aliases:
        state_dict.pop(prefix + alias, None)


def _fill_aliases(
    module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
) -> None:
    """Load pre-hook: the names dropped at save time get their kept twin's tensor back."""
    for alias, kept in module._aliases.items():
        if prefix + alias not in state_dict and prefix + kept in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + kept]
