"""The Sudoku metric: board accuracy over (T denoising steps) x (S loops) x (unmasking order).

Boards are solved by the library's own ``confidence`` sampler on a canvas whose givens are fixed and whose blanks
are masked: greedy (temperature 0) candidates, the order decides which cells are committed first, and T below
the number of blanks commits several cells per step (T = 0 here means one cell per step); with a ``threshold``
(parallel decoding) every cell whose confidence exceeds it is committed too, so fewer steps run. Per (order, T, S) the
grid reports board accuracy (all 81 cells right), cell accuracy on the blanks, the share of complete grids that
break no rule, 95% Wilson intervals for the two rates over boards, and the network FLOPs spent per board.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data import TextTokenizer
from ..data.sudoku import MASK_ID, SudokuPair, decode_grid, encode_grids, is_sudoku_tokenizer, is_valid_solution
from ..diffusion import NoiseSchedule
from ..errors import ConfigError
from ..model.fields import check_int, check_int_list
from ..sampling import ORDERS, Canvas, TokenFilter, build, sample_canvas
from ..sampling.policies import LOOP_POLICIES
from ..sampling.samplers import SAMPLERS


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial rate (well-behaved at 0 and 1)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class SudokuScore:
    """One (order, T, S) cell of the grid. ``steps`` is the requested T (0 = one cell per step), ``steps_run``
    the denoising steps the sampler took."""

    order: str
    steps: int
    loops: int
    boards: int
    solved: int
    board_accuracy: float
    board_accuracy_ci: tuple[float, float]
    cell_accuracy: float
    valid_grids: float
    valid_grids_ci: tuple[float, float]
    flops_per_board: float
    steps_run: int
    wall_time_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def score_grids(predicted: Sequence[str], pairs: Sequence[SudokuPair]) -> dict:
    """Boards solved (all 81 right), cell accuracy over the puzzles' blanks, and grids that break no rule."""
    if len(predicted) != len(pairs) or not pairs:
        raise ConfigError(f"{len(predicted)} predicted grids for {len(pairs)} puzzles; pass one per puzzle")
    pred = encode_grids(predicted)  # [N, 81] (blanks -> mask id)
    sol = encode_grids([p.solution for p in pairs])
    blank = encode_grids([p.puzzle for p in pairs]) != sol
    right = pred == sol
    return {"solved": int(right.all(1).sum()), "cell_accuracy": float(right[blank].mean()) if blank.any() else 1.0,
            "valid": int(sum(is_valid_solution(g) for g in predicted))}


@dataclass(frozen=True)
class DigitFilter(TokenFilter):
    """The token filter of the solver: candidates are drawn from the digits 1-9 only, so a blank never receives
    ``<pad>`` (SUBS already rules out the mask)."""

    def log_probs(self, logits: torch.Tensor, mask_id: int) -> torch.Tensor:
        not_digit = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
        not_digit[1:10] = False  # the Sudoku tokenizer's digit ids (digit d -> id d)
        return super().log_probs(logits.masked_fill(not_digit, -math.inf), mask_id)


def puzzle_canvas(pairs: Sequence[SudokuPair], device: torch.device | str = "cpu") -> Canvas:
    """Givens fixed, blanks masked and free: x [N, 81], free [N, 81]."""
    x = torch.from_numpy(encode_grids([p.puzzle for p in pairs]).astype(np.int64)).to(device)
    return Canvas(x=x, free=x == MASK_ID)


@torch.no_grad()
def solve_boards(model, pairs: Sequence[SudokuPair], *, mask_id: int, loops: int, steps: int, order: str,
                 schedule: NoiseSchedule, policy: str = "fixed", policy_options: Optional[dict] = None,
                 seed: int = 0, batch_size: int = 256, threshold: Optional[float] = None,
                 sampler_options: Optional[dict] = None):
    """Grids [N] (strings) predicted for the puzzles at S = ``loops`` (the fixed policy; another loop policy with
    its options otherwise) over T = ``steps`` denoising steps (0: one cell per step), and the summed compute
    reports' FLOPs and wall time and the largest number of steps taken. ``threshold`` (in (0, 1]): parallel
    decoding, every step also commits every cell whose confidence (``order`` probability or margin) exceeds it,
    so fewer steps run; ``sampler_options``: more options of the ``confidence`` sampler (e.g. ``cache``)."""
    device = next(model.parameters()).device
    grids, flops, wall, steps_run = [], 0.0, 0.0, 0
    opts = {"loops": loops} if policy == "fixed" else dict(policy_options or {})
    s_opts = {**(sampler_options or {}), "order": order}
    if threshold is not None:
        s_opts["threshold"] = threshold
    sampler = build(SAMPLERS, "confidence", s_opts)  # checks the options once, before any board
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        canvas = puzzle_canvas(chunk, device)
        T = int(canvas.free.sum(1).max()) if steps == 0 else steps
        x, _, report, _ = sample_canvas(
            model, canvas, mask_id, steps=max(T, 1), sampler=sampler,
            policy=build(LOOP_POLICIES, policy, opts), token_filter=DigitFilter(temperature=0.0),
            schedule=schedule, gen=gen)
        grids += [decode_grid(row) for row in x.tolist()]
        flops, wall, steps_run = flops + report.flops, wall + report.wall_time_s, max(steps_run, report.steps_run)
    return grids, flops, wall, steps_run


def check_sudoku_model(tokenizer: TextTokenizer) -> None:
    """A one-line error when a checkpoint's vocabulary is not the Sudoku one."""
    if not is_sudoku_tokenizer(tokenizer):
        raise ConfigError(f"--metric sudoku needs a Sudoku model (vocabulary <pad>, 1-9, <mask>), but this "
                          f"checkpoint has a {tokenizer.vocab_size}-token vocabulary (a text model?); train one "
                          "with `loopmdm train --preset sudoku`")


def sudoku_grid(model, tokenizer: TextTokenizer, pairs: Sequence[SudokuPair], *, orders: Sequence[str],
                steps: Sequence[int], loops: Sequence[int], schedule: NoiseSchedule, seed: int = 0,
                batch_size: int = 256, log: Callable[[str], None] = lambda s: None,
                threshold: Optional[float] = None, sampler_options: Optional[dict] = None) -> list[SudokuScore]:
    """Score every (order, T, S) on the puzzles; ``steps`` may hold 0 (one cell per step). ``threshold`` /
    ``sampler_options``: parallel decoding and other ``confidence`` sampler options (see ``solve_boards``)."""
    check_sudoku_model(tokenizer)
    for o in orders:
        ORDERS.get(o)
    steps = check_int_list(steps, "--steps", 0)
    loops = check_int_list(loops, "--loops", 1)
    check_int(len(pairs), "number of boards")
    out = []
    n = len(pairs)
    for order in orders:
        for T in steps:
            for S in loops:
                grids, flops, wall, steps_run = solve_boards(model, pairs, mask_id=tokenizer.mask_id, loops=S,
                                                             steps=T, order=order, schedule=schedule, seed=seed,
                                                             batch_size=batch_size, threshold=threshold,
                                                             sampler_options=sampler_options)
                sc = score_grids(grids, pairs)
                out.append(SudokuScore(order, T, S, n, sc["solved"], sc["solved"] / n, wilson_interval(sc["solved"], n),
                                       sc["cell_accuracy"], sc["valid"] / n, wilson_interval(sc["valid"], n),
                                       flops / n, steps_run, wall))
                log(f"{order} T={T or 'one cell'} S={S}: boards {sc['solved']}/{n}, cells {sc['cell_accuracy']:.3f}")
    return out
