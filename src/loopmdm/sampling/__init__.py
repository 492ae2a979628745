"""Sampling from LoopMDM: samplers, loop policies at inference, conditioning, and the compute report.

The entry point is ``generate`` (``loopmdm.sampling.api``); variants are found through the registries
``SAMPLERS`` (ancestral, cached, confidence, semi_ar) and ``LOOP_POLICIES`` (fixed, schedule, converge,
per_token, warm). Fast sampling: the ``confidence`` and ``semi_ar`` options ``threshold`` (parallel decoding) and
``cache`` (approximate key / value caching, ``cache_modes.CACHES``). See docs/sampling.md.
"""

from ..registry import build
from .api import SampleOutput, generate, sample_canvas
from .cache_modes import CACHES
from .conditioning import Canvas, build_canvas, parse_template
from .filters import BannedTokens, TokenFilter, draw
from .kvcache import KVCache
from .orders import ORDERS
from .policies import DEFAULT_LOOPS, LOOP_POLICIES, SHAPES, LoopPolicy
from .reference import reference_sample
from .report import ComputeReport, StepInfo, Trajectory
from .samplers import SAMPLERS, Sampler, transfer_counts

__all__ = [
    "generate",
    "sample_canvas",
    "build",
    "SampleOutput",
    "ComputeReport",
    "Trajectory",
    "StepInfo",
    "SAMPLERS",
    "LOOP_POLICIES",
    "SHAPES",
    "ORDERS",
    "DEFAULT_LOOPS",
    "Sampler",
    "LoopPolicy",
    "TokenFilter",
    "BannedTokens",
    "draw",
    "reference_sample",
    "Canvas",
    "build_canvas",
    "parse_template",
    "transfer_counts",
    "CACHES",
    "KVCache",
]
