"""Validation NELBO / perplexity bound at any loop count S, Monte-Carlo over t with a fixed seed.

The MDLM bound

    NELBO = E_t E_{x_t} [ sum_i 1[x_t^i = mask] * (-alpha'_t / (1 - alpha_t)) * (-log p_theta(x_0^i | x_t)) ]

is estimated by drawing antithetic times t per batch (one uniform offset, then evenly spaced) and one
mask pattern per row: always uniform t (``Objective.for_evaluation``), whatever time sampler, weighting or
complementary masks the objective trains with, so validation numbers of runs with different samplers compare.
``repeats`` passes over the same rows reduce the Monte-Carlo error; the standard error between passes measures it, and ``target_rel_stderr`` keeps adding passes until it is small
enough that two seeds agree (relative difference of two estimates ~ sqrt(2) * stderr / NELBO).
For the autoregressive objective the loss is exact and one pass suffices.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from ..diffusion import Autoregressive, Batch, Objective
from ..errors import ConfigError, DataError
from ..model.fields import check_loops
from ..model.flops import forward_flops_per_token
from ..runtime import autocast_context


def _batch(rows: np.ndarray, frozen: Optional[np.ndarray], sl: slice) -> Batch:
    """Rows ``sl`` on the host [B, L] (the objective moves what the model needs to its device)."""
    f = None if frozen is None else torch.from_numpy(np.ascontiguousarray(frozen[sl], dtype=bool))
    return Batch(torch.from_numpy(rows[sl].astype(np.int64)), f)


def _one_pass(
    model,
    rows: np.ndarray,
    frozen: Optional[np.ndarray],
    objective: Objective,
    loops: int,
    batch_size: int,
    n_batches: int,
    gen: torch.Generator,
    precision: str,
    device: torch.device,
) -> tuple[float, int, list[float]]:
    """One Monte-Carlo pass over the first ``n_batches`` batches: (NLL sum, tokens, per-batch NELBO)."""
    total_nll, total_tok, per_batch = 0.0, 0, []
    for b in range(n_batches):
        batch = _batch(rows, frozen, slice(b * batch_size, (b + 1) * batch_size))
        noise = objective.draw(batch.x0.shape[0], batch.x0.shape[1], gen)
        with autocast_context(device, precision):
            out = objective.loss(model, batch, loops, noise)
        nll = float(out.nll_sum)
        total_nll += nll
        total_tok += out.n_tokens
        per_batch.append(nll / max(out.n_tokens, 1))
    return total_nll, total_tok, per_batch


@torch.no_grad()
def evaluate_nelbo(
    model,
    rows: np.ndarray,
    objective: Objective,
    loops: int,
    batch_size: int = 32,
    max_batches: int | None = None,
    seed: int = 0,
    repeats: int = 1,
    precision: str = "fp32",
    *,
    target_rel_stderr: Optional[float] = None,
    max_repeats: int = 64,
    n_bytes: Optional[int] = None,
    details: bool = False,
    frozen: Optional[np.ndarray] = None,
) -> dict:
    """NELBO per token of packed rows [N, L] at S = loops, averaged over ``repeats`` draws of (t, x_t) per row.

    model: a LoopMDM (or any module with the same ``forward(x_t, t, loops=S)``); objective: from
    ``make_objective`` ('mdm' NELBO, or 'ar' next-token NLL); seed: seeds the one generator used for every
    t and mask draw, so equal seeds give equal numbers; repeats: passes over the same rows (at least);
    target_rel_stderr: if set, keep adding passes (up to ``max_repeats``) until stderr / NELBO is at most
    this; n_bytes: UTF-8 bytes of the text in the evaluated rows (see ``rows_text_bytes``) for bits per byte;
    frozen [N, L]: given positions of conditional data (never masked or scored).

    Returns ``nelbo`` (nats / token), ``ppl`` (the perplexity bound exp(NELBO)), ``bits_per_token``,
    ``stderr`` (standard error of ``nelbo``: between passes when there are >= 2, which is the Monte-Carlo
    error on these rows; with one pass, between batches, which also contains data variation and is
    therefore conservative), ``tokens`` (tokens scored per pass), ``target_met`` (with
    ``target_rel_stderr``), ``bits_per_byte`` (with ``n_bytes``) and, with ``details=True``,
    ``stderr_kind`` ('repeats' | 'batches' | 'exact'), ``repeats`` (passes), ``rows`` and ``pass_nelbo``
    (the estimate of each pass, for paired comparisons between S)."""
    loops = check_loops(loops)
    # the standard unbiased bound: uniform t and independent masks, whatever time sampler the objective trains with
    objective = objective.for_evaluation() if hasattr(objective, "for_evaluation") else objective
    if len(rows) == 0:
        raise DataError(
            "no rows to evaluate; the corpus is shorter than one sequence of model.max_seq_len tokens"
        )
    if batch_size < 1 or repeats < 1 or max_repeats < 1:
        raise ConfigError(
            f"batch_size={batch_size}, repeats={repeats} and max_repeats={max_repeats} must be >= 1"
        )
    if target_rel_stderr is not None and target_rel_stderr <= 0:
        raise ConfigError(f"target_rel_stderr={target_rel_stderr} must be > 0 (e.g. 0.003)")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    n_batches = math.ceil(len(rows) / batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    deterministic = isinstance(objective, Autoregressive)
    want = 1 if deterministic else repeats
    if target_rel_stderr is not None and not deterministic:
        want = max(want, 3)  # the between-pass spread needs a few passes to be trusted
    limit = want if target_rel_stderr is None or deterministic else max(want, max_repeats)
    pass_nll, pass_tok, per_batch = [], [], []
    try:
        while len(pass_nll) < limit:
            nll, tok, pb = _one_pass(
                model, rows, frozen, objective, loops, batch_size, n_batches, gen, precision, device
            )
            pass_nll.append(nll)
            pass_tok.append(tok)
            per_batch.extend(pb)
            if len(pass_nll) >= want and target_rel_stderr is not None:
                nelbo, stderr, _ = _combine(pass_nll, pass_tok, per_batch)
                if stderr <= target_rel_stderr * abs(nelbo) or deterministic:
                    break
    finally:
        model.train(was_training)
    nelbo, stderr, kind = _combine(pass_nll, pass_tok, per_batch)
    if deterministic:
        stderr, kind = 0.0, "exact"
    out = {
        "loops": loops,
        "nelbo": nelbo,
        "ppl": math.exp(min(nelbo, 50.0)),
        "bits_per_token": nelbo / math.log(2),
        "stderr": stderr,
        "tokens": pass_tok[0],
    }
    if details:
        out.update(
            stderr_kind=kind,
            repeats=len(pass_nll),
            rows=min(len(rows), n_batches * batch_size),
            pass_nelbo=[n / max(k, 1) for n, k in zip(pass_nll, pass_tok)],
        )
    if target_rel_stderr is not None and not deterministic:
        out["target_met"] = bool(stderr <= target_rel_stderr * abs(nelbo))
    if n_bytes is not None:
        if n_bytes <= 0:
            raise DataError("the evaluated rows hold no text bytes; bits per byte is undefined")
        out["bits_per_byte"] = nelbo * pass_tok[0] / (n_bytes * math.log(2))
    return out


def _combine(
    pass_nll: list[float], pass_tok: list[int], per_batch: list[float]
) -> tuple[float, float, str]:
    """Token-weighted NELBO over all passes and its standard error (between passes, else between batches)."""
    nelbo = sum(pass_nll) / max(sum(pass_tok), 1)
    if len(pass_nll) >= 2:
        est = np.array(pass_nll) / np.maximum(np.array(pass_tok), 1)
        return nelbo, float(np.std(est, ddof=1) / math.sqrt(len(est))), "repeats"
    if len(per_batch) >= 2:
        return nelbo, float(np.std(per_batch, ddof=1) / math.sqrt(len(per_batch))), "batches"
    return nelbo, float("nan"), "none"


def rows_text_bytes(tokenizer, rows: np.ndarray) -> int:
    """UTF-8 bytes of the text held by packed rows [N, L] (special tokens count zero bytes).

    The rows are consecutive pieces of one packed token stream, so decoding them as one sequence is exact
    for a byte-level BPE (a row boundary may split a multi-byte character)."""
    if rows.size == 0:
        return 0
    return len(tokenizer.decode(rows.reshape(-1).tolist()).encode("utf-8"))


def nelbo_sweep(
    model,
    rows: np.ndarray,
    objective: Objective,
    loops: Sequence[int],
    *,
    batch_size: int = 32,
    max_batches: Optional[int] = None,
    seed: int = 0,
    repeats: int = 1,
    target_rel_stderr: Optional[float] = None,
    max_repeats: int = 64,
    precision: str = "fp32",
    tokenizer=None,
    log=lambda s: None,
    frozen: Optional[np.ndarray] = None,
) -> list[dict]:
    """``evaluate_nelbo`` at every S in ``loops`` with the same seed (common random numbers: every S sees the
    same t and masks, so differences between S are measured more precisely than each value alone).

    Adds ``flops_per_token`` (forward FLOPs at S, ``loopmdm.model.flops``), ``delta`` / ``delta_stderr`` (the paired
    difference NELBO(S) - NELBO(first S) over their common passes, whose error is far smaller than either
    value's because the Monte-Carlo noise is shared) and, when ``tokenizer`` is given, ``bits_per_byte`` over
    the bytes of the evaluated rows."""
    loops = [check_loops(s) for s in loops]
    if not loops:
        raise ConfigError("loops is empty; pass at least one S >= 1")
    n_rows = len(rows) if max_batches is None else min(len(rows), max_batches * batch_size)
    n_bytes = rows_text_bytes(tokenizer, rows[:n_rows]) if tokenizer is not None else None
    cfg = getattr(model, "config", None)
    out = []
    for s in loops:
        r = evaluate_nelbo(
            model,
            rows,
            objective,
            s,
            batch_size=batch_size,
            max_batches=max_batches,
            seed=seed,
            repeats=repeats,
            precision=precision,
            target_rel_stderr=target_rel_stderr,
            max_repeats=max_repeats,
            n_bytes=n_bytes,
            details=True,
            frozen=frozen,
        )
        if cfg is not None:
            r["flops_per_token"] = forward_flops_per_token(cfg, s, rows.shape[1])
        log(f"S={s}: NELBO {r['nelbo']:.4f} +- {r['stderr']:.4f} ({r['repeats']} passes)")
        if r.get("target_met") is False:
            log(
                f"S={s}: stderr / NELBO = {r['stderr'] / r['nelbo']:.4f} is above the target {target_rel_stderr} "
                f"after {r['repeats']} passes; raise max_repeats (--max-repeats) or the rows (--batches)"
            )
        out.append(r)
    for r in out:
        r["delta"], r["delta_stderr"] = paired_difference(r["pass_nelbo"], out[0]["pass_nelbo"])
    return out


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of a[i] - b[i] over the common passes (same seed: same t and masks per pass)."""
    n = min(len(a), len(b))
    d = np.asarray(a[:n]) - np.asarray(b[:n])
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
