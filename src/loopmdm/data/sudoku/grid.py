"""9x9 Sudoku grids: strings, the rules, an exact solver and a generator of puzzles with unique solutions.

A grid is a string of 81 characters read row by row: '1'-'9' for digits and '0' (or '.') for a blank cell. A
puzzle and its solution travel together as a ``SudokuPair(puzzle, solution)``. The solver is a depth-first
search over bitmasks that always branches on the blank cell with the fewest candidates; it solves hard
published puzzles in well under a second and checks uniqueness by counting solutions up to 2.
"""

from __future__ import annotations

import random
from typing import NamedTuple, Sequence, Union

from ...errors import ConfigError, DataError
from ...model.fields import check_int, is_int

N_CELLS = 81
MIN_GIVENS = 17  # no 9x9 Sudoku with fewer givens has a unique solution
MAX_GIVENS = 80

Givens = Union[int, Sequence[int]]
RngOrSeed = Union[random.Random, int]

# ---------------------------------------------------------------------------
# Board geometry and bit tables. Digit d (1..9) is stored as the bit 1 << (d-1);
# 0 means blank. A "used" mask per row/column/box holds the digits already placed.
# ---------------------------------------------------------------------------
_FULL = 0x1FF
_ROW = tuple(i // 9 for i in range(N_CELLS))
_COL = tuple(i % 9 for i in range(N_CELLS))
_BOX = tuple((i // 27) * 3 + (i % 9) // 3 for i in range(N_CELLS))
_POPCOUNT = tuple(bin(m).count("1") for m in range(512))
_BITS_OF = tuple(tuple(1 << k for k in range(9) if m >> k & 1) for m in range(512))
_BIT_OF_CHAR = {str(d): 1 << (d - 1) for d in range(1, 10)}
_BIT_OF_CHAR.update({"0": 0, ".": 0})
_CHAR_OF_BIT = {bit: ch for ch, bit in _BIT_OF_CHAR.items() if ch != "."}
_GRID_HINT = "a grid is 81 characters: '1'-'9' for digits, '0' or '.' for blanks"


class SudokuPair(NamedTuple):
    """One puzzle (blanks as '0') and its unique solution, both 81-character strings."""

    puzzle: str
    solution: str

    @property
    def n_givens(self) -> int:
        """How many cells of the puzzle are filled in."""
        return N_CELLS - self.puzzle.count("0")


# ---------------------------------------------------------------------------
# Grid strings
# ---------------------------------------------------------------------------
def normalize_grid(grid: str) -> str:
    """Return the grid with every blank written as '0'; raise DataError if it is malformed."""
    if not isinstance(grid, str):
        raise DataError(f"grid is a {type(grid).__name__}, not a str; {_GRID_HINT}")
    if len(grid) != N_CELLS:
        raise DataError(f"grid has {len(grid)} characters, not 81; {_GRID_HINT}")
    bad = set(grid) - set(_BIT_OF_CHAR)
    if bad:
        raise DataError(f"grid holds invalid characters {sorted(bad)!r}; {_GRID_HINT}")
    return grid.replace(".", "0")


def _to_bits(grid: str) -> list[int]:
    """Grid string -> 81 bit values (0 for blank)."""
    return [_BIT_OF_CHAR[ch] for ch in normalize_grid(grid)]


def _from_bits(cells: Sequence[int]) -> str:
    """81 bit values -> grid string with '0' for blanks."""
    return "".join(_CHAR_OF_BIT[b] for b in cells)


# ---------------------------------------------------------------------------
# Solver
# ---------------------------------------------------------------------------
class _Board:
    """Mutable search state: cell bits, per-unit used-digit masks and the blank cells."""

    __slots__ = ("cells", "rows", "cols", "boxes", "blanks")

    def __init__(self, cells: list[int]):
        self.cells = cells
        self.rows = [0] * 9
        self.cols = [0] * 9
        self.boxes = [0] * 9
        self.blanks: list[int] = []

    @classmethod
    def from_cells(cls, cells: list[int]) -> "_Board | None":
        """Build the board; return None if two givens clash in a row, column or box."""
        board = cls(cells)
        rows, cols, boxes = board.rows, board.cols, board.boxes
        for i, bit in enumerate(cells):
            if not bit:
                board.blanks.append(i)
                continue
            r, c, b = _ROW[i], _COL[i], _BOX[i]
            if (rows[r] | cols[c] | boxes[b]) & bit:
                return None
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
        return board

    def place(self, i: int, bit: int) -> None:
        self.rows[_ROW[i]] |= bit
        self.cols[_COL[i]] |= bit
        self.boxes[_BOX[i]] |= bit
        self.cells[i] = bit

    def unplace(self, i: int, bit: int) -> None:
        self.rows[_ROW[i]] ^= bit
        self.cols[_COL[i]] ^= bit
        self.boxes[_BOX[i]] ^= bit
        self.cells[i] = 0

    def candidates(self, i: int) -> int:
        """Bitmask of digits that fit blank cell i."""
        return _FULL & ~(self.rows[_ROW[i]] | self.cols[_COL[i]] | self.boxes[_BOX[i]])


def _pick_cell(board: _Board) -> tuple[int, int]:
    """Index into board.blanks of the blank with fewest candidates, and its candidate mask."""
    rows, cols, boxes = board.rows, board.cols, board.boxes
    best_k, best_mask, best_n = -1, 0, 10
    for k, i in enumerate(board.blanks):
        mask = _FULL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])
        n = _POPCOUNT[mask]
        if n < best_n:
            best_k, best_mask, best_n = k, mask, n
            if n <= 1:
                break
    return best_k, best_mask


def _take_blank(board: _Board, k: int) -> int:
    """Remove blanks[k] from the blank list (order is not kept) and return the cell."""
    blanks = board.blanks
    i = blanks[k]
    blanks[k] = blanks[-1]
    blanks.pop()
    return i


def _count(board: _Board, limit: int, found: list[list[int]]) -> int:
    """Count solutions of the board up to `limit`; append the first one found to `found`.

    The board is restored to its starting state on return.
    """
    if not board.blanks:
        if not found:
            found.append(board.cells[:])
        return 1
    k, mask = _pick_cell(board)
    if not mask:
        return 0
    i = _take_blank(board, k)
    total = 0
    for bit in _BITS_OF[mask]:
        board.place(i, bit)
        total += _count(board, limit - total, found)
        board.unplace(i, bit)
        if total >= limit:
            break
    board.blanks.append(i)
    return total


def _fill_random(board: _Board, rng: random.Random) -> bool:
    """Fill every blank with a random valid digit by backtracking; True on success.

    On success the board is left filled (not restored).
    """
    if not board.blanks:
        return True
    k, mask = _pick_cell(board)
    if not mask:
        return False
    i = _take_blank(board, k)
    bits = list(_BITS_OF[mask])
    rng.shuffle(bits)
    for bit in bits:
        board.place(i, bit)
        if _fill_random(board, rng):
            return True
        board.unplace(i, bit)
    board.blanks.append(i)
    return False


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of solutions of the puzzle, counting no further than `limit`.

    ``count_solutions(p) == 1`` means the puzzle has exactly one solution.
    A puzzle whose givens already clash has 0 solutions. Raises DataError if
    the string is not a grid.
    """
    if not is_int(limit) or limit < 1:
        raise ConfigError(f"limit={limit!r} is invalid; use an int >= 1")
    board = _Board.from_cells(_to_bits(puzzle))
    if board is None:
        return 0
    return _count(board, int(limit), [])


def solve(puzzle: str) -> str | None:
    """A solution of the puzzle as an 81-digit string, or None if it has none.

    For a puzzle with several solutions this returns one of them; use
    ``count_solutions`` to check uniqueness. Raises DataError if the string
    is not a grid.
    """
    board = _Board.from_cells(_to_bits(puzzle))
    if board is None:
        return None
    found: list[list[int]] = []
    _count(board, 1, found)
    return _from_bits(found[0]) if found else None


def is_valid_solution(grid: str) -> bool:
    """True if the grid is full and every row, column and box holds the digits 1-9 once.

    Blanks or repeated digits give False; a string that is not a grid raises DataError.
    """
    cells = _to_bits(grid)
    if 0 in cells:
        return False
    board = _Board.from_cells(cells)
    return board is not None  # 81 digits with no clash fill every unit exactly


def matches_puzzle(puzzle: str, grid: str) -> bool:
    """True if the grid keeps every given digit of the puzzle."""
    puzzle, grid = normalize_grid(puzzle), normalize_grid(grid)
    return all(p == "0" or p == g for p, g in zip(puzzle, grid))


def check_givens(givens: Givens) -> tuple[int, int]:
    """Validate a difficulty and return it as an inclusive (min, max) range of givens.

    ``givens`` is one int or a (min, max) pair, each within 17..80.
    """
    pair = (givens, givens) if is_int(givens) else givens
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise ConfigError(
            f"givens={givens!r} is invalid; use an int or a (min, max) pair within {MIN_GIVENS}..{MAX_GIVENS}"
        )
    lo, hi = pair
    for value in (lo, hi):
        if not is_int(value) or not MIN_GIVENS <= value <= MAX_GIVENS:
            raise ConfigError(
                f"givens={givens!r} is out of range; "
                f"each number of givens must be an int in {MIN_GIVENS}..{MAX_GIVENS}"
            )
    if lo > hi:
        raise ConfigError(f"givens={givens!r} has min > max; use (min, max) with min <= max")
    return int(lo), int(hi)


# ---------------------------------------------------------------------------
# Generator (it removes cells on the solver's bitboard, hence this module)
# ---------------------------------------------------------------------------
DEFAULT_MAX_TRIES = 500  # attempts per puzzle before giving up (few givens need the most)


def _as_rng(rng: RngOrSeed) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if not is_int(rng):
        raise ConfigError(f"seed={rng!r} is invalid; use an int or a random.Random")
    return random.Random(int(rng))


def random_solution(rng: RngOrSeed) -> str:
    """A random full valid grid, built by randomised backtracking (deterministic per seed)."""
    rng = _as_rng(rng)
    board = _Board([0] * N_CELLS)
    board.blanks = list(range(N_CELLS))
    rng.shuffle(board.blanks)
    if not _fill_random(board, rng):  # an empty board always fills
        raise AssertionError("backtracking failed to fill an empty Sudoku board")
    return _from_bits(board.cells)


def _still_unique_without(board: _Board, i: int, bit: int) -> bool:
    """With cell i just blanked (it held `bit`), is the board's solution still unique?

    The board had one solution before, so it is still unique exactly when no
    solution puts another digit in cell i.
    """
    others = board.candidates(i) & ~bit
    for other in _BITS_OF[others]:
        board.place(i, other)
        found_one = _count(board, 1, [])
        board.unplace(i, other)
        if found_one:
            return False
    return True


def _remove_cells(solution: str, n_givens: int, rng: random.Random) -> str | None:
    """Blank cells of the solution in random order, keeping the solution unique.

    Returns the puzzle once exactly `n_givens` cells remain, or None if this
    removal order gets stuck above that number.
    """
    board = _Board.from_cells(_to_bits(solution))
    order = list(range(N_CELLS))
    rng.shuffle(order)
    givens = N_CELLS
    for left, i in enumerate(order):
        if givens == n_givens or givens - (N_CELLS - left) > n_givens:
            break
        bit = board.cells[i]
        board.unplace(i, bit)
        if _still_unique_without(board, i, bit):
            board.blanks.append(i)
            givens -= 1
        else:
            board.place(i, bit)
    return _from_bits(board.cells) if givens == n_givens else None


def generate_puzzle(
    givens: Givens, rng: RngOrSeed, max_tries: int = DEFAULT_MAX_TRIES
) -> SudokuPair:
    """One puzzle with a unique solution and exactly the requested number of givens.

    ``givens`` is an int or a (min, max) range drawn from uniformly. Each try
    builds a new random grid and removes cells in a new random order; after
    ``max_tries`` failed tries it raises ConfigError. Random removal rarely
    gets below about 22 givens, so fewer givens usually fail.
    """
    lo, hi = check_givens(givens)
    if not is_int(max_tries) or max_tries < 1:
        raise ConfigError(f"max_tries={max_tries!r} is invalid; use an int >= 1")
    rng = _as_rng(rng)
    n_givens = rng.randint(lo, hi)
    for _ in range(max_tries):
        solution = random_solution(rng)
        puzzle = _remove_cells(solution, n_givens, rng)
        if puzzle is not None:
            return SudokuPair(puzzle, solution)
    raise ConfigError(
        f"givens={n_givens} could not be reached with a unique solution in {max_tries} tries; "
        f"use about 22 or more givens (random grids rarely allow fewer)"
    )


def generate_puzzles(n: int, givens: Givens, seed: RngOrSeed) -> list[SudokuPair]:
    """`n` puzzles with unique solutions; the same seed gives the same list."""
    n = check_int(n, "n", 0)
    check_givens(givens)
    rng = _as_rng(seed)
    return [generate_puzzle(givens, rng) for _ in range(n)]
