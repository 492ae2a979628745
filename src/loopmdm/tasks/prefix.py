"""``prefix``: a positional easy-to-hard task, prefix sums mod 10 (kind ``sum``) or prefix XOR over bits (kind
``parity``), as infill rows.

Output ``i`` is the sum of digits ``0..i`` mod 10 (``parity``: bits, mod 2). Two layouts:

- ``infill`` (default): ``text = digits + "=" + outputs``, one target span: ``3141`` -> ``3141=3489``.
- ``interleaved``: every output right after its input digit, one target per output: ``3141`` -> ``33144819``.
  Output ``i`` sits next to input ``i`` (as in the easy-to-hard literature, where output ``i`` is read at input
  ``i``'s position), so one step of the recurrence is a fixed offset away whatever the size.

A level is the size ``n`` (the number of input digits), inputs uniform over all ``base**n`` strings (leading
zeros included), distinct within and across splits. No padding: fitting the model window is the data
loader's job.

Trivial heuristic: copy the input digits as the outputs (exact match only when every prefix sum equals its
input digit, i.e. all inputs but the last are 0).
"""

from __future__ import annotations

import random
from typing import Iterable, Optional, Sequence

from ..errors import ConfigError, DataError
from .base import TASKS, TaskFamily, check_count, check_levels, draw_distinct

BASES = {"sum": 10, "parity": 2}
LAYOUTS = ("infill", "interleaved")
DEFAULTS = {"kind": "sum", "layout": "infill"}
MAX_SIZE = 4096
# Levels with at most this many possible inputs are drawn without replacement (exact, even near exhaustion).
SMALL_SPACE = 2_000_000


def prefix_outputs(digits: str, base: int) -> str:
    """The running sums of ``digits`` mod ``base``, as a digit string."""
    total, out = 0, []
    for ch in digits:
        total = (total + int(ch)) % base
        out.append(str(total))
    return "".join(out)


def make_row(digits: str, base: int, task: str, layout: str = "infill") -> dict:
    """The row of one input in ``layout``."""
    n, outputs = len(digits), prefix_outputs(digits, base)
    if layout == "interleaved":
        text = "".join(x + y for x, y in zip(digits, outputs))
        return {
            "text": text,
            "targets": [[2 * i + 1, 2 * i + 2] for i in range(n)],
            "task": task,
            "size": n,
        }
    return {"text": f"{digits}={outputs}", "targets": [[n + 1, 2 * n + 1]], "task": task, "size": n}


def split_row(text: str) -> tuple[str, str]:
    """``(digits, outputs)`` of a row's text in either layout (no ``=``: interleaved)."""
    if "=" in text:
        digits, _, outputs = text.partition("=")
        return digits, outputs
    return text[0::2], text[1::2]


def as_digits(x: int, size: int, base: int) -> str:
    """``x`` written in ``base`` with ``size`` digits (leading zeros kept)."""
    return format(x, f"0{size}b") if base == 2 else str(x).zfill(size)


def draw_small(
    rng: random.Random,
    n: int,
    size: int,
    base: int,
    task: str,
    seen: set[str],
    layout: str = "infill",
) -> list[dict]:
    """``n`` distinct rows of a small input space, sampled without replacement; ConfigError if too few are
    left."""
    space = base**size
    taken = sum(1 for k in seen if len(split_row(k)[0]) == size)
    rows = []
    for x in rng.sample(range(space), min(space, n + taken)):
        row = make_row(as_digits(x, size, base), base, task, layout)
        if row["text"] not in seen:
            rows.append(row)
            if len(rows) == n:
                break
    if len(rows) < n:
        raise ConfigError(
            f"size {size} has only {space} distinct inputs ({taken} already used), too few for "
            f"{n} more rows; ask for fewer rows per level (--train / --val / --test) or drop "
            f"size {size}"
        )
    seen.update(r["text"] for r in rows)
    return rows


class PrefixTask(TaskFamily):
    """The ``prefix`` family (see the module docstring)."""

    name = "prefix"
    level_field = "size"
    heuristic_name = "copy the input digits as the outputs"

    def resolve(self, levels: Sequence[int], params: dict) -> dict:
        unknown = sorted(set(params) - set(DEFAULTS))
        if unknown:
            raise ConfigError(
                f"unknown prefix option {unknown[0]!r}; valid options: {', '.join(DEFAULTS)} "
                f"(--statements, --literals and --mode are for vars)"
            )
        kind = params.get("kind", DEFAULTS["kind"])
        if kind not in BASES:
            raise ConfigError(
                f"--kind {kind!r} is not a prefix kind; choose one of: {', '.join(BASES)}"
            )
        layout = params.get("layout", DEFAULTS["layout"])
        if layout not in LAYOUTS:
            raise ConfigError(
                f"--layout {layout!r} is not a prefix layout; choose one of: {', '.join(LAYOUTS)}"
            )
        check_levels(levels, "--train-levels / --test-levels (sizes)", 1, MAX_SIZE)
        return {"kind": kind, "layout": layout}

    def default_levels(self, params: dict) -> tuple[list[int], list[int]]:
        # 2**n inputs: sizes with room for the default row counts
        if params.get("kind", "sum") == "parity":
            return list(range(12, 21)), list(range(12, 33))
        return list(range(4, 13)), list(range(4, 25))

    def row_format(self, params: dict) -> str:
        return "infill"

    def generate(
        self,
        n_per_level: int,
        levels: Sequence[int],
        seed: int,
        *,
        exclude: Optional[Iterable[str]] = None,
        **params,
    ) -> list[dict]:
        resolved = self.resolve(levels, params)
        kind, layout = resolved["kind"], resolved["layout"]
        n_per_level = check_count(n_per_level, "n_per_level")
        base, task = BASES[kind], f"prefix-{kind}"
        rng = random.Random(seed)
        seen = set(exclude or ())
        symbols = "0123456789"[:base]
        rows: list[dict] = []
        for size in levels:
            if base**size <= SMALL_SPACE:
                rows += draw_small(rng, n_per_level, size, base, task, seen, layout)
                continue

            def draw(r: random.Random, size=size) -> dict:
                return make_row("".join(r.choices(symbols, k=size)), base, task, layout)

            rows += draw_distinct(rng, n_per_level, draw, seen, f"size {size}")
        rng.shuffle(rows)
        return rows

    def check(self, row: dict) -> str:
        text = row["text"]
        digits, outputs = split_row(text)
        base = BASES.get(row.get("task", "prefix-sum").removeprefix("prefix-"))
        if (
            base is None
            or not digits
            or len(digits) != len(outputs)
            or text.count("=") > 1
            or any(c not in "0123456789"[:base] for c in digits)
        ):
            raise DataError(
                f"malformed prefix row {text!r}; expected DIGITS=OUTPUTS or digit / output pairs"
            )
        sums, total = [], 0
        for c in digits:
            total += int(c)
            sums.append(total % base)
        return "".join(map(str, sums))

    def heuristic_accuracy(self, row: dict) -> float:
        digits, outputs = split_row(row["text"])
        return 1.0 if outputs == digits else 0.0


PREFIX = TASKS.register("prefix")(PrefixTask())
