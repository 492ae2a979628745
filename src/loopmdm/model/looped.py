"""The looped backbone: head (n_h layers) -> mid block (n_m layers, shared, run S times) -> tail (n_o) -> LM head.

    h_0 = head(embed(x_t), t);   h_k = mid(h_{k-1}) for k = 1..S;   logits = tail(h_S)

A plain MDM is the same class with n_m = 0 or S = 1, so baselines and LoopMDM share every line.
The three stages are public (``prelude`` / ``loop_step`` / ``coda``) so that inference-time loop
policies can decide per step, or per token, how many loops to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .errors import ConfigError
from .fields import check_inputs, check_loops
from .layers import Block, Rotary, TimestepEmbedder, modulate, sinusoidal
from .loss import linear_cross_entropy


@dataclass
class LoopContext:
    """What every loop iteration needs: the head output h0 [B, T, D], the time conditioning c [B, cond_dim]
    (or None), rotary tables, the attention mask and whether attention is causal.

    Inference-time key / value caching lives in ``loopmdm.sampling.kvcache``: the stages take an optional
    ``cache`` object of one stack (head, mid or tail) whose ``cache[i]`` does block i's attention and whose
    ``positions`` ([B, K] or None for all) name the sequence positions the call computes; the states of the
    others are seen only through their cached keys / values. The model needs nothing else from it."""

    h0: torch.Tensor
    cond: Optional[torch.Tensor]
    rope: tuple[torch.Tensor, torch.Tensor]
    attn_mask: Optional[torch.Tensor]
    causal: bool


def select_positions(h: torch.Tensor, predict: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The states h [B, T, D] at the positions ``predict`` names: a [B, T] bool mask, or [N] flat indices
    b * T + i in row-major order (what the objectives pass: found on the host, they need no device sync; a mask's
    positions are counted on the device, a sync). Returns (states [N, D], the row b of each [N])."""
    B, T, D = h.shape
    # [N]
    flat = predict.reshape(-1).nonzero().squeeze(1) if predict.dtype == torch.bool else predict
    return h.reshape(B * T, D).index_select(0, flat), torch.div(flat, T, rounding_mode="floor")


class Stack(nn.Module):
    """A sequence of blocks applied in order (one of: head, mid, tail). The mid stack is called once per loop,
    so a forward hook on ``model.mid`` counts loop iterations."""

    def __init__(self, cfg: ModelConfig, n: int):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(n))

    def forward(
        self, h: torch.Tensor, ctx: LoopContext, cache: Optional[Any] = None
    ) -> torch.Tensor:
        """h [B, T, D] -> [B, T, D]. ``cache``: an inference-time key / value cache of this stack (see
        ``LoopContext``); ``cache[i]`` is block i's."""
        for i, block in enumerate(self.blocks):
            kv = None if cache is None else cache[i]
            h = block(h, ctx.rope, ctx.cond, ctx.attn_mask, ctx.causal, kv)
        return h

    def __len__(self) -> int:
        return len(self.blocks)


class LoopMDM(nn.Module):
    """Looped masked diffusion LM. ``forward(x_t, t, loops=S)`` returns raw logits [B, T, V]
    (the SUBS parameterization is applied by the objective / sampler, ``loopmdm.model.subs``)."""

    # forward takes predict / labels: objectives need no full-vocabulary logits
    sparse_prediction = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        d = cfg.d_model
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, d) if cfg.learned_positions else None
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.time_embed = TimestepEmbedder(cfg.cond_dim) if cfg.time_conditioned else None
        self.head = Stack(cfg, cfg.n_h)
        self.mid = Stack(cfg, cfg.n_m)
        self.tail = Stack(cfg, cfg.n_o)
        self.injection = nn.Linear(2 * d, d, bias=False) if cfg.input_injection else None
        self.loop_embed = nn.Linear(64, d, bias=False) if cfg.loop_embedding else None
        adaln = self.time_embed is not None
        self.final_norm = nn.LayerNorm(d, elementwise_affine=not adaln, bias=False)
        self.final_modulation = nn.Linear(cfg.cond_dim, 2 * d) if adaln else None
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if "modulation" in name:
                continue  # adaLN-Zero: stays zero, set in Block
            if p.dim() == 2:
                nn.init.normal_(p, std=self.config.init_std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        if self.final_modulation is not None:
            nn.init.zeros_(self.final_modulation.weight)
            nn.init.zeros_(self.final_modulation.bias)
        if self.injection is not None:  # identity on the state: [I | 0] @ concat[h, h0] = h
            d = self.config.d_model
            with torch.no_grad():
                self.injection.weight.zero_()
                self.injection.weight[:, :d].copy_(torch.eye(d))
        if self.loop_embed is not None:
            nn.init.zeros_(self.loop_embed.weight)
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    # ------------------------------------------------------------------ stages
    def prelude(
        self,
        x_t: torch.Tensor,
        t: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        cache: Optional[Any] = None,
    ) -> LoopContext:
        """Embed tokens x_t [B, T] and run the head (n_h layers) once. t [B] is the diffusion time
        (needed with adaLN time conditioning); attention_mask [B, T] is True on real (non-pad) tokens.

        ``cache``: the head's inference cache (``LoopContext``); with ``cache.positions`` [B, K] only those
        positions of x_t are embedded and run through the head, and ``ctx.h0`` is [B, K, D]."""
        check_inputs(x_t, t, self.config.vocab_size, values=x_t.device.type == "cpu")
        B, T = x_t.shape
        if T > self.config.max_seq_len:
            raise ConfigError(
                f"sequence length {T} exceeds model.max_seq_len={self.config.max_seq_len}; "
                "shorten the input or train a model with a longer window"
            )
        cond = None
        if self.time_embed is not None:
            if t is None:
                raise ConfigError(
                    "this model is time-conditioned (model.time_conditioning='adaln'): pass t"
                )
            cond = self.time_embed(t.expand(B) if t.dim() == 0 else t)  # [B, cond_dim]
        mask = None
        if attention_mask is not None:
            mask = attention_mask[:, None, None, :].bool()  # [B, 1, 1, T] keys to attend to
            if self.config.causal:
                mask = mask & torch.ones(T, T, dtype=torch.bool, device=x_t.device).tril()
        ctx = LoopContext(
            h0=None,
            cond=cond,
            rope=self.rotary(T),
            attn_mask=mask,  # type: ignore[arg-type]
            causal=self.config.causal,
        )
        positions = None if cache is None else cache.positions
        if positions is None:
            h = self.embed(x_t)  # [B, T, D]
            if self.pos_embed is not None:
                h = h + self.pos_embed.weight[:T]
        else:
            h = self.embed(x_t.gather(1, positions))  # [B, K, D]
            if self.pos_embed is not None:
                h = h + self.pos_embed.weight[positions]
        ctx.h0 = self.head(h, ctx, cache)
        return ctx

    def loop_step(
        self, h: torch.Tensor, ctx: LoopContext, k: int, cache: Optional[Any] = None
    ) -> torch.Tensor:
        """One loop iteration k (0-based): optional input injection and loop embedding, then the mid block.

        ``cache``: the mid block's inference cache at this loop (``LoopContext``); with ``cache.positions``
        [B, K], h [B, K, D] holds the states at those positions and only they are updated."""
        positions = None if cache is None else cache.positions
        if self.injection is not None:
            # [B, K, D]
            h0 = (
                ctx.h0 if positions is None else ctx.h0.gather(1, positions[..., None].expand_as(h))
            )
            h = self.injection(torch.cat([h, h0], dim=-1))  # [B, T, 2D] -> [B, T, D]
        if self.loop_embed is not None:
            k_t = torch.full((1,), float(k), device=h.device)
            h = h + self.loop_embed(sinusoidal(k_t, 64).to(h.dtype))[:, None]  # [1, 1, D]
        return self.mid(h, ctx, cache)

    def coda_features(
        self,
        h: torch.Tensor,
        ctx: LoopContext,
        predict: Optional[torch.Tensor] = None,
        cache: Optional[Any] = None,
    ) -> torch.Tensor:
        """Tail (n_o layers) over every position, then the final norm (adaLN-modulated when time-conditioned) at
        every position [B, T, D], or only at the positions ``predict`` marks (``select_positions``): [N, D] (sparse
        prediction: the LM head and the loss need nothing else). ``cache``: the tail's inference cache, as in
        ``prelude`` (h [B, K, D] then holds the states at ``cache.positions``)."""
        h = self.tail(h, ctx, cache)
        cond = ctx.cond
        if predict is not None:
            # [N, D], [N]: the row of each predicted position
            h, rows = select_positions(h, predict)
            cond = None if cond is None else cond.index_select(0, rows)  # [N, cond_dim]
        h = self.final_norm(h)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(cond).chunk(2, dim=-1)  # [B, 2D] or [N, 2D]
            if predict is None:
                shift, scale = shift[:, None], scale[:, None]  # [B, 1, D]
            h = modulate(h, shift, scale)
        return h

    def coda(
        self,
        h: torch.Tensor,
        ctx: LoopContext,
        predict: Optional[torch.Tensor] = None,
        cache: Optional[Any] = None,
    ) -> torch.Tensor:
        """Tail, final norm and LM head: logits [B, T, V], or [N, V] at the positions ``predict`` marks
        (``cache``: see ``coda_features``)."""
        return self.lm_head(self.coda_features(h, ctx, predict, cache))

    def run_loops(
        self, h: torch.Tensor, ctx: LoopContext, loops: int, start: int = 0
    ) -> torch.Tensor:
        """Apply ``loops`` iterations of the mid block, honouring truncated backprop and checkpointing."""
        cfg = self.config
        k_grad = loops if cfg.backprop_depth is None else min(cfg.backprop_depth, loops)
        for k in range(start, start + loops):
            if torch.is_grad_enabled() and k - start < loops - k_grad:
                with torch.no_grad():  # truncated backprop: no graph for early loops
                    h = self.loop_step(h, ctx, k)
            elif cfg.checkpoint_loops and torch.is_grad_enabled():
                h = checkpoint(self.loop_step, h, ctx, k, use_reentrant=False)
            else:
                h = self.loop_step(h, ctx, k)
        return h

    def forward(
        self,
        x_t: torch.Tensor,
        t: Optional[torch.Tensor] = None,
        loops: int = 1,
        attention_mask: Optional[torch.Tensor] = None,
        predict: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        label_weights: Optional[torch.Tensor] = None,
        exclude: Optional[int] = None,
        supervise: Optional[Sequence[int]] = None,
    ):
        """Logits [B, T, V] for tokens x_t [B, T] at diffusion time t [B], running the mid block S = loops times.

        Sparse prediction: with ``predict`` (a [B, T] bool mask or [N] flat indices, ``select_positions``) only
        those positions get the final norm and the LM head: logits [N, V] in row-major order. With ``labels`` [N]
        as well, no logits are formed: the result is ``(sum_i w_i CE_i, CE [N])`` from
        ``loss.linear_cross_entropy`` (weights ``label_weights`` [N], ``exclude`` a token id that gets no
        probability, e.g. the mask under SUBS): the loss runs inside ``forward``, as data-parallel wrappers need.

        Deep supervision (R-MDM, TRM): ``supervise`` lists loop counts k in 1..S whose state h_k also goes
        through the tail and the loss; the result is then the mean of those losses and the CE [N] of h_S.
        ``supervise=[S]`` is exactly the final-loop loss."""
        loops = check_loops(loops)
        ctx = self.prelude(x_t, t, attention_mask)
        if supervise is None:
            h = self.run_loops(ctx.h0, ctx, loops)
            if labels is None:
                return self.coda(h, ctx, predict)
            return self._sparse_loss(h, ctx, predict, labels, label_weights, exclude)
        ks = sorted(set(supervise))
        if labels is None or ks[-1] != loops or ks[0] < 1:
            raise ConfigError(
                f"supervise={list(supervise)} must list loop counts in 1..{loops} including S={loops}, "
                "with labels (deep supervision is a training loss)"
            )
        h, done, total = ctx.h0, 0, 0.0
        for k in ks:
            h, done = self.run_loops(h, ctx, k - done, start=done), k
            loss_k, ce = self._sparse_loss(h, ctx, predict, labels, label_weights, exclude)
            total = total + loss_k
        return total / len(ks), ce

    def _sparse_loss(self, h, ctx, predict, labels, label_weights, exclude):
        """Tail, final norm and the chunked LM-head cross-entropy at the ``predict`` positions of state h."""
        feats = self.coda_features(h, ctx, predict)
        feats = feats.reshape(-1, feats.shape[-1])  # [N, D]
        weight, bias = self.decoder()
        if bias is not None:  # h W^T + b = [h, 1] [W, b]^T
            feats = torch.cat([feats, feats.new_ones(feats.shape[0], 1)], dim=-1)
            weight = torch.cat([weight, bias[:, None].to(weight.dtype)], dim=1)
        return linear_cross_entropy(feats, weight, labels, label_weights, exclude)

    def decoder(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The LM head's weight [V, D] and bias [V] (None: this head has none)."""
        return self.lm_head.weight, None

    def num_parameters(self) -> int:
        """Unique parameters (tied weights counted once); independent of S."""
        return sum(p.numel() for p in self.parameters())
