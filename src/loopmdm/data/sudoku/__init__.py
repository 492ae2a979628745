"""Sudoku as data: grids, the solver and generator (``grid``), puzzle files in the field's formats (``files``),
built-in splits (``splits``), symmetries (``augment``) and the ``sudoku`` data format (``dataset``)."""

from .augment import augment_boards
from .dataset import (
    GENERATE,
    MASK_ID,
    decode_grid,
    encode_grids,
    generated_splits,
    is_sudoku_tokenizer,
    pairs_to_arrays,
    prepare_sudoku,
    sudoku_tokenizer,
)
from .files import PuzzleReport, read_puzzles, write_jsonl
from .grid import (
    MAX_GIVENS,
    MIN_GIVENS,
    N_CELLS,
    SudokuPair,
    check_givens,
    count_solutions,
    generate_puzzle,
    generate_puzzles,
    is_valid_solution,
    matches_puzzle,
    normalize_grid,
    random_solution,
    solve,
)
from .splits import Splits, load_or_generate, make_splits

__all__ = [
    "SudokuPair",
    "N_CELLS",
    "MIN_GIVENS",
    "MAX_GIVENS",
    "normalize_grid",
    "count_solutions",
    "solve",
    "is_valid_solution",
    "matches_puzzle",
    "check_givens",
    "random_solution",
    "generate_puzzle",
    "generate_puzzles",
    "make_splits",
    "load_or_generate",
    "Splits",
    "read_puzzles",
    "write_jsonl",
    "PuzzleReport",
    "augment_boards",
    "sudoku_tokenizer",
    "is_sudoku_tokenizer",
    "encode_grids",
    "decode_grid",
    "pairs_to_arrays",
    "prepare_sudoku",
    "generated_splits",
    "GENERATE",
    "MASK_ID",
]
