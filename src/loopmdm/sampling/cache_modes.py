"""Key / value cache modes: which positions a network call recomputes and when the cache is refreshed (the sampler
options ``cache``, ``refresh``, ``delay``), and the checks that a sampler, loop policy and model can use one.

Modes (``CACHES``; the sampler option ``cache``):

* ``prefix`` (Fast-dLLM's prefix cache, ``semi_ar``): a refresh at every block boundary; within a block the
  queries are the current block and everything after it, the finished blocks before it are cached.
* ``dual`` (Fast-dLLM's dual cache, ``semi_ar``): the same, but only the current block is recomputed; the
  masked suffix is cached too.
* ``delayed`` (dKV-Cache, ``confidence`` and ``semi_ar``): a refresh at the first call only; a position is
  recomputed while it is masked and for ``delay`` calls after it is decoded (its keys / values are cached one
  step after it is decoded, when they were computed with its token), then it is *settled* and cached.
* ``loops`` (loop-aware reuse, ``confidence`` and ``semi_ar``): the same rule, applied to the mid block only:
  the head and the tail run on every position every call, but a settled position skips the mid-block loops,
  keeping its last final state and, at each loop k, its last keys / values (per-token exit across steps; the
  state it keeps is the warm start of ``warm``, never looped again).

``refresh=r`` adds a refresh every r network calls (with ``refresh=1`` every call is a plain call: the tokens
equal the uncached sampler's under the same seed). Loop counts may vary between calls (policies ``schedule``
and ``converge``): at loop k a position cached with fewer loops is seen through the keys / values of its last
loop, as ``per_token`` shows frozen positions. ``per_token`` and ``warm`` keep per-position state of their own
and cannot run with a cache.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError
from ..model.fields import check_int
from ..registry import Registry
from .policies import LOOP_POLICIES


class CacheMode:
    """Base class of a cache mode: which positions a call recomputes (``queries``) and when to refresh.

    ``samplers``: the samplers that can use the mode; ``partial_stages``: False when only the mid block is
    computed at the query positions (head and tail run on every position); ``blockwise``: refresh at every
    semi-AR block boundary; ``uses_delay``: the ``delay`` option applies."""

    name = "none"
    active = True
    samplers: tuple[str, ...] = ("confidence", "semi_ar")
    partial_stages = True
    blockwise = False
    uses_delay = False

    def __init__(self, refresh: Optional[int] = None, delay: Optional[int] = None):
        self.refresh = (
            None
            if refresh is None
            else check_int(
                refresh,
                "sampler option refresh",
                1,
                " (a full recompute every that many network calls)",
            )
        )
        if delay is not None and not self.uses_delay:
            raise ConfigError(
                f"sampler option delay applies to cache=delayed or cache=loops, not cache={self.name}"
            )
        self.delay = check_int(
            1 if delay is None else delay,
            "sampler option delay",
            1,
            " (calls a decoded position is still recomputed before it is cached)",
        )

    def queries(self, kv, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Positions [N, L] (bool) the next call recomputes, given the run's ``KVCache`` ``kv``."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "cache": self.name,
            "refresh": self.refresh,
            **({"delay": self.delay} if self.uses_delay else {}),
        }


CACHES: Registry[type[CacheMode]] = Registry("key / value cache")


@CACHES.register("none")
class NoCache(CacheMode):
    """No cache: every call computes every position (the default)."""

    active = False

    def __init__(self, refresh: Optional[int] = None, delay: Optional[int] = None):
        if refresh is not None or delay is not None:
            name = "refresh" if refresh is not None else "delay"
            raise ConfigError(
                f"sampler option {name} needs a key / value cache; set cache=prefix, dual, delayed or "
                "loops"
            )
        self.refresh, self.delay = None, 1


@CACHES.register("prefix")
class PrefixCache(CacheMode):
    """Finished blocks cached, the current block and the suffix recomputed; refreshed at block boundaries."""

    name = "prefix"
    samplers = ("semi_ar",)
    blockwise = True

    def queries(self, kv, x, masked):
        return (kv.block.cumsum(0) > 0)[None].expand_as(masked).clone()  # from the block's start on


@CACHES.register("dual")
class DualCache(CacheMode):
    """Finished blocks and the masked suffix cached, only the current block recomputed; refreshed at block
    boundaries (Fast-dLLM's dual cache)."""

    name = "dual"
    samplers = ("semi_ar",)
    blockwise = True

    def queries(self, kv, x, masked):
        return kv.block[None].expand_as(masked).clone()


@CACHES.register("delayed")
class DelayedCache(CacheMode):
    """dKV-Cache: masked positions and positions decoded fewer than ``delay`` calls ago are recomputed; settled
    ones are cached, at every stage."""

    name = "delayed"
    uses_delay = True

    def queries(self, kv, x, masked):
        settled = ~masked & (kv.token == x) & (kv.fresh >= self.delay)
        return ~settled


@CACHES.register("loops")
class LoopReuse(DelayedCache):
    """Loop-aware reuse: the ``delayed`` rule in the mid block only; head and tail run on every position, and a
    settled position skips the loops with its last final state and per-loop keys / values."""

    name = "loops"
    partial_stages = False


def cache_mode(sampler: str, cache, refresh, delay) -> CacheMode:
    """The cache mode named by the sampler options, checked against the sampler (one-line errors)."""
    cls = CACHES.get(cache)
    if cls.active and sampler not in cls.samplers:
        raise ConfigError(
            f"sampler option cache={cache} needs semi-AR blocks: it is an option of sampler "
            f"{' and '.join(cls.samplers)}; sampler {sampler} takes cache=delayed or cache=loops"
        )
    return cls(refresh=refresh, delay=delay)


def check_policy(policy) -> None:
    """Loop policies with per-position state of their own (per_token, warm) cannot run with a cache."""
    if getattr(policy, "cacheable", True):
        return
    name = next(
        (n for n in LOOP_POLICIES.names() if LOOP_POLICIES.get(n) is type(policy)),
        type(policy).__name__,
    )
    ok = [n for n in LOOP_POLICIES.names() if getattr(LOOP_POLICIES.get(n), "cacheable", True)]
    raise ConfigError(
        f"loop policy {name} keeps per-position state and cannot run with a key / value cache; use "
        f"loop policy {', '.join(ok)}, or sampler option cache=none"
    )


def check_model(model) -> None:
    """The cache drives ``LoopMDM``'s stages block by block (``head`` / ``mid`` / ``tail`` stacks of blocks with
    partial attention, and ``lm_head``); other backbones (loopified transformers models) cannot use it."""
    if all(hasattr(getattr(model, s, None), "blocks") for s in ("head", "mid", "tail")) and hasattr(
        model, "lm_head"
    ):
        return
    raise ConfigError(
        f"this model ({type(model).__name__}) runs whole sequences only and cannot reuse cached keys / "
        "values; drop the sampler option cache (threshold works with any model)"
    )
