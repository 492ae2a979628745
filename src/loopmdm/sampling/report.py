"""What a sampling run returns besides tokens: the compute report, the trajectory and per-step info.

The compute report counts what really ran, so that loop policies can be compared at equal compute:
network calls (head + tail passes), mid-block loop iterations (calls of ``model.mid``), the
position-weighted loop count (per-token and per-sample exit update fewer positions per call), FLOPs
(via ``loopmdm.model.flops``, counting the rows and positions actually computed) and wall time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

from ..model import ModelConfig
from ..model.flops import coda_flops, loop_flops, prelude_flops


@dataclass
class ComputeReport:
    """Compute spent by one ``generate`` call.

    network_calls: batched network evaluations (head n_h + tail n_o + LM head), one per denoising step
        unless the cached sampler skipped it; network_rows: sequences evaluated, summed over calls
        (= network_calls * N for the plain samplers).
    loop_iterations: calls of the mid block (n_m layers), the number a forward hook on ``model.mid`` sees.
    token_loop_iterations: position-weighted loop count: the mid-block updates a sequence position received,
        averaged over the N x L positions and summed over steps (= steps * S for fixed S; smaller than
        ``loop_iterations`` when per-sample or per-token exit updates only part of the batch).
    mean_loops: mid-block updates per evaluated position, i.e. the average S actually run per network pass.
    coda_calls: extra tail evaluations made inside the loop (the KL exit criterion), not counted in network_calls.
    flops: forward FLOPs of everything above (``loopmdm.model.flops`` conventions, padding of partial updates included).
    wall_time_s: wall-clock seconds of the sampling loop.
    loops_per_step: mid-block iterations run at each denoising step (0 where the cached sampler skipped).
    steps_run: denoising steps taken (fewer than T with ``stop_at_eos`` or a confidence ``threshold``).
    generated_tokens: positions the sampler filled (N x the free positions); tokens_per_s: generated_tokens /
        wall_time_s.
    head_positions / mid_positions / tail_positions: sequence positions computed (rows x query positions, summed
        over calls; the mid block's summed over its loop iterations too, padding of partial updates included):
        what forward hooks on the blocks see. Key / value caching computes only some positions per call.
    lm_head_positions: positions the LM head ran on.
    position_layers: n_h * head_positions + n_m * mid_positions + n_o * tail_positions (positions x layers x
        loops computed).
    cached_calls: network calls that computed only some positions (the others through cached keys / values);
        cache_refreshes: calls that recomputed every position and refilled the cache (with a cache on).
    notes: one-line remarks about the run (e.g. a semi-AR window padded to whole blocks).
    """

    network_calls: int = 0
    loop_iterations: int = 0
    flops: float = 0.0
    wall_time_s: float = 0.0
    loops_per_step: list[int] = field(default_factory=list)
    network_rows: int = 0
    token_loop_iterations: float = 0.0
    mean_loops: float = 0.0
    coda_calls: int = 0
    steps_run: int = 0
    generated_tokens: int = 0
    tokens_per_s: float = 0.0
    head_positions: int = 0
    mid_positions: int = 0
    tail_positions: int = 0
    lm_head_positions: int = 0
    position_layers: int = 0
    cached_calls: int = 0
    cache_refreshes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ComputeMeter:
    """Accumulates the compute report while a sampler runs; FLOPs of every call come from ``loopmdm.model.flops``
    with the rows and positions that call really computed."""

    def __init__(self, cfg: ModelConfig, num_samples: int, seq_len: int):
        self.cfg = cfg
        self.N, self.L = num_samples, seq_len
        self.report = ComputeReport()
        # sum over mid calls of rows x positions updated (a device scalar once added)
        self.position_updates = 0
        self.positions_evaluated = 0  # sum over network calls of rows x L
        self._step_loops = 0
        self._tail_calls = 0

    def network(self, rows: int, queries: Optional[int] = None) -> None:
        """One batched network evaluation over ``rows`` sequences of length L: counts the head (and time
        embedding) here, the tail when it runs (``tail``). ``queries``: the head computed only that many positions
        per row (key / value caching; padding included), attending to all L."""
        self.report.network_calls += 1
        self.report.network_rows += rows
        self.positions_evaluated += rows * self.L
        self.report.head_positions += rows * (self.L if queries is None else queries)
        self.report.cached_calls += queries is not None
        self.report.flops += prelude_flops(self.cfg, rows, self.L, queries)

    def loop(self, rows: int, queries: int, updated: Optional[int | torch.Tensor] = None) -> None:
        """One mid-block call over ``rows`` sequences with ``queries`` query positions each (keys: all L);
        ``updated``: positions whose state this call really changes (padding of partial updates excluded), an int
        or a device scalar (summed on the device and read once, by ``finish``: no sync per call)."""
        self.report.loop_iterations += 1
        self._step_loops += 1
        self.position_updates += rows * queries if updated is None else updated
        self.report.mid_positions += rows * queries
        self.report.flops += loop_flops(self.cfg, rows, queries, self.L)

    def tail(
        self, rows: int, predicted: Optional[int] = None, queries: Optional[int] = None
    ) -> None:
        """A tail (n_o layers) + LM-head pass over ``rows`` sequences (the LM head at ``predicted`` positions, all
        when None; the tail at ``queries`` positions per row, all when None). One per network call is part of it;
        more (the KL exit criterion looks at the prediction after every loop) are reported as coda_calls."""
        self._tail_calls += 1
        self.report.tail_positions += rows * (self.L if queries is None else queries)
        self.report.lm_head_positions += rows * self.L if predicted is None else predicted
        self.report.flops += coda_flops(self.cfg, rows, self.L, predicted, queries)

    def refresh(self) -> None:
        """A network call that recomputed every position and refilled the key / value cache."""
        self.report.cache_refreshes += 1

    def note(self, text: str) -> None:
        """A one-line remark for the report (once per distinct text)."""
        if text not in self.report.notes:
            self.report.notes.append(text)

    def end_step(self) -> int:
        """Close a denoising step; returns the loop iterations run in it."""
        n, self._step_loops = self._step_loops, 0
        self.report.loops_per_step.append(n)
        self.report.steps_run += 1
        return n

    def finish(self, wall_time_s: float, generated_tokens: int = 0) -> ComputeReport:
        r = self.report
        r.wall_time_s = wall_time_s
        r.generated_tokens = int(generated_tokens)
        r.tokens_per_s = r.generated_tokens / wall_time_s if wall_time_s > 0 else 0.0
        cfg = self.cfg
        r.position_layers = (
            cfg.n_h * r.head_positions + cfg.n_m * r.mid_positions + cfg.n_o * r.tail_positions
        )
        r.coda_calls = max(self._tail_calls - r.network_calls, 0)
        updates = float(self.position_updates)
        r.token_loop_iterations = updates / max(self.N * self.L, 1)
        r.mean_loops = updates / max(self.positions_evaluated, 1)
        return r


@dataclass
class StepInfo:
    """Passed to ``on_step`` after every denoising step (streaming): step is 0-based; tokens [N, L] the
    current ids (mask where still masked); revealed [N, L] True where not masked; loops the mid-block
    iterations of this step; flops_so_far the running FLOP count."""

    step: int
    total_steps: int
    tokens: torch.Tensor
    revealed: torch.Tensor
    loops: int
    flops_so_far: float


@dataclass
class Trajectory:
    """The whole denoising path.

    reveal_step [N, L]: step (0-based) at which each token was revealed; -1 = given by prompt / template;
        positions after a generated EOS (``stop_at_eos``) get the step at which they were filled.
    reveal_loops [N, L]: mid-block updates behind the prediction the token was drawn from (0 for given tokens).
    reveal_confidence [N, L]: the model's probability p_theta(x_0^i | x_t) of the drawn token (SUBS, before
        temperature / top-k / top-p); 1.0 for given tokens, 0.0 for positions filled after EOS.
    loops_per_step / flops_per_step: loop iterations and FLOPs of each step.
    snapshots: token ids [N, L] after each step.
    """

    reveal_step: torch.Tensor
    reveal_loops: torch.Tensor
    reveal_confidence: torch.Tensor
    loops_per_step: list[int]
    flops_per_step: list[float]
    snapshots: list[torch.Tensor]

    def to_dict(self, tokenizer=None) -> dict[str, Any]:
        """JSON-able dict; with a tokenizer, ``tokens`` holds the decoded piece of every final token id."""
        out: dict[str, Any] = {
            "reveal_step": self.reveal_step.tolist(),
            "reveal_loops": self.reveal_loops.tolist(),
            "reveal_confidence": [
                [_finite(v) for v in row] for row in self.reveal_confidence.tolist()
            ],
            "loops_per_step": list(self.loops_per_step),
            "flops_per_step": [float(f) for f in self.flops_per_step],
            "snapshots": [s.tolist() for s in self.snapshots],
        }
        if tokenizer is not None and self.snapshots:
            final = self.snapshots[-1]
            out["tokens"] = [
                [tokenizer.decode([i], skip_special=False) for i in row] for row in final.tolist()
            ]
        return out


def _finite(v: float) -> Optional[float]:
    return v if math.isfinite(v) else None


class TrajectoryRecorder:
    """Fills a Trajectory step by step (only when ``record_trajectory`` is on)."""

    def __init__(self, x: torch.Tensor, free: torch.Tensor):
        N, L = x.shape
        self.reveal_step = torch.where(free, torch.zeros_like(x), torch.full_like(x, -1)).cpu()
        self.reveal_loops = torch.zeros(N, L, dtype=torch.long)
        self.reveal_confidence = torch.where(
            free.cpu(),
            torch.zeros(N, L, dtype=torch.float64),
            torch.ones(N, L, dtype=torch.float64),
        )
        self.loops: list[int] = []
        self.flops: list[float] = []
        self.snapshots: list[torch.Tensor] = []

    def reveal(
        self, step: int, where: torch.Tensor, loops: torch.Tensor, confidence: torch.Tensor
    ) -> None:
        """Tokens at ``where`` [N, L] were revealed at ``step`` from predictions run at ``loops`` [N, L]."""
        w = where.cpu()
        self.reveal_step[w] = step
        self.reveal_loops[w] = loops.cpu().long()[w]
        self.reveal_confidence[w] = confidence.cpu().double()[w]

    def end_step(self, x: torch.Tensor, loops: int, flops: float) -> None:
        self.loops.append(loops)
        self.flops.append(flops)
        self.snapshots.append(x.detach().cpu().clone())

    def build(self) -> Trajectory:
        return Trajectory(
            self.reveal_step,
            self.reveal_loops,
            self.reveal_confidence,
            self.loops,
            self.flops,
            self.snapshots,
        )
