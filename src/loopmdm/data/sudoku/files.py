"""Puzzle files in the field's formats, read into ``SudokuPair``s with bad rows counted, skipped and summarised:

* CSV with a header, Kaggle style (``quizzes,solutions`` or ``puzzle,solution``), 81-character strings with
  ``0`` or ``.`` for a blank;
* Sudoku-Extreme's CSV (``source,question,answer,rating``);
* JSONL, one ``{"puzzle": ..., "solution": ...}`` per line;
* ``hf:OWNER/NAME`` (e.g. ``hf:sapientinc/sudoku-extreme``) through ``datasets`` when the network allows.

A row is bad when a grid has the wrong length or characters other than digits and blanks, when the solution
has blanks or breaks a rule, or when it contradicts a given. A source with no valid row stops with a one-line
``DataError``.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ...errors import DataError, install_hint
from ...fileio import atomic_write_text, path_kind
from ..hub import hub_offline, require_hub
from .grid import N_CELLS, SudokuPair, is_valid_solution, matches_puzzle

#: (puzzle column, solution column) pairs recognised in a CSV header, in order of preference
CSV_COLUMNS = (
    ("quizzes", "solutions"),
    ("puzzle", "solution"),
    ("question", "answer"),
    ("puzzles", "solutions"),
    ("quiz", "solution"),
)
GRID_CHARS = frozenset("0123456789.")


@dataclass
class PuzzleReport:
    """The valid pairs of a source and the bad rows skipped, counted by reason."""

    source: str
    pairs: list[SudokuPair] = field(default_factory=list)
    bad: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        """``"3 bad rows skipped (2 wrong length, 1 breaks a rule)"``, or ``""`` when none were."""
        n = sum(self.bad.values())
        if not n:
            return ""
        parts = ", ".join(f"{k} {r}" for r, k in sorted(self.bad.items(), key=lambda kv: -kv[1]))
        return f"{n} bad row{'s' if n != 1 else ''} skipped ({parts})"


def row_problem(puzzle, solution) -> Optional[str]:
    """Why (puzzle, solution) is not a usable row, or None when it is."""
    for grid in (puzzle, solution):
        if not isinstance(grid, str) or len(grid) != N_CELLS:
            return "wrong length"
        if set(grid) - GRID_CHARS:
            return "characters other than digits and blanks"
    if "0" in solution or "." in solution or not is_valid_solution(solution):
        return "solution breaks a rule"
    if not matches_puzzle(puzzle, solution):
        return "solution contradicts a given"
    return None


def collect(
    rows: Iterable[tuple[object, object]], source: str, max_rows: Optional[int] = None
) -> PuzzleReport:
    """Valid pairs from (puzzle, solution) rows, stopping after ``max_rows`` valid ones."""
    report = PuzzleReport(source)
    for puzzle, solution in rows:
        puzzle = puzzle.strip() if isinstance(puzzle, str) else puzzle
        solution = solution.strip() if isinstance(solution, str) else solution
        problem = row_problem(puzzle, solution)
        if problem:
            report.bad[problem] += 1
            continue
        report.pairs.append(SudokuPair(puzzle.replace(".", "0"), solution))
        if max_rows is not None and len(report.pairs) >= max_rows:
            break
    return report


def _csv_rows(path: Path) -> Iterator[tuple[object, object]]:
    # utf-8-sig: a byte-order mark at the start (Excel's "CSV UTF-8") is not part of the first column's name
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader, [])]
            for p_col, s_col in CSV_COLUMNS:
                if p_col in header and s_col in header:
                    ip, js = header.index(p_col), header.index(s_col)
                    break
            else:
                raise DataError(
                    f"puzzle file {str(path)!r} has header {[h[:40] for h in header[:6]]} without a known "
                    f"pair of columns; use one of {', '.join(a + ',' + b for a, b in CSV_COLUMNS[:3])}"
                )
            for row in reader:
                if not row or not any(c.strip() for c in row):
                    continue
                yield (row[ip] if ip < len(row) else None, row[js] if js < len(row) else None)
        except csv.Error as e:
            raise DataError(_csv_problem(path, reader.line_num, e)) from None


def _csv_problem(path: Path, line: int, e: csv.Error) -> str:
    """One line for a row Python's csv module cannot split (a field over its size limit, a NUL byte)."""
    text = str(e)
    if "field larger than field limit" in text:
        return (
            f"puzzle file {str(path)!r} line {line} has a field longer than {csv.field_size_limit():,} "
            "characters (an unclosed quote, or not a puzzle CSV); a row holds 81-character grids: fix that "
            "line or pass the right file"
        )
    return f"puzzle file {str(path)!r} line {line} is not valid CSV ({text}); fix that line or pass the right file"


def _jsonl_rows(path: Path) -> Iterator[tuple[object, object]]:
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            # RecursionError: a line nested too deeply; ValueError: a number past int's 4300-digit limit
            except (ValueError, RecursionError):
                yield (None, None)  # counted as a bad row ("wrong length")
                continue
            yield (
                (rec.get("puzzle"), rec.get("solution")) if isinstance(rec, dict) else (None, None)
            )


def _hf_rows(name: str) -> Iterator[tuple[object, object]]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"hf:{name} needs the `datasets` package: " + install_hint("hf")) from None
    offline = hub_offline()
    if not offline:
        require_hub(f"puzzle dataset hf:{name}")
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # ConnectionError, FileNotFoundError, DatasetNotFoundError, ...
        first = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        how = (
            "HF_HUB_OFFLINE=1 forbids downloading it and it is not in the local datasets cache"
            if offline
            else "it could not be loaded"
        )
        raise DataError(
            f"puzzle dataset hf:{name}: {how} ({first}); use a local CSV / JSONL file"
        ) from None
    cols = set(ds.column_names or [])
    pair = next(((p, s) for p, s in CSV_COLUMNS if p in cols and s in cols), None)
    if pair is None:
        raise DataError(
            f"puzzle dataset hf:{name} has columns {sorted(cols)} without a known puzzle / solution pair"
        )
    for row in ds:
        yield row[pair[0]], row[pair[1]]


def read_puzzles(source: str, max_rows: Optional[int] = None) -> PuzzleReport:
    """Valid (puzzle, solution) pairs of a CSV / JSONL file or ``hf:NAME``; a source without one is a DataError."""
    if source.startswith("hf:"):
        rows = _hf_rows(source[3:])
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            kind = path_kind(path)
            raise DataError(
                f"puzzle file {source!r} "
                + ("does not exist" if kind is None else f"is {kind}, not a file")
                + "; pass a CSV (quizzes,solutions or "
                'source,question,answer,rating) or JSONL ({"puzzle", "solution"}) file, or hf:NAME'
            )
        rows = _jsonl_rows(path) if path.suffix == ".jsonl" else _csv_rows(path)
    try:
        report = collect(rows, source, max_rows)
    except UnicodeDecodeError:
        raise DataError(
            f"puzzle file {source!r} is not UTF-8 text; pass a CSV or JSONL file"
        ) from None
    if not report.pairs:
        raise DataError(
            f"no valid Sudoku row in {source!r} ({report.summary() or 'the file is empty'}); rows "
            "need an 81-character puzzle ('0' or '.' for blanks) and its solved grid"
        )
    return report


def write_jsonl(pairs: Iterable[SudokuPair], path: str | os.PathLike) -> None:
    """One ``{"puzzle": ..., "solution": ...}`` object per line, written atomically."""
    atomic_write_text(
        path,
        "".join(json.dumps({"puzzle": p.puzzle, "solution": p.solution}) + "\n" for p in pairs),
    )
