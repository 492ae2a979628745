"""The Sudoku metric: board accuracy over (T denoising steps) x (S loops) x (unmasking order).

Boards are solved by the library's own ``confidence`` sampler on a canvas whose givens are fixed and whose blanks
are masked: greedy (temperature 0) candidates, the order decides which cells are committed first, and T below
the number of blanks commits several cells per step (T = 0 here means one cell per step); with a ``threshold``
(parallel decoding) every cell whose confidence exceeds it is committed too, so fewer steps run. Per (order, T, S) the
grid reports board accuracy, cell accuracy on the blanks, the share of complete grids that break no rule, 95%
Wilson intervals for the two rates over boards, and the network FLOPs spent per board.

A board counts as solved when it obeys every Sudoku rule and keeps the puzzle's givens, whether or not it equals
the stored solution: puzzle files are not checked for unique solutions, and a puzzle with several solutions is
solved by any of them. Cell accuracy stays against the stored solution (so on such a puzzle a solved board can
have cell accuracy below 1). Each evaluation counts the puzzles with more than one solution once
(``count_solutions(puzzle, limit=2)``, well under a millisecond per puzzle of 30-42 givens) and reports it as
``multi_solution_puzzles``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data import TextTokenizer
from ..data.sudoku import (
    MASK_ID,
    SudokuPair,
    count_solutions,
    decode_grid,
    encode_grids,
    is_sudoku_tokenizer,
    is_valid_solution,
    matches_puzzle,
)
from ..data.sudoku.dataset import TOKENS
from ..diffusion import NoiseSchedule
from ..errors import ConfigError
from ..model.fields import check_int, check_int_list
from ..sampling import ORDERS, BannedTokens, Canvas, build, sample_canvas
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
    the denoising steps the sampler took. ``solved``: boards that obey the rules and keep the givens;
    ``cell_accuracy``: blanks equal to the stored solution; ``multi_solution_puzzles``: puzzles of the evaluation
    with more than one solution (the same in every cell of the grid)."""

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
    multi_solution_puzzles: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def score_grids(predicted: Sequence[str], pairs: Sequence[SudokuPair]) -> dict:
    """Boards solved (every row, column and box holds 1-9 once and the puzzle's givens are kept: any solution of
    the puzzle counts, not only the stored one), cell accuracy over the puzzles' blanks (against the stored
    solution), and grids that break no rule (givens kept or not)."""
    if len(predicted) != len(pairs) or not pairs:
        raise ConfigError(
            f"{len(predicted)} predicted grids for {len(pairs)} puzzles; pass one per puzzle"
        )
    pred = encode_grids(predicted)  # [N, 81] (blanks -> mask id)
    sol = encode_grids([p.solution for p in pairs])
    blank = encode_grids([p.puzzle for p in pairs]) != sol
    right = pred == sol
    valid = [is_valid_solution(g) for g in predicted]
    solved = sum(ok and matches_puzzle(p.puzzle, g) for ok, g, p in zip(valid, predicted, pairs))
    return {
        "solved": int(solved),
        "cell_accuracy": float(right[blank].mean()) if blank.any() else 1.0,
        "valid": int(sum(valid)),
    }


def multi_solution_puzzles(pairs: Sequence[SudokuPair]) -> int:
    """How many puzzles have more than one solution (their solved boards need not equal the stored solution)."""
    return sum(count_solutions(p.puzzle, limit=2) > 1 for p in pairs)


def digit_filter() -> BannedTokens:
    """The token filter of the solver: greedy candidates among the digits 1-9 only (the Sudoku vocabulary is
    ``<pad>``, the digits at ids 1-9 and the mask, which SUBS already rules out), so a blank never gets ``<pad>``."""
    return BannedTokens(temperature=0.0, banned=(TOKENS.index("<pad>"),))


def puzzle_canvas(pairs: Sequence[SudokuPair], device: torch.device | str = "cpu") -> Canvas:
    """Givens fixed, blanks masked and free: x [N, 81], free [N, 81]."""
    x = torch.from_numpy(encode_grids([p.puzzle for p in pairs]).astype(np.int64)).to(device)
    return Canvas(x=x, free=x == MASK_ID)


@torch.no_grad()
def solve_boards(
    model,
    pairs: Sequence[SudokuPair],
    *,
    mask_id: int,
    loops: int,
    steps: int,
    order: str,
    schedule: NoiseSchedule,
    policy: str = "fixed",
    policy_options: Optional[dict] = None,
    seed: int = 0,
    batch_size: int = 256,
    threshold: Optional[float] = None,
    sampler_options: Optional[dict] = None,
):
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
        chunk = pairs[start : start + batch_size]
        canvas = puzzle_canvas(chunk, device)
        T = int(canvas.free.sum(1).max()) if steps == 0 else steps
        x, _, report, _ = sample_canvas(
            model,
            canvas,
            mask_id,
            steps=max(T, 1),
            sampler=sampler,
            policy=build(LOOP_POLICIES, policy, opts),
            token_filter=digit_filter(),
            schedule=schedule,
            gen=gen,
        )
        grids += [decode_grid(row) for row in x.tolist()]
        flops, wall, steps_run = (
            flops + report.flops,
            wall + report.wall_time_s,
            max(steps_run, report.steps_run),
        )
    return grids, flops, wall, steps_run


def check_sudoku_model(tokenizer: TextTokenizer) -> None:
    """A one-line error when a checkpoint's vocabulary is not the Sudoku one."""
    if not is_sudoku_tokenizer(tokenizer):
        raise ConfigError(
            f"--metric sudoku needs a Sudoku model (vocabulary <pad>, 1-9, <mask>), but this "
            f"checkpoint has a {tokenizer.vocab_size}-token vocabulary (a text model?); train one "
            "with `loopmdm train --preset sudoku`"
        )


def sudoku_grid(
    model,
    tokenizer: TextTokenizer,
    pairs: Sequence[SudokuPair],
    *,
    orders: Sequence[str],
    steps: Sequence[int],
    loops: Sequence[int],
    schedule: NoiseSchedule,
    seed: int = 0,
    batch_size: int = 256,
    log: Callable[[str], None] = lambda s: None,
    threshold: Optional[float] = None,
    sampler_options: Optional[dict] = None,
) -> list[SudokuScore]:
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
    # once per evaluation: well under a millisecond per puzzle
    multi = multi_solution_puzzles(pairs)
    if multi:
        log(
            f"{multi} of {n} puzzles have more than one solution; a board counts as solved when it obeys the rules "
            "and keeps the givens"
        )
    for order in orders:
        for T in steps:
            for S in loops:
                grids, flops, wall, steps_run = solve_boards(
                    model,
                    pairs,
                    mask_id=tokenizer.mask_id,
                    loops=S,
                    steps=T,
                    order=order,
                    schedule=schedule,
                    seed=seed,
                    batch_size=batch_size,
                    threshold=threshold,
                    sampler_options=sampler_options,
                )
                sc = score_grids(grids, pairs)
                out.append(
                    SudokuScore(
                        order,
                        T,
                        S,
                        n,
                        sc["solved"],
                        sc["solved"] / n,
                        wilson_interval(sc["solved"], n),
                        sc["cell_accuracy"],
                        sc["valid"] / n,
                        wilson_interval(sc["valid"], n),
                        flops / n,
                        steps_run,
                        wall,
                        multi_solution_puzzles=multi,
                    )
                )
                log(
                    f"{order} T={T or 'one cell'} S={S}: boards {sc['solved']}/{n}, cells {sc['cell_accuracy']:.3f}"
                )
    return out
