"""``vars``: variable-resolution programs whose difficulty is a dependency depth.

A program is statements ``NAME=EXPR`` joined by ``;`` (no spaces). NAME is one lowercase letter assigned once;
EXPR is a digit (a literal), a NAME (a copy) or, for kind ``arith`` only, ``NAME+NAME`` / ``NAME-NAME`` over
two different names; values are mod 10 (``3-7`` is 6). A literal has depth 0, any other statement 1 + the
largest depth of the names it reads.

Construction of one program with ``n`` statements, ``L`` literals and maximum depth ``D`` (``n >= L + D``):

1. ``n`` distinct letters at random; the first ``L`` are the literals, with ``L`` distinct random digits.
2. Depths of the other ``n - L`` names: ``1, 2, ..., D`` once each (the chain that reaches ``D``), the rest
   uniform in ``1..D``. So every depth ``0..D`` is present.
3. A name at depth ``k`` reads one random name at depth ``k - 1`` (this sets its depth to exactly ``k``); kind
   ``hops`` copies it, kind ``arith`` picks uniformly among copy, ``+`` and ``-``, the second operand being a
   random different name of depth ``<= k - 1`` (operand order random; with a single literal and ``k = 1``, a
   copy).

The statement count ``n`` is uniform in ``statements`` (default 8..26, raised to ``L + D`` where deeper levels
need it) and every program has exactly ``L`` literals with distinct digits, whatever its depth: neither tells
the depth.

Modes:

* ``query`` (prompt / answer): statements in random order (a name may be read before the statement assigning
  it), then ``?NAME``: ``k=3;b=k+q;q=7?b`` -> ``"0"``. A level is the depth of the queried name; every
  program is built with the same ``D`` (``program_depth``: the largest level of all splits), whatever level
  is queried, so programs of every level come from one distribution and only the query differs. The name is
  uniform among the names at the level's depth.
* ``trace`` (infill): every statement then ``:`` and its value, in a random topological order (every name
  assigned before it is read; uniform choice among the ready statements at each step):
  ``k=3:3;q=7:7;b=k+q:0``; the targets are the value digits. A level is the program's maximum depth ``D``
  (>= 1).

Trivial heuristics (``heuristic_accuracy``): query - guess uniformly among the program's literal digits
(``1/L`` if the answer is one of them, else 0); trace - copy each literal's digit, guess every other value
uniformly among the literal digits (the product over non-literal statements of ``1/L`` or 0).
"""

from __future__ import annotations

import random
import re
from typing import Iterable, Optional, Sequence

from ..errors import ConfigError, DataError
from .base import TASKS, TaskFamily, check_count, check_levels, draw_distinct

LETTERS = "abcdefghijklmnopqrstuvwxyz"
MAX_STATEMENTS = len(LETTERS)
KINDS = ("hops", "arith")
MODES = ("query", "trace")
DEFAULT_STATEMENTS = (8, MAX_STATEMENTS)
DEFAULTS = {
    "mode": "query",
    "kind": "arith",
    "literals": 6,
    "statements": None,
    "program_depth": None,
}
STATEMENT_RE = re.compile(r"([a-z])=(\d|[a-z]|[a-z][+-][a-z])")


# --------------------------------------------------------------------------- generation


class Program:
    """One generated program: names in assignment order (literals first), expressions, operands, values,
    depths."""

    __slots__ = ("names", "exprs", "reads", "values", "depths", "by_depth")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.exprs: dict[str, str] = {}
        self.reads: dict[str, tuple[str, ...]] = {}
        self.values: dict[str, int] = {}
        self.depths: dict[str, int] = {}
        self.by_depth: list[list[str]] = []


def node_depths(rng: random.Random, n: int, literals: int, max_depth: int) -> list[int]:
    """Depths of ``n`` names: ``literals`` zeros, the chain ``1..max_depth``, the rest uniform in
    1..max_depth; sorted, so that names are built after everything they may read."""
    rest = [rng.randint(1, max_depth) for _ in range(n - literals - max_depth)]
    return [0] * literals + sorted(list(range(1, max_depth + 1)) + rest)


def expression(
    rng: random.Random, kind: str, first: str, pool: list[str]
) -> tuple[str, tuple[str, ...]]:
    """The expression of a name reading ``first`` (one level below) and, for a binary op, a different name of
    ``pool`` (every name at most one level below): (text, operands)."""
    op = "=" if kind == "hops" or len(pool) < 2 else rng.choice("=+-")
    if op == "=":
        return first, (first,)
    second = first
    while second == first:
        second = rng.choice(pool)
    a, b = (first, second) if rng.random() < 0.5 else (second, first)
    return f"{a}{op}{b}", (a, b)


def value_of(prog: Program, expr: str, reads: tuple[str, ...]) -> int:
    """The value of ``expr`` given its operands' values (mod 10)."""
    if len(reads) == 1:
        return prog.values[reads[0]]
    a, b = (prog.values[r] for r in reads)
    return (a + b) % 10 if expr[1] == "+" else (a - b) % 10


def build_program(rng: random.Random, n: int, literals: int, max_depth: int, kind: str) -> Program:
    """A random program of ``n`` statements, ``literals`` literals (distinct digits) and maximum depth
    ``max_depth`` (see the module docstring)."""
    prog = Program()
    prog.names = rng.sample(LETTERS, n)
    prog.by_depth = [[] for _ in range(max_depth + 1)]
    below: list[str] = []  # names of depth < current depth
    digits = rng.sample(range(10), literals)
    for i, (name, d) in enumerate(zip(prog.names, node_depths(rng, n, literals, max_depth))):
        if d == 0:
            prog.exprs[name], prog.reads[name], prog.values[name] = str(digits[i]), (), digits[i]
        else:
            if not prog.by_depth[d]:  # first name at this depth: everything shallower is complete
                below = [m for level in prog.by_depth[:d] for m in level]
            expr, reads = expression(rng, kind, rng.choice(prog.by_depth[d - 1]), below)
            prog.exprs[name], prog.reads[name] = expr, reads
            prog.values[name] = value_of(prog, expr, reads)
        prog.depths[name] = d
        prog.by_depth[d].append(name)
    return prog


def topological_order(rng: random.Random, prog: Program) -> list[str]:
    """A random order in which every name comes after the names it reads (a uniform pick among the ready
    statements at each step)."""
    waiting = {name: len(reads) for name, reads in prog.reads.items()}
    readers: dict[str, list[str]] = {name: [] for name in prog.names}
    for name, reads in prog.reads.items():
        for r in reads:
            readers[r].append(name)
    ready = [name for name, k in waiting.items() if k == 0]
    order = []
    while ready:
        i = rng.randrange(len(ready))
        ready[i], ready[-1] = ready[-1], ready[i]
        name = ready.pop()
        order.append(name)
        for reader in readers[name]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    return order


def query_row(rng: random.Random, prog: Program, depth: int, task: str, literals: int) -> dict:
    """The prompt / answer row asking for a random name at ``depth`` (statements shuffled)."""
    order = list(prog.names)
    rng.shuffle(order)
    name = rng.choice(prog.by_depth[depth])
    prompt = ";".join(f"{m}={prog.exprs[m]}" for m in order) + "?" + name
    return {
        "prompt": prompt,
        "answer": str(prog.values[name]),
        "task": task,
        "depth": depth,
        "statements": len(order),
        "literals": literals,
        "max_depth": len(prog.by_depth) - 1,
    }


def trace_row(rng: random.Random, prog: Program, task: str, literals: int) -> dict:
    """The infill row: every statement with ``:value`` in a random topological order; targets = the values."""
    parts, targets, pos = [], [], 0
    for m in topological_order(rng, prog):
        part = f"{m}={prog.exprs[m]}:{prog.values[m]}"
        parts.append(part)
        pos += len(part)
        targets.append([pos - 1, pos])
        pos += 1  # the ';'
    return {
        "text": ";".join(parts),
        "targets": targets,
        "task": task,
        "depth": len(prog.by_depth) - 1,
        "statements": len(parts),
        "literals": literals,
    }


# --------------------------------------------------------------------------- independent evaluator


def parse_program(text: str) -> list[tuple[str, str]]:
    """``"a=3;b=a+c;..."`` -> [(name, expr), ...]; DataError on a malformed statement or a name assigned
    twice."""
    out, names = [], set()
    for stmt in text.split(";"):
        m = STATEMENT_RE.fullmatch(stmt)
        if m is None:
            raise DataError(
                f"malformed vars statement {stmt!r}; expected NAME=digit, NAME=NAME or "
                f"NAME=NAME+NAME"
            )
        if m.group(1) in names:
            raise DataError(f"vars program assigns {m.group(1)!r} twice")
        names.add(m.group(1))
        out.append((m.group(1), m.group(2)))
    return out


def evaluate(statements: list[tuple[str, str]]) -> dict[str, int]:
    """Every name's value (mod 10), by recursive evaluation in any statement order; DataError on a cycle, a
    name never assigned, or a binary operation reading one name twice."""
    exprs = dict(statements)
    values: dict[str, int] = {}
    active: set[str] = set()

    def get(name: str) -> int:
        if name in values:
            return values[name]
        if name not in exprs:
            raise DataError(f"vars program reads {name!r}, which it never assigns")
        if name in active:
            raise DataError(f"vars program has a cycle through {name!r}")
        active.add(name)
        e = exprs[name]
        if e.isdigit():
            v = int(e)
        elif len(e) == 1:
            v = get(e)
        elif e[0] == e[2]:
            raise DataError(f"vars statement {name}={e} reads one name twice")
        else:
            v = (get(e[0]) + get(e[2])) % 10 if e[1] == "+" else (get(e[0]) - get(e[2])) % 10
        active.discard(name)
        values[name] = v
        return v

    for name, _ in statements:
        get(name)
    return values


def parse_trace(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """A trace text -> (statements, the written values)."""
    statements, written = [], []
    for part in text.split(";"):
        stmt, sep, value = part.rpartition(":")
        if not sep:
            raise DataError(f"vars trace statement {part!r} has no ':value'")
        statements.append(stmt)
        written.append(value)
    return parse_program(";".join(statements)), written


def literal_digits(statements: list[tuple[str, str]]) -> list[str]:
    """The digits of the literal statements, in order."""
    return [e for _, e in statements if e.isdigit()]


# --------------------------------------------------------------------------- the family


def resolve_statements(statements, literals: int, need: int) -> list[int]:
    """The statement-count range [lo, hi], validated for programs of depth ``need`` with ``literals``."""
    least = literals + need
    if statements is None:
        return [max(DEFAULT_STATEMENTS[0], least), DEFAULT_STATEMENTS[1]]
    if isinstance(statements, int) and not isinstance(statements, bool):
        statements = (statements, statements)
    if (
        not isinstance(statements, (tuple, list))
        or len(statements) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in statements)
    ):
        raise ConfigError(
            f"--statements {statements!r} is not a range; pass e.g. --statements 8:26"
        )
    lo, hi = statements
    if not 1 <= lo <= hi <= MAX_STATEMENTS:
        raise ConfigError(
            f"--statements {lo}:{hi} is out of range (one letter per name: 1 <= lo <= hi <= "
            f"{MAX_STATEMENTS}); pass e.g. --statements {max(least, 8)}:{MAX_STATEMENTS}"
        )
    if lo < least:
        raise ConfigError(
            f"--statements {lo}:{hi} is too few for depth {need} with {literals} literals (a "
            f"depth-{need} chain needs {literals}+{need}={least} statements); pass "
            f"--statements {least}:{max(hi, least)}, fewer --literals or shallower levels"
        )
    return [lo, hi]


class VarsTask(TaskFamily):
    """The ``vars`` family (see the module docstring)."""

    name = "vars"
    level_field = "depth"
    heuristic_name = (
        "uniform guess among the program's literal digits (trace: literal statements copied, "
        "every other value guessed uniformly among the literal digits)"
    )

    def resolve(self, levels: Sequence[int], params: dict) -> dict:
        unknown = sorted(set(params) - set(DEFAULTS))
        if unknown:
            raise ConfigError(
                f"unknown vars option {unknown[0]!r}; valid options: {', '.join(DEFAULTS)}"
            )
        p = {**DEFAULTS, **params}
        if p["mode"] not in MODES:
            raise ConfigError(
                f"--mode {p['mode']!r} is not a vars mode; choose one of: {', '.join(MODES)}"
            )
        if p["kind"] not in KINDS:
            raise ConfigError(
                f"--kind {p['kind']!r} is not a vars kind; choose one of: {', '.join(KINDS)}"
            )
        lits = p["literals"]
        if isinstance(lits, bool) or not isinstance(lits, int) or not 1 <= lits <= 10:
            raise ConfigError(
                f"--literals {lits!r} is out of range (literals have distinct digits); "
                f"pass an integer from 1 to 10"
            )
        query = p["mode"] == "query"
        why = (
            f"depths of queried names; at most 26 - {lits} literals"
            if query
            else f"a trace's level is its program's depth, >= 1 as programs have more statements than "
            f"literals, at most 26 - {lits} literals"
        )
        levels = check_levels(
            levels, "--train-levels / --test-levels", 0 if query else 1, MAX_STATEMENTS - lits, why
        )
        out = {"mode": p["mode"], "kind": p["kind"], "literals": lits}
        need = max(levels)
        if query:
            need = self._program_depth(p["program_depth"], max(max(levels), 1), lits)
            out["program_depth"] = need
        elif p["program_depth"] is not None:
            raise ConfigError(
                "program_depth is for query mode only (a trace's level is its program depth); "
                "drop it or pass --mode query"
            )
        out["statements"] = resolve_statements(p["statements"], lits, need)
        return out

    @staticmethod
    def _program_depth(value, least: int, literals: int) -> int:
        if value is None:
            return least
        top = MAX_STATEMENTS - literals
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= top:
            raise ConfigError(
                f"program_depth {value!r} must be an integer from {least} (the deepest level) "
                f"to {top}; pass e.g. program_depth={least}"
            )
        return value

    def default_levels(self, params: dict) -> tuple[list[int], list[int]]:
        low = 0 if params.get("mode", "query") == "query" else 1
        return list(range(low, 5)), list(range(low, 9))

    def row_format(self, params: dict) -> str:
        return "prompt-answer" if params.get("mode", "query") == "query" else "infill"

    def generate(
        self,
        n_per_level: int,
        levels: Sequence[int],
        seed: int,
        *,
        exclude: Optional[Iterable[str]] = None,
        **params,
    ) -> list[dict]:
        p = self.resolve(levels, params)
        n_per_level = check_count(n_per_level, "n_per_level")
        rng = random.Random(seed)
        seen = set(exclude or ())
        lo, hi = p["statements"]
        lits, kind = p["literals"], p["kind"]
        rows: list[dict] = []
        for level in levels:
            if p["mode"] == "query":
                task = f"vars-{kind}"

                def draw(r: random.Random, level=level, task=task) -> dict:
                    prog = build_program(r, r.randint(lo, hi), lits, p["program_depth"], kind)
                    return query_row(r, prog, level, task, lits)
            else:
                task = f"vars-{kind}-trace"

                def draw(r: random.Random, level=level, task=task) -> dict:
                    return trace_row(
                        r, build_program(r, r.randint(lo, hi), lits, level, kind), task, lits
                    )

            rows += draw_distinct(rng, n_per_level, draw, seen, f"depth {level}")
        rng.shuffle(rows)
        return rows

    def check(self, row: dict) -> str:
        if "prompt" in row:
            program, sep, name = row["prompt"].rpartition("?")
            if not sep:
                raise DataError("vars prompt has no '?NAME' query")
            values = evaluate(parse_program(program))
            if name not in values:
                raise DataError(f"vars prompt queries {name!r}, which the program never assigns")
            return str(values[name])
        statements, _ = parse_trace(row["text"])
        values = evaluate(statements)
        return "".join(str(values[name]) for name, _ in statements)

    def heuristic_accuracy(self, row: dict) -> float:
        if "prompt" in row:
            statements = parse_program(row["prompt"].rpartition("?")[0])
            digits = literal_digits(statements)
            return 1.0 / len(digits) if row["answer"] in digits else 0.0
        statements, written = parse_trace(row["text"])
        digits = literal_digits(statements)
        acc = 1.0
        for (_, expr), value in zip(statements, written):
            if not expr.isdigit():
                acc *= 1.0 / len(digits) if value in digits else 0.0
        return acc


VARS = TASKS.register("vars")(VarsTask())
