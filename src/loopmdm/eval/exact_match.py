"""Exact-match accuracy of prompt / answer and infill rows over (order) x (T denoising steps) x (S loops).

Only the answer positions are decoded: the given text and the padding stay fixed, the answer positions start
masked, and the library's ``confidence`` sampler fills them greedily (temperature 0) in the order's confidence
ranking (``margin``, ``probability``, ``entropy`` or ``random``); T below the number of answer tokens commits
several per step, ``T = 0`` one per step. Special tokens are never candidates. A row counts when its decoded
answer equals the reference exactly.

Per (order, T, S, group) a record holds the accuracy with its 95% Wilson interval, the token accuracy, the
network FLOPs per problem, and two baselines of the same group: ``majority`` (always answering the group's most
frequent reference answer) and ``heuristic`` (a task's trivial heuristic, when the caller gives one: the
expected exact-match of, e.g., a uniform guess among the prompt's digits). ``group`` is ``"all"`` or the value
of the ``group_by`` integer field.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data.answers import AnswerRow, check_characters, encode_rows
from ..data.tokenizer import TextTokenizer
from ..diffusion import NoiseSchedule
from ..errors import ConfigError, DataError
from ..model.fields import check_int_list
from ..sampling import ORDERS, BannedTokens, Canvas, build, sample_canvas
from ..sampling.policies import LOOP_POLICIES
from ..sampling.samplers import SAMPLERS
from .sudoku import wilson_interval

#: the expected exact-match accuracy of a task's trivial heuristic on one row (its JSON object), or None
Heuristic = Callable[[dict], Optional[float]]


def group_values(rows: Sequence[AnswerRow], group_by: Optional[str]) -> list:
    """The ``group_by`` integer field of every row (a one-line error naming the first row without one)."""
    if group_by is None:
        return ["all"] * len(rows)
    out = []
    for r in rows:
        v = r.raw.get(group_by)
        if type(v) is not int:
            raise DataError(
                f"{r.where}: --group-by {group_by!r} needs an integer field {group_by!r} on every row "
                f"(found {v!r}); choose a field every row has"
            )
        out.append(v)
    return out


@torch.no_grad()
def decode_answers(
    model,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    mask_id: int,
    loops: int,
    steps: int,
    order: str,
    schedule: NoiseSchedule,
    banned: tuple[int, ...],
    seed: int = 0,
    batch_size: int = 256,
    policy: str = "fixed",
    policy_options: Optional[dict] = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, dict]:
    """Fill the ``target`` [N, L] positions of x [N, L] (given tokens elsewhere) at S = ``loops`` (or another
    loop ``policy``) over T = ``steps`` (0: one token per step; clamped to the answer tokens of each batch).
    Returns tokens [N, L] and the cost: ``flops`` (total), ``row_calls`` (network passes x rows, summed over
    batches: a batch runs as many steps as its longest answer needs, so a shorter row sits through idle ones),
    ``wall_time_s``, ``steps_run`` (most in a batch) and ``mean_loops`` (mid-block updates per position of the
    window, prompt and padding included, per network pass, averaged over rows)."""
    device = next(model.parameters()).device
    sampler = build(SAMPLERS, "confidence", {"order": order})
    opts = {"loops": loops} if policy == "fixed" else dict(policy_options or {})
    token_filter = BannedTokens(temperature=0.0, banned=banned)
    gen = torch.Generator().manual_seed(seed)
    out = []
    cost = {"flops": 0.0, "row_calls": 0, "wall_time_s": 0.0, "steps_run": 0, "mean_loops": 0.0}
    for start in range(0, x.shape[0], batch_size):
        free = target[start : start + batch_size].to(device)
        canvas = Canvas(
            x=torch.where(free, mask_id, x[start : start + batch_size].to(device)), free=free
        )
        most = int(free.sum(1).max())
        T = most if steps == 0 else min(steps, most)
        tokens, _, report, _ = sample_canvas(
            model,
            canvas,
            mask_id,
            steps=max(T, 1),
            sampler=sampler,
            policy=build(LOOP_POLICIES, policy, opts),
            token_filter=token_filter,
            schedule=schedule,
            gen=gen,
            precision=precision,
        )
        out.append(tokens.cpu())
        cost["flops"] += report.flops
        cost["row_calls"] += free.shape[0] * report.network_calls
        cost["wall_time_s"] += report.wall_time_s
        cost["steps_run"] = max(cost["steps_run"], report.steps_run)
        cost["mean_loops"] += report.mean_loops * free.shape[0] / x.shape[0]
    return torch.cat(out), cost


def row_steps(target: np.ndarray, steps: int) -> np.ndarray:
    """The denoising steps each row of ``target`` [N, L] needs at T = ``steps``: its n_i answer tokens at T = 0 (one
    per step), else min(T, n_i); at least 1. [N]"""
    n = target.sum(1)
    return np.maximum(n if steps == 0 else np.minimum(steps, n), 1)


def flops_per_problem(cost: dict, need: np.ndarray) -> float:
    """Network FLOPs of one problem decoded on its own: the mean FLOPs of one row's network pass (``cost`` from
    ``decode_answers``) times the steps the rows need (``need``, ``row_steps`` of a group), averaged; independent
    of which rows shared a batch."""
    return cost["flops"] / max(cost["row_calls"], 1) * float(np.mean(need))


def answer_strings(tokens: np.ndarray, target: np.ndarray, tokenizer: TextTokenizer) -> list[str]:
    """Each row's answer positions decoded (special tokens skipped)."""
    return [tokenizer.decode(row[t].tolist()) for row, t in zip(tokens, target)]


def score_predictions(
    pred: np.ndarray,
    ids: np.ndarray,
    target: np.ndarray,
    tokenizer: TextTokenizer,
    index: dict,
    baseline: Optional[np.ndarray] = None,
) -> dict:
    """Per group (``index``: group -> row indices), from predicted tokens ``pred`` [N, L] against the reference
    ``ids`` [N, L] at the ``target`` [N, L] positions: ``n``, ``correct``, ``accuracy`` (answers decoded and
    compared as strings) with its 95% Wilson interval, ``token_accuracy``, ``majority_baseline`` (answering the
    group's most frequent reference every time) and ``heuristic_baseline`` (the mean of ``baseline`` [N])."""
    refs = answer_strings(ids, target, tokenizer)
    right = np.asarray([p == r for p, r in zip(answer_strings(pred, target, tokenizer), refs)])
    tok_right = pred == ids
    out = {}
    for g, idx in index.items():
        n, k = len(idx), int(right[idx].sum())
        out[g] = {
            "n": n,
            "correct": k,
            "accuracy": k / n,
            "accuracy_ci": wilson_interval(k, n),
            "token_accuracy": float(tok_right[idx][target[idx]].mean()),
            "majority_baseline": Counter(refs[i] for i in idx).most_common(1)[0][1] / n,
            "heuristic_baseline": None if baseline is None else float(baseline[idx].mean()),
        }
    return out


def exact_match_grid(
    model,
    tokenizer: TextTokenizer,
    rows: Sequence[AnswerRow],
    *,
    length: int,
    orders: Sequence[str],
    steps: Sequence[int],
    loops: Sequence[int],
    schedule: NoiseSchedule,
    group_by: Optional[str] = None,
    heuristic: Optional[Heuristic] = None,
    seed: int = 0,
    batch_size: int = 256,
    log: Callable[[str], None] = lambda s: None,
    precision: str = "fp32",
) -> list[dict]:
    """One record per (order, T, S, group): ``order``, ``steps``, ``loops``, ``group``, ``n``, ``correct``,
    ``accuracy``, ``accuracy_ci``, ``token_accuracy``, ``majority_baseline``, ``heuristic_baseline``,
    ``flops_per_problem`` (the group's rows each decoded on its own), ``steps_run``, ``wall_time_s``. Rows are
    padded to ``length`` (the model window, as in training); ``precision``: ``"bf16"`` runs the network under
    autocast."""
    for o in orders:
        ORDERS.get(o)
    steps = check_int_list(steps, "--steps", 0)
    loops = check_int_list(loops, "--loops", 1)
    if not rows:
        raise ConfigError("no rows to evaluate; pass a .jsonl file with at least one row")
    check_characters(rows, tokenizer)
    groups = group_values(rows, group_by)
    ids, tgt = encode_rows(rows, tokenizer, length)
    x, target = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(tgt)
    scores = None if heuristic is None else [heuristic(r.raw) for r in rows]
    baseline = None if scores is None or None in scores else np.asarray(scores, dtype=float)
    banned = tuple(sorted(tokenizer.special_ids - {tokenizer.mask_id} | _unk(tokenizer)))
    index = {"all": np.arange(len(rows))}
    if group_by is not None:
        for g in sorted(set(groups)):
            index[g] = np.flatnonzero(np.asarray(groups) == g)
    out = []
    for order in orders:
        for T in steps:
            for S in loops:
                pred, cost = decode_answers(
                    model,
                    x,
                    target,
                    mask_id=tokenizer.mask_id,
                    loops=S,
                    steps=T,
                    order=order,
                    schedule=schedule,
                    banned=banned,
                    seed=seed,
                    batch_size=batch_size,
                    precision=precision,
                )
                groups_scored = score_predictions(
                    pred.numpy(), ids, tgt, tokenizer, index, baseline
                )
                need = row_steps(tgt, T)
                for g, sc in groups_scored.items():
                    out.append(
                        {
                            "order": order,
                            "steps": T,
                            "loops": S,
                            "group": g,
                            "group_by": group_by,
                            **sc,
                            "flops_per_problem": flops_per_problem(cost, need[index[g]]),
                            "steps_run": cost["steps_run"],
                            "wall_time_s": cost["wall_time_s"],
                        }
                    )
                a = groups_scored["all"]
                log(
                    f"{order} T={T or 'one token'} S={S}: exact match {a['accuracy']:.3f} ({a['correct']}/{a['n']})"
                )
    return out


def policy_grid(
    model,
    tokenizer: TextTokenizer,
    rows: Sequence[AnswerRow],
    *,
    length: int,
    order: str,
    steps: int,
    policies: dict,
    schedule: NoiseSchedule,
    group_by: str,
    seed: int = 0,
    batch_size: int = 256,
) -> list[dict]:
    """Adaptive loop policies (``{name: options}``, e.g. ``converge`` / ``per_token``) at T = ``steps``, scored per
    ``group_by`` level: exact match and the mean loops they chose (do they loop more on harder rows?)."""
    groups = np.asarray(group_values(rows, group_by))
    out = []
    for g in sorted(set(groups.tolist())):
        sub = [r for r, v in zip(rows, groups) if v == g]
        ids, tgt = encode_rows(sub, tokenizer, length)
        x, target = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(tgt)
        banned = tuple(sorted(tokenizer.special_ids - {tokenizer.mask_id} | _unk(tokenizer)))
        for name, opts in policies.items():
            pred, cost = decode_answers(
                model,
                x,
                target,
                mask_id=tokenizer.mask_id,
                loops=1,
                steps=steps,
                order=order,
                schedule=schedule,
                banned=banned,
                seed=seed,
                batch_size=batch_size,
                policy=name,
                policy_options=opts,
            )
            sc = score_predictions(pred.numpy(), ids, tgt, tokenizer, {g: np.arange(len(sub))})[g]
            out.append(
                {
                    "policy": name,
                    "options": opts,
                    "steps": steps,
                    "group": g,
                    "group_by": group_by,
                    **sc,
                    "mean_loops": cost["mean_loops"],
                    "flops_per_problem": flops_per_problem(cost, row_steps(tgt, steps)),
                }
            )
    return out


def _unk(tokenizer: TextTokenizer) -> set[int]:
    unk = tokenizer.tok.token_to_id("<unk>")
    return set() if unk is None else {unk}


def overlap_count(test: Sequence[AnswerRow], train: Sequence[AnswerRow]) -> int:
    """How many test rows have the same given text (prompt, or infill context) as some training row."""
    seen = {r.context for r in train}
    return sum(r.context in seen for r in test)
