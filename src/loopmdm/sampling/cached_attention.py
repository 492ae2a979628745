"""Attention through a key / value cache: what the model's layers call when a sampler hands them a cache.

The model knows only the protocol (``LoopContext`` in ``loopmdm.model.looped``): a stage (head, mid block at one
loop, tail) takes a ``StackCache``, block i calls ``cache[i].attend(q, k, v, rope, attn_mask, causal)`` with its
heads before rotary embedding, and ``cache.positions`` names the positions the call computes. The stores are
plain ``{"k", "v"}`` dicts ([B, H, T, hd] each) that ``kvcache`` slices, merges and refreshes by rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..model.layers import apply_rotary


@dataclass
class LayerCache:
    """One attention layer's cache: ``store`` {"k", "v"} [B, H, T, hd] and the query positions [B, K] (None: all)."""

    store: dict
    positions: Optional[torch.Tensor]

    def attend(self, q, k, v, rope, attn_mask, causal) -> torch.Tensor:
        """Attention output [B, H, K, hd] of heads q, k, v [B, H, K, hd] (before rotary).

        Full call (``positions`` None): the plain layer's attention, keeping this call's keys / values. Partial
        call: the keys / values of ``positions`` are written into the store, filled by an earlier full call, and
        the queries attend to every cached key (the others' from their last computation)."""
        if self.positions is None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            # v is a view of the fused [B, T, 3D] qkv output: keep a compact copy, not that
            self.store["k"], self.store["v"] = k, v.contiguous()
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=causal and attn_mask is None
            )
        if "k" not in self.store:
            raise ValueError("a partial attention update needs a cache filled by a full call first")
        positions = self.positions
        B, _, K, _ = q.shape
        cos, sin = rope[0][positions][:, None], rope[1][positions][:, None]  # [B, 1, K, hd/2]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        idx = positions[:, None, :, None].expand_as(k)  # [B, H, K, hd]
        # [B, H, T, hd], in place: the cache is not copied per layer
        keys = self.store["k"].scatter_(2, idx, k)
        values = self.store["v"].scatter_(2, idx, v)
        self.store["k"], self.store["v"] = keys, values
        T = keys.shape[2]
        mask = attn_mask
        # [B, 1, T, T] (causal + padding): keep the query rows
        if mask is not None and mask.shape[-2] > 1:
            mask = mask.expand(B, 1, T, T).gather(2, positions[:, None, :, None].expand(B, 1, K, T))
        if causal:
            # [B, 1, K, T]
            allowed = positions[:, None, :, None] >= torch.arange(T, device=q.device)
            mask = allowed if mask is None else mask & allowed
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # [B, H, K, hd]


@dataclass
class StackCache:
    """One stage's cache as the model takes it: ``layers``, one store per block, and ``positions`` [B, K]."""

    layers: list
    positions: Optional[torch.Tensor] = None

    def __getitem__(self, i: int) -> LayerCache:
        return LayerCache(self.layers[i], self.positions)


def stack_cache(
    layers: Optional[list], positions: Optional[torch.Tensor] = None
) -> Optional[StackCache]:
    """``StackCache(layers, positions)``, or None (no caching) when ``layers`` is None."""
    return None if layers is None else StackCache(layers, positions)
