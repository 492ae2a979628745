"""JSON events the viewer consumes, built from ``StepInfo`` / ``SampleOutput`` / ``Trajectory``.

The browser page (streamed, one event per denoising step) and the self-contained trajectory export
(``loopmdm.viz.trajectory_html``, all steps at once) share one data model:

- ``start``: request echo, total steps T, mask / special token ids, and ``given`` [N, L] (positions fixed by
  the prompt / template);
- ``step``: token ids [N, L] after step k, revealed mask [N, L], loops S spent at step k, FLOPs so far,
  and the text pieces of token ids not sent before;
- ``done``: decoded texts, the compute report and the trajectory (reveal step / loops / confidence per token);
- ``error``: a one-line message (``code`` is ``timeout``, ``cancelled``, ``bad_request`` or ``internal``).

Steps are counted from 1 here (k = 1..T, 0 = not revealed yet), as the page shows them; ``StepInfo.step`` and
``Trajectory.reveal_step`` count from 0 (-1 = given), so both are shifted by one.
"""

from __future__ import annotations

import math
import threading
from itertools import accumulate
from typing import Any, Iterable, Optional

import torch


class PieceTable:
    """Text of single token ids, decoded once (specials kept visible, e.g. ``<eos>``); shared between threads."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}
        self._lock = threading.Lock()

    def piece(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special=False)
            with self._lock:
                self._cache[token_id] = text
        return text

    def pieces(self, ids: Iterable[int]) -> dict[str, str]:
        """``{str(id): text}`` for the given ids (JSON object keys are strings)."""
        return {str(i): self.piece(i) for i in ids}


def to_int_rows(x: torch.Tensor) -> list[list[int]]:
    """A [N, L] tensor as nested lists of ints."""
    return x.detach().to("cpu", torch.long).tolist()


def loops_value(loops: Any) -> float | int:
    """Loops S spent at one step as a number: an int, or the mean when given one count per token / sample."""
    if isinstance(loops, torch.Tensor):
        return int(loops.item()) if loops.numel() == 1 else round(float(loops.float().mean()), 3)
    if isinstance(loops, (list, tuple)):
        return round(sum(loops) / max(len(loops), 1), 3)
    return int(loops) if float(loops).is_integer() else float(loops)


def finite(x: float) -> float | None:
    """JSON has no NaN / inf: those become null."""
    x = float(x)
    return x if math.isfinite(x) else None


class EventEncoder:
    """Encodes one generation's steps; remembers which token pieces the client has already received."""

    def __init__(self, tokenizer, pieces: PieceTable):
        self.tokenizer = tokenizer
        self.table = pieces
        self._sent: set[int] = set()

    def start(
        self,
        *,
        total_steps: int,
        request: dict[str, Any],
        model_info: dict[str, Any],
        given: Optional[torch.Tensor] = None,
    ) -> dict[str, Any]:
        """given: [N, L] bool, True at positions fixed by the prompt / template (None: unknown until done)."""
        tok = self.tokenizer
        return {
            "type": "start",
            "total_steps": total_steps,
            "request": request,
            "model": model_info,
            "mask_id": tok.mask_id,
            "special_ids": sorted(tok.special_ids - {tok.mask_id}),
            "given": None if given is None else to_int_rows(given),
        }

    def _new_pieces(self, rows: list[list[int]]) -> dict[str, str]:
        fresh = {i for row in rows for i in row} - self._sent - {self.tokenizer.mask_id}
        self._sent |= fresh
        return self.table.pieces(sorted(fresh))

    def step(self, info, elapsed_s: float) -> dict[str, Any]:
        """One ``StepInfo`` (tokens [N, L], revealed [N, L] after step k of T)."""
        rows = to_int_rows(info.tokens)
        return {
            "type": "step",
            "step": int(info.step) + 1,
            "total_steps": int(info.total_steps),
            "tokens": rows,
            "revealed": to_int_rows(info.revealed),
            "loops": loops_value(info.loops),
            "flops_so_far": finite(info.flops_so_far),
            "elapsed_s": round(elapsed_s, 4),
            "pieces": self._new_pieces(rows),
        }

    def done(self, output) -> dict[str, Any]:
        """The final ``SampleOutput``: texts, compute report and the per-token trajectory."""
        rows = to_int_rows(output.tokens)
        event = {
            "type": "done",
            "tokens": rows,
            "texts": list(output.texts),
            "pieces": self._new_pieces(rows),
            "report": report_dict(output.report),
            "trajectory": None,
        }
        if output.trajectory is not None:
            event["trajectory"] = trajectory_summary(output.trajectory, output.report)
        return event


def report_dict(report) -> dict[str, Any]:
    """``ComputeReport`` as JSON (network calls, loop iterations, FLOPs, wall time, loops per step)."""
    d = report.to_dict() if hasattr(report, "to_dict") else dict(vars(report))
    return {k: (finite(v) if isinstance(v, float) else v) for k, v in d.items()}


def cumulative_flops(traj, report) -> list[float]:
    """FLOPs spent up to and including each step. ``Trajectory.flops_per_step`` is read as per-step FLOPs
    (the contract) unless its last entry, not its sum, equals the report's total (a running count)."""
    values = [float(f) for f in traj.flops_per_step]
    total = float(getattr(report, "flops", float("nan")))
    if (
        len(values) > 1
        and math.isclose(values[-1], total, rel_tol=1e-9)
        and not math.isclose(sum(values), total, rel_tol=1e-9)
    ):
        return values
    return list(accumulate(values))


def trajectory_summary(traj, report) -> dict[str, Any]:
    """Per-token reveal step (1-based; -1 = given), loops and confidence [N, L]; loops per step and
    cumulative FLOPs after each step."""
    conf = traj.reveal_confidence.detach().double().cpu()
    conf = torch.where(torch.isfinite(conf), conf, torch.zeros_like(conf))
    rs = traj.reveal_step.detach().cpu().long()
    return {
        "reveal_step": to_int_rows(torch.where(rs >= 0, rs + 1, rs)),
        "reveal_loops": to_int_rows(traj.reveal_loops),
        "reveal_confidence": [[round(c, 4) for c in row] for row in conf.tolist()],
        "loops_per_step": [loops_value(x) for x in traj.loops_per_step],
        "cumulative_flops": [finite(x) for x in cumulative_flops(traj, report)],
    }


def error_event(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}
