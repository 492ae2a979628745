"""Approximate key / value caching for masked diffusion sampling, through every stage of the looped network.

A masked diffusion LM attends bidirectionally, so a position's keys / values change whenever any token changes
and no cache is exact. Between two denoising steps, though, they change little (Fast-dLLM, dKV-Cache), and a
LoopMDM pays every step S times in its mid block. A cache keeps, for every position, what its last computation
left: the keys / values it produced at every head layer, at every layer of every loop k of the mid block and at
every tail layer, and its final mid-block state. A network call then recomputes only some *query* positions:
they run head -> S loops -> tail as usual, attending at each layer (and loop) to their own fresh keys / values
and to the cached ones of every other position (``cached_attention``); the others
are not computed at all. A *refresh* recomputes every position (exactly the plain network call) and refills the
cache.

The modes (which positions a call recomputes, when to refresh) are in ``cache_modes``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import ConfigError
from .cache_modes import CacheMode, check_model, check_policy
from .cached_attention import StackCache, stack_cache
from .runner import (
    LoopRunner,
    LoopState,
    Prediction,
    marked_positions,
    padded_positions,
    sub_context,
)

KV = ("k", "v")


class KVCache:
    """The cache of one sampling run (N rows, L positions): per stage and layer (and loop) the keys / values
    {"k", "v"} [N, H, L, hd] each position produced at its last computation, its final mid-block state
    [N, L, D], the token it had then and how many consecutive calls computed it with that token."""

    def __init__(self, mode: CacheMode, policy, num_samples: int, seq_len: int, device, model=None):
        check_policy(policy)
        if model is not None:
            check_model(model)
        self.mode = mode
        self.head: Optional[list[dict]] = None  # one dict per head block
        self.mid: list[list[dict]] = []  # per loop k: one dict per mid block
        self.tail: Optional[list[dict]] = None  # one dict per tail block
        self.state: Optional[torch.Tensor] = None  # [N, L, D]
        self.token = torch.full((num_samples, seq_len), -1, dtype=torch.long, device=device)
        self.fresh = torch.zeros((num_samples, seq_len), dtype=torch.long, device=device)
        self.block: Optional[torch.Tensor] = None  # [L] bool: the current semi-AR block
        self.block_changed = False
        self.since_refresh = 0

    def begin_block(self, in_block: torch.Tensor) -> None:
        """A semi-AR block starts (``in_block`` [L] bool): block-wise modes refresh at its first call."""
        self.block = in_block
        self.block_changed = True

    def needs_refresh(self) -> bool:
        if self.state is None or (self.mode.blockwise and self.block_changed):
            return True
        return self.mode.refresh is not None and self.since_refresh >= self.mode.refresh

    def predict(
        self, model, policy, meter, x: torch.Tensor, t: torch.Tensor, state: LoopState
    ) -> Prediction:
        """One network call for every row of x [N, L] at times t [N], through the cache. Deciding between a refresh
        and a partial call, and its shapes, takes one read of the query counts (a sync)."""
        queries = None if self.needs_refresh() else self.mode.queries(self, x, state.masked)
        counts = None
        if queries is not None:
            # a row with nothing to compute still needs one query position
            queries[:, 0] |= ~queries.any(1)
            counts = QueryCounts.read(queries, state.masked)
        if counts is None or counts.everything:
            runner: LoopRunner = Refresh(model, self, x, t, meter)
            self.since_refresh, self.block_changed, computed = 1, False, None
        else:
            runner = Partial(model, self, x, t, meter, queries, state.masked, counts)
            self.since_refresh, computed = self.since_refresh + 1, queries
        pred = policy.run(runner, state)
        runner.commit()
        same = self.token == x
        fresh = torch.where(same, self.fresh + 1, torch.ones_like(self.fresh))
        if computed is None:
            self.fresh, self.token = fresh, x.clone()
        else:
            self.fresh = torch.where(computed, fresh, self.fresh)
            self.token = torch.where(computed, x, self.token)
        return pred

    # ---------------------------------------------------------------- storage
    def loop_buffers(self, k: int) -> list[dict]:
        """The mid-block keys / values of loop k (created from loop k - 1's when no call ran k loops yet: a
        position cached with fewer loops is seen through its last loop)."""
        while len(self.mid) <= k:
            self.mid.append([{n: c[n].clone() for n in KV} for c in self.mid[-1]])
        return self.mid[k]


class QueryCounts:
    """Per row [N], on the host: the query positions of a partial call (``queries``), those of them the sampler
    reads a prediction at (``predicted``: masked queries) and the masked positions (``masked``), read in one
    transfer, so that the call's shapes need no further sync."""

    def __init__(self, counts: np.ndarray, length: int):
        self.queries, self.predicted, self.masked = counts  # [N] each
        # every position is a query: a refresh
        self.everything = bool((self.queries == length).all())

    @classmethod
    def read(cls, queries: torch.Tensor, masked: torch.Tensor) -> "QueryCounts":
        counts = torch.stack([queries.sum(1), (queries & masked).sum(1), masked.sum(1)])  # [3, N]
        return cls(counts.cpu().numpy(), queries.shape[1])

    @staticmethod
    def total(per_row: np.ndarray, rows: Optional[torch.Tensor], selected: torch.Tensor) -> int:
        """The count over ``rows``: from the host counts ``per_row`` when all rows are used (None); for a subset of
        rows, which a loop policy chose on the device, ``selected`` (those rows' positions, bool) is summed there
        and read (a sync)."""
        return int(per_row.sum()) if rows is None else int(selected.sum())


def _write_rows(
    buffers: list[dict], rows: Optional[torch.Tensor], values: list[dict]
) -> list[dict]:
    """Write per-layer keys / values of ``rows`` (all when None) into ``buffers``; returns the buffers."""
    if rows is None:
        return values
    for b, v in zip(buffers, values):
        for n in KV:
            b[n][rows] = v[n]
    return buffers


def _take_rows(buffers: list[dict], rows: Optional[torch.Tensor]) -> list[dict]:
    return buffers if rows is None else [{n: b[n][rows] for n in KV} for b in buffers]


class Refresh(LoopRunner):
    """A plain network call (every position; the same operations as ``LoopRunner``) that refills the cache."""

    def __init__(self, model, kv: KVCache, x: torch.Tensor, t: torch.Tensor, meter):
        self.kv, self.queries = kv, None
        partial = kv.mode.partial_stages
        head = [{} for _ in model.head.blocks] if partial else None
        ctx = model.prelude(x, t, cache=stack_cache(head))
        meter.network(x.shape[0])
        meter.refresh()
        super().__init__(model, ctx, meter)
        kv.head, kv.mid, kv.tail = head, [], None
        kv.state = torch.zeros_like(ctx.h0)
        # loops each row ran, on the host (``deepen``)
        self.depth = np.zeros(self.B, dtype=np.int64)

    def _rows(self, rows):
        return None if rows is None or rows.numel() == self.B else rows

    def full(self, h, k, rows=None, fill_cache=False):
        rows = self._rows(rows)
        if rows is not None and rows.numel() == 0:
            return h
        fresh = [{} for _ in self.model.mid.blocks]
        kv = self.kv
        if rows is None:
            out = self.model.loop_step(h, self.ctx, k, cache=StackCache(fresh))
            self.meter.loop(self.B, self.L)
            if k == len(kv.mid):
                kv.mid.append(fresh)
            else:
                kv.mid[k] = fresh
            deepen(self.depth, None)
            return out
        # [R, L, D]
        out = self.model.loop_step(h[rows], sub_context(self.ctx, rows), k, cache=StackCache(fresh))
        self.meter.loop(int(rows.numel()), self.L)
        if k == 0 and not kv.mid:
            kv.mid.append([{n: f[n].new_zeros(self.B, *f[n].shape[1:]) for n in KV} for f in fresh])
        _write_rows(kv.loop_buffers(k), rows, fresh)
        deepen(self.depth, rows)
        h = h.clone()
        h[rows] = out
        return h

    def partial(self, h, k, active, per_row):
        # check_policy prevents it
        raise ConfigError("per-token loop exit cannot run with a key / value cache")

    def coda(self, h, rows=None):
        rows = self._rows(rows)
        h_rows = h if rows is None else h[rows]
        ctx = self.ctx if rows is None else sub_context(self.ctx, rows)
        fresh = [{} for _ in self.model.tail.blocks] if self.kv.mode.partial_stages else None
        # = model.coda(h, ctx)
        out = self.model.lm_head(self.model.coda_features(h_rows, ctx, cache=stack_cache(fresh)))
        self.meter.tail(h_rows.shape[0])
        kv = self.kv
        if fresh is not None:
            if kv.tail is None and rows is None:
                kv.tail = fresh
            else:
                if kv.tail is None:
                    kv.tail = [
                        {
                            n: torch.zeros(
                                self.B, *f[n].shape[1:], dtype=f[n].dtype, device=f[n].device
                            )
                            for n in KV
                        }
                        for f in fresh
                    ]
                kv.tail = _write_rows(kv.tail, rows, fresh)
        kv.state[slice(None) if rows is None else rows] = h_rows
        return out

    def commit(self) -> None:
        fill_shallow(self.kv, self.depth, self.queries)


class Partial(LoopRunner):
    """A call that computes only the query positions [N, L] (padded per row to the same count K), attending to
    the cached keys / values of the others at every stage (the mid block only in ``loops`` mode)."""

    def __init__(
        self,
        model,
        kv: KVCache,
        x: torch.Tensor,
        t: torch.Tensor,
        meter,
        queries: torch.Tensor,
        masked: torch.Tensor,
        counts: QueryCounts,
    ):
        self.kv, self.queries, self.masked, self.counts = kv, queries, masked, counts
        # [N, K], [N]
        self.positions, per_row = padded_positions(queries, int(counts.queries.max()))
        K = self.positions.shape[1]
        self.valid = torch.arange(K, device=x.device)[None] < per_row[:, None]  # [N, K]
        D = kv.state.shape[-1]
        self.idx = self.positions[..., None].expand(-1, -1, D)  # [N, K, D]
        if kv.mode.partial_stages:
            ctx = model.prelude(x, t, cache=StackCache(kv.head, self.positions))  # h0 [N, K, D]
            meter.network(x.shape[0], queries=K)
            # others: their cached final state (never updated)
            ctx.h0 = kv.state.scatter(1, self.idx, ctx.h0)
        else:
            ctx = model.prelude(x, t)
            meter.network(x.shape[0])
            meter.report.cached_calls += 1  # the mid block computes only the query positions
            ctx.h0 = torch.where(queries[..., None], ctx.h0, kv.state)
        super().__init__(model, ctx, meter)
        # loops each row ran, on the host (``deepen``)
        self.depth = np.zeros(self.B, dtype=np.int64)

    def _select(self, rows):
        """(rows or None for all, positions [R, K], idx [R, K, D], valid [R, K], context)."""
        if rows is None or rows.numel() == self.B:
            return None, self.positions, self.idx, self.valid, self.ctx
        return (
            rows,
            self.positions[rows],
            self.idx[rows],
            self.valid[rows],
            sub_context(self.ctx, rows),
        )

    def full(self, h, k, rows=None, fill_cache=False):
        if rows is not None and rows.numel() == 0:
            return h
        rows, pos, idx, valid, ctx = self._select(rows)
        buffers = self.kv.loop_buffers(k)
        cache = _take_rows(buffers, rows)
        h_rows = h if rows is None else h[rows]
        # [R, K, D]
        out = self.model.loop_step(h_rows.gather(1, idx), ctx, k, cache=StackCache(cache, pos))
        h_rows = h_rows.scatter(1, idx, out)
        self.meter.loop(
            h_rows.shape[0],
            pos.shape[1],
            updated=int(self.counts.queries.sum()) if rows is None else valid.sum(),
        )
        self.kv.mid[k] = _write_rows(buffers, rows, cache)
        deepen(self.depth, rows)
        if rows is None:
            return h_rows
        h = h.clone()
        h[rows] = h_rows
        return h

    def partial(self, h, k, active, per_row):
        # check_policy prevents it
        raise ConfigError("per-token loop exit cannot run with a key / value cache")

    def coda(self, h, rows=None):
        rows, pos, idx, valid, ctx = self._select(rows)
        h_rows = h if rows is None else h[rows]
        masked = self.masked if rows is None else self.masked[rows]
        R = h_rows.shape[0]
        if self.kv.mode.partial_stages:
            cache = _take_rows(self.kv.tail, rows)
            # [R, K, D]
            feats = self.model.coda_features(
                h_rows.gather(1, idx), ctx, cache=StackCache(cache, pos)
            )
            self.kv.tail = _write_rows(self.kv.tail, rows, cache)
            # [R, K]: the LM head only where the sampler reads a prediction
            pred = valid & masked.gather(1, pos)
            m = QueryCounts.total(self.counts.predicted, rows, pred)
            flat = marked_positions(pred, m)  # [M] in R x K
            # [M, V]
            out = self.model.lm_head(feats.reshape(-1, feats.shape[-1]).index_select(0, flat))
            K = pos.shape[1]
            logits = out.new_zeros(R, self.L, out.shape[-1])
            logits[
                torch.div(flat, K, rounding_mode="floor"), pos.reshape(-1).index_select(0, flat)
            ] = out
            self.meter.tail(R, predicted=m, queries=K)
        else:
            feats = self.model.coda_features(h_rows, ctx)  # [R, L, D]
            m = QueryCounts.total(self.counts.masked, rows, masked)
            flat = marked_positions(masked, m)  # [M] in R x L
            # [M, V]
            out = self.model.lm_head(feats.reshape(-1, feats.shape[-1]).index_select(0, flat))
            logits = (
                out.new_zeros(R * self.L, out.shape[-1])
                .index_copy_(0, flat, out)
                .view(R, self.L, -1)
            )
            self.meter.tail(R, predicted=m)
        self.kv.state[slice(None) if rows is None else rows] = h_rows
        return logits

    def commit(self) -> None:
        fill_shallow(self.kv, self.depth, self.queries)


def deepen(depth: np.ndarray, rows: Optional[torch.Tensor]) -> None:
    """One more loop in the host's per-row loop counts ``depth`` [N] for ``rows`` (all when None; a subset of rows,
    which a loop policy chose on the device, is read: a sync)."""
    if rows is None:
        depth += 1
    else:
        depth[rows.cpu().numpy()] += 1


def fill_shallow(kv: KVCache, depth: np.ndarray, queries: Optional[torch.Tensor]) -> None:
    """After a call in which row r ran depth[r] loops (host), its computed positions (``queries`` [N, L], all when
    None) are seen at every deeper loop k >= depth[r] through their last loop's keys / values."""
    K = len(kv.mid)
    for d in sorted(set(depth.tolist())):
        if d == 0 or d >= K:
            continue
        rows = torch.from_numpy(np.flatnonzero(depth == d)).to(kv.token.device, non_blocking=True)
        q = None if queries is None else queries[rows][:, None, :, None]  # [R, 1, L, 1]
        for k in range(d, K):
            for src, dst in zip(kv.mid[d - 1], kv.mid[k]):
                for n in KV:
                    dst[n][rows] = (
                        src[n][rows] if q is None else torch.where(q, src[n][rows], dst[n][rows])
                    )
