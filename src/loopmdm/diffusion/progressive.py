"""Progressive unmasking (PUMA, arXiv 2602.10314): training masks that follow the order in which inference
reveals tokens, instead of masks drawn independently at a random t.

A pool of B rows is kept across optimizer steps. Row b sits at stage k in 0..K-1, with a share
r ~ U[k/K, (k+1)/K) of its free (non-frozen) positions revealed. A row enters at stage 0 with random positions
revealed. After each optimizer step it moves to the next stage by revealing the masked positions the model was
most confident about in that step's forward (teacher forced: revealed positions hold their true tokens), as a
confidence-ordered sampler would at inference; a row that has been through all K stages is replaced by a fresh
one. The stages are spread evenly over the pool, so every batch holds every noise level.

The pool's masks enter the usual objective through a ``Noise`` that encodes them exactly: t solves
1 - alpha_t = m (m: the row's masked share of free positions), u = 0 at masked positions and 1 elsewhere, so
``q_sample`` reproduces the masks and the loss keeps its NELBO weight -alpha'_t / (1 - alpha_t) (1 / m under the
log-linear schedule: PUMA's per-row mean over masked tokens).

Where we differ from the paper's code, and why: the score is the model's probability of the *true* token at a
masked position (the training forward returns it without forming full-vocabulary logits; PUMA ranks by the
largest probability, which agrees wherever the model is confident and right); K is fixed (PUMA grows it during
training); no confidence-threshold collapse.

Use: ``diffusion.progressive_stages = K`` (K >= 2; one process, uniform t, no complementary masks). The trainer
starts the pool from its first batch, takes replacement rows from each step's batch, reads the step's scores
on the host (one sync per step) and saves the pool with every checkpoint (``pool.safetensors``), so a resumed
run continues exactly. Validation keeps the standard NELBO at uniform t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .objectives import Batch, Noise
from .schedules import NoiseSchedule


def spread_stages(n: int, stages: int, gen: torch.Generator) -> torch.Tensor:
    """[n] stage indices covering 0..K-1 as evenly as n allows, in random order."""
    base = torch.arange(stages).repeat(-(-n // stages))[:n]
    return base[torch.randperm(n, generator=gen)]


def free_positions(batch: Batch) -> torch.Tensor:
    """[B, L] bool: the positions that can be masked (not frozen)."""
    return torch.ones_like(batch.x0, dtype=torch.bool) if batch.frozen is None else ~batch.frozen


def revealed_target(
    stage: torch.Tensor, stages: int, n_free: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """[B] how many free positions a row at ``stage`` shows: round(r * n_free), r ~ U[k/K, (k+1)/K), and at most
    n_free - 1 (at least one position stays masked, so every row is scored)."""
    r = (stage.float() + torch.rand(stage.shape, generator=gen)) / stages  # [B]
    return torch.minimum(torch.round(r * n_free.float()).long(), (n_free - 1).clamp_min(0))


def top_k_mask(candidates: torch.Tensor, score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: in each row b, the ``k[b]`` candidate positions with the highest ``score`` (ties: the earlier
    position first)."""
    score = torch.where(
        candidates, score.float(), torch.full_like(score, float("-inf"), dtype=torch.float)
    )
    order = torch.sort(score, dim=1, descending=True, stable=True).indices  # [B, L]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    return candidates & (rank < k[:, None])


def fresh_masks(
    batch: Batch, stage: torch.Tensor, stages: int, gen: torch.Generator
) -> torch.Tensor:
    """[B, L] bool masks of rows entering at ``stage``: every free position masked but a random
    ``revealed_target`` of them."""
    free = free_positions(batch)
    k = revealed_target(stage, stages, free.sum(1), gen)
    return free & ~top_k_mask(free, torch.rand(free.shape, generator=gen), k)


@dataclass
class ProgressivePool:
    """The B rows being trained on (``x0``, ``frozen``), their masks (``masked`` [B, L] bool) and stages (``stage``
    [B] in 0..K-1). Built by ``start``; each optimizer step reads ``batch()`` and ``noise(schedule)``, then calls
    ``advance`` with the step's scores."""

    stages: int
    x0: torch.Tensor
    frozen: Optional[torch.Tensor]
    masked: torch.Tensor
    stage: torch.Tensor

    @classmethod
    def start(cls, stages: int, batch: Batch, gen: torch.Generator) -> "ProgressivePool":
        stage = spread_stages(batch.x0.shape[0], stages, gen)
        return cls(
            stages,
            batch.x0.clone(),
            None if batch.frozen is None else batch.frozen.clone(),
            fresh_masks(batch, stage, stages, gen),
            stage,
        )

    def batch(self) -> Batch:
        return Batch(self.x0, self.frozen)

    def noise(self, schedule: NoiseSchedule) -> Noise:
        """The ``Noise`` whose ``q_sample`` gives exactly the pool's masks (see the module docstring)."""
        n_free = free_positions(self.batch()).sum(1).clamp_min(1)  # [B]
        share = self.masked.sum(1).float() / n_free.float()  # [B]
        t = schedule.t_for_masked_fraction(share)
        return Noise(t, torch.where(self.masked, 0.0, 1.0))

    def advance(
        self, score: torch.Tensor, take: Callable[[int], Batch], gen: torch.Generator
    ) -> int:
        """Move every row one stage on: reveal the masked positions with the highest ``score`` [B, L] (the model's
        probability of the true token this step; other positions are ignored) up to the next stage's share; rows
        past the last stage are replaced by ``take(n)`` fresh rows at stage 0. Returns the number replaced."""
        free = free_positions(self.batch())
        nxt = self.stage + 1
        done = nxt >= self.stages
        want = revealed_target(nxt.clamp_max(self.stages - 1), self.stages, free.sum(1), gen)
        shown = (free & ~self.masked).sum(1)
        reveal = torch.where(done, 0, (want - shown).clamp_min(0))  # [B]
        self.masked = self.masked & ~top_k_mask(self.masked, score, reveal)
        self.stage = nxt
        idx = done.nonzero().flatten()  # the one host sync of a step
        if len(idx):
            self._replace(idx, take(len(idx)), gen)
        return len(idx)

    def _replace(self, idx: torch.Tensor, fresh: Batch, gen: torch.Generator) -> None:
        if fresh.frozen is not None and self.frozen is None:
            self.frozen = torch.zeros_like(self.masked)
        self.x0[idx] = fresh.x0
        if self.frozen is not None:
            self.frozen[idx] = free_positions(fresh).logical_not()
        stage0 = torch.zeros(len(idx), dtype=torch.long)
        self.masked[idx] = fresh_masks(fresh, stage0, self.stages, gen)
        self.stage[idx] = stage0

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The pool as tensors (for the checkpoint; ``frozen`` only when present)."""
        state = {"x0": self.x0, "masked": self.masked, "stage": self.stage}
        if self.frozen is not None:
            state["frozen"] = self.frozen
        return state

    @classmethod
    def from_state(cls, stages: int, state: dict[str, torch.Tensor]) -> "ProgressivePool":
        return cls(
            stages,
            state["x0"].clone(),
            state["frozen"].clone() if "frozen" in state else None,
            state["masked"].clone(),
            state["stage"].clone(),
        )
