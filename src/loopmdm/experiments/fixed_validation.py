"""One validation set for every run of a study: the same rows, times t and masks for every model, every S and
every curve point, with a standard error per value and per paired difference (``experiments.loop_scaling``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..data import PreparedData
from ..diffusion import make_objective
from ..errors import ConfigError
from ..eval.nelbo import evaluate_nelbo


def batch_seed(eval_seed: int, k: int) -> int:
    """The seed of validation batch k's t and masks (independent of every training seed)."""
    return int(np.random.SeedSequence([int(eval_seed), int(k)]).generate_state(1)[0])


@dataclass
class FixedValidation:
    """The study's validation set: batch k holds rows [k B, (k + 1) B) of the validation rows in one fixed random
    order (``row_order``: a permutation drawn from ``seed``, so the batches sample every validation file rather
    than the first few and their means are independent, as the standard errors between batches assume) and
    draws its t and masks from ``batch_seed(seed, k)``, for every run and every S; the first n batches of any
    evaluation are the same rows and noise. ``objective``: one evaluation objective for all runs (antithetic t,
    uniform t)."""

    data: PreparedData
    objective: object
    batch_size: int
    seed: int
    precision: str = "fp32"

    @classmethod
    def of(cls, cfg, data: PreparedData) -> "FixedValidation":
        """From a study config (its ``run`` and ``eval_seed``) and the prepared data."""
        obj = make_objective(cfg.run.diffusion, data.tokenizer.mask_id, antithetic=True)
        return cls(data, obj, cfg.run.train.batch_size, cfg.eval_seed, cfg.run.train.precision)

    def n_batches(self, batches: int) -> int:
        return max(1, min(int(batches), math.ceil(len(self.data.val) / self.batch_size)))

    def row_order(self) -> np.ndarray:
        """The fixed order of the validation rows [N]: a permutation drawn from the study's eval seed alone."""
        return np.random.default_rng([int(self.seed), 0x5A11]).permutation(len(self.data.val))

    def rows(self, batches: int) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """The rows of the first ``batches`` batches [n B, L] (and their frozen positions, if any)."""
        idx = self.row_order()[: self.n_batches(batches) * self.batch_size]
        frozen = self.data.val_frozen
        return self.data.val[idx], None if frozen is None else frozen[idx]

    def evaluate(self, model, loops: int, batches: int) -> dict:
        """NELBO at S = ``loops`` on the first ``batches`` batches: ``nelbo`` (token-weighted), ``stderr``
        (between batches; None with one batch), ``tokens``, ``batches``, ``rows``, ``per_batch`` /
        ``per_batch_tokens`` (for paired differences)."""
        rows, frozen = self.rows(batches)
        per, tok = [], []
        for k in range(self.n_batches(batches)):
            sl = slice(k * self.batch_size, (k + 1) * self.batch_size)
            r = evaluate_nelbo(
                model,
                rows[sl],
                self.objective,
                loops,
                batch_size=self.batch_size,
                max_batches=1,
                seed=batch_seed(self.seed, k),
                precision=self.precision,
                frozen=None if frozen is None else frozen[sl],
            )
            per.append(float(r["nelbo"]))
            tok.append(int(r["tokens"]))
        nelbo = float(np.dot(per, tok) / max(sum(tok), 1))
        stderr = float(np.std(per, ddof=1) / math.sqrt(len(per))) if len(per) > 1 else None
        return {
            "nelbo": nelbo,
            "stderr": stderr,
            "tokens": int(sum(tok)),
            "batches": len(per),
            "rows": len(rows),
            "per_batch": per,
            "per_batch_tokens": tok,
        }


def paired_gain(reference: dict, candidate: dict) -> tuple[float, Optional[float]]:
    """NELBO(reference) - NELBO(candidate) of two ``FixedValidation.evaluate`` results on the same batches, and
    its standard error from the per-batch differences (same rows, t and masks: the shared noise cancels)."""
    n = min(len(reference["per_batch"]), len(candidate["per_batch"]))
    if n != len(reference["per_batch"]) or n != len(candidate["per_batch"]):
        raise ConfigError("a paired difference needs both models evaluated on the same batches")
    d = np.asarray(reference["per_batch"]) - np.asarray(candidate["per_batch"])
    return reference["nelbo"] - candidate["nelbo"], float(
        np.std(d, ddof=1) / math.sqrt(n)
    ) if n > 1 else None
