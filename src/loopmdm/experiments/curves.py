"""Learning curves against compute: FLOPs needed to reach a target loss, FLOPs ratios, seed spread.

A curve is a pair of equal-length sequences (cumulative training FLOPs, validation NELBO) read from a
run's ``metrics.jsonl``. The paper's headline number (3.34x on LM1B) is a FLOPs ratio: the FLOPs a
same-size MDM needs to reach its final NELBO divided by the FLOPs LoopMDM needs to reach that value.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import DataError


@dataclass
class Curve:
    """Validation NELBO (nats / token) logged at cumulative training FLOPs, in training order."""

    flops: list[float]
    nelbo: list[float]
    steps: Optional[list[int]] = None  # the optimizer step of each point, when known

    def __post_init__(self) -> None:
        if len(self.flops) != len(self.nelbo) or (
            self.steps is not None and len(self.steps) != len(self.nelbo)
        ):
            raise DataError(
                f"a curve needs as many FLOPs values ({len(self.flops)}) as NELBO values "
                f"({len(self.nelbo)})"
            )
        if any(b < a for a, b in zip(self.flops, self.flops[1:])):
            raise DataError("curve FLOPs must be non-decreasing (cumulative training FLOPs)")

    @property
    def final(self) -> float:
        if not self.nelbo:
            raise DataError("the curve is empty: the run logged no validation NELBO")
        return self.nelbo[-1]

    def to_dict(self) -> dict:
        return {"flops": self.flops, "nelbo": self.nelbo, "steps": self.steps}

    def at_step(self, step: float) -> Optional[float]:
        """NELBO at optimizer step ``step``, linearly interpolated between logged points (None outside them)."""
        if not self.steps or not self.steps[0] <= step <= self.steps[-1]:
            return None
        for (s0, v0), (s1, v1) in zip(
            zip(self.steps, self.nelbo), zip(self.steps[1:], self.nelbo[1:])
        ):
            if s0 <= step <= s1:
                return v0 if s1 == s0 else v0 + (v1 - v0) * (step - s0) / (s1 - s0)
        return self.nelbo[-1]

    def late_gain(self, tail: float = 0.2) -> Optional[float]:
        """Relative improvement over the last ``tail`` of the steps: (NELBO at (1 - tail) of the run - final) /
        NELBO there. Small (< ~2%) means the curve has flattened."""
        if not self.steps:
            return None
        before = self.at_step(self.steps[-1] * (1.0 - tail))
        return None if before is None else (before - self.final) / before


def read_curve(metrics_path: str | Path, key: str = "val_nelbo") -> Curve:
    """The (flops, ``key``) points of a run's metrics.jsonl (lines without ``key`` are skipped)."""
    path = Path(metrics_path)
    if not path.is_file():
        raise DataError(f"metrics file {str(path)!r} does not exist; train the run first")
    flops, values, steps = [], [], []
    for line in path.read_bytes().splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut by a kill, or not a record
        if isinstance(rec, dict) and key in rec and "flops" in rec:
            flops.append(float(rec["flops"]))
            values.append(float(rec[key]))
            steps.append(int(rec["step"]))
    return Curve(flops, values, steps)


def flops_to_reach(curve: Curve, target: float) -> Optional[float]:
    """Cumulative FLOPs at which the curve first reaches ``target`` (NELBO <= target), linearly
    interpolated between the two logged points that bracket the first crossing. ``None`` if never reached.
    A curve already at or below the target at its first point returns that point's FLOPs."""
    if not curve.nelbo:
        raise DataError("the curve is empty: the run logged no validation NELBO")
    for i, (f, v) in enumerate(zip(curve.flops, curve.nelbo)):
        if v <= target:
            if i == 0:
                return f
            f0, v0 = curve.flops[i - 1], curve.nelbo[i - 1]
            frac = (v0 - target) / (v0 - v)  # in (0, 1]: v0 > target >= v
            return f0 + frac * (f - f0)
    return None


def flops_ratio(reference: Curve, candidate: Curve) -> Optional[float]:
    """FLOPs the reference needs to reach its own final NELBO / FLOPs the candidate needs to reach it.
    > 1 means the candidate (e.g. LoopMDM) is that many times cheaper; ``None`` if the candidate
    never reaches the reference's final NELBO."""
    target = reference.final
    f_ref = flops_to_reach(reference, target)
    f_cand = flops_to_reach(candidate, target)
    if f_ref is None or f_cand is None or f_cand <= 0:
        return None
    return f_ref / f_cand


def unigram_cross_entropy(
    train_rows: np.ndarray,
    eval_rows: np.ndarray,
    vocab_size: int,
    smoothing: float = 1.0,
    train_frozen: Optional[np.ndarray] = None,
    eval_frozen: Optional[np.ndarray] = None,
) -> float:
    """The unigram plateau H (nats / token): -mean log p(x) over the tokens of ``eval_rows``, with p the token
    frequencies of ``train_rows`` plus ``smoothing`` (add-one by default) for every id of the vocabulary.

    A masked diffusion model that ignores its context predicts p at every masked position, and the MDLM bound
    of such a model is exactly its cross-entropy (the weight -alpha'_t / (1 - alpha_t) integrates the masked
    share to one), so H is the validation NELBO of the unigram plateau that small runs sit on before they learn
    anything from the context. Frozen (given) positions are skipped on both sides."""
    if smoothing <= 0:
        raise DataError(
            f"smoothing={smoothing} must be > 0 (a validation token absent from training has p = 0)"
        )
    train_tokens = (
        np.asarray(train_rows).ravel()
        if train_frozen is None
        else np.asarray(train_rows)[~train_frozen]
    )
    eval_tokens = (
        np.asarray(eval_rows).ravel()
        if eval_frozen is None
        else np.asarray(eval_rows)[~eval_frozen]
    )
    if eval_tokens.size == 0:
        raise DataError("no validation tokens to compute the unigram cross-entropy on")
    size = max(int(vocab_size), int(train_tokens.max(initial=-1)) + 1, int(eval_tokens.max()) + 1)
    counts = (
        np.bincount(train_tokens.astype(np.int64), minlength=size).astype(np.float64) + smoothing
    )
    logp = np.log(counts) - math.log(counts.sum())
    return float(-logp[eval_tokens.astype(np.int64)].mean())


def plateau_exit_step(curve: Curve, plateau: float, margin: float = 0.25) -> Optional[int]:
    """The step of the first validation point at least ``margin`` nats below ``plateau`` (the run has left the
    unigram plateau there), or None when no point is."""
    if curve.steps is None:
        raise DataError(
            "the curve has no steps; read it with read_curve (metrics.jsonl keeps them)"
        )
    for step, value in zip(curve.steps, curve.nelbo):
        if value <= plateau - margin:
            return int(step)
    return None


def spread(values: Sequence[Optional[float]]) -> dict:
    """Mean, standard deviation (n-1), min and max over seeds, ignoring ``None`` / NaN; ``n`` counts the
    values used and ``values`` keeps all of them (``None`` where a value was not defined)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    out = {"values": [None if v is None else float(v) for v in values], "n": len(vals)}
    if not vals:
        return out | {"mean": None, "std": None, "min": None, "max": None}
    return out | {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
    }


def fmt_spread(s: dict, digits: int = 3) -> str:
    """``mean ± std`` (or ``n/a``) for tables."""
    if s.get("mean") is None:
        return "n/a"
    if s["n"] > 1:
        return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f}"
