"""``loopmdm task make FAMILY --out DIR``: write a reasoning task folder (train / val / test JSONL and
task.json)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError
from ..tasks import TASKS, write_task
from .app import app, emit_json, info

task_app = typer.Typer(
    help="Depth-bound reasoning task suites (vars, prefix): generate JSONL rows.",
    no_args_is_help=True,
)
app.add_typer(task_app, name="task")


def is_digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts "²" and other digits that ``int()`` refuses."""
    return text.isascii() and text.isdigit()


def parse_int(text: Optional[str], flag: str, low: int, example: str) -> Optional[int]:
    """An integer option given as text (so that a bad value is a one-line ConfigError, not a usage box)."""
    if text is None:
        return None
    t = text.strip()
    if not is_digits(t.removeprefix("-")) or int(t) < low:
        raise ConfigError(f"{flag} {text!r} is not an integer >= {low}; pass e.g. {flag} {example}")
    return int(t)


MAX_LEVELS = (
    4096  # the largest task level (prefix sums of up to 4096 terms); the task checks each level
)


def parse_levels(values: List[str], flag: str, example: str) -> Optional[list[int]]:
    """Levels, repeated and / or comma-separated, ranges as ``A..B``: ``["0..2", "5"]`` -> ``[0, 1, 2,
    5]``."""
    if not values:
        return None
    out: list[int] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("..")
            if not is_digits(lo) or (sep and not is_digits(hi)) or (sep and int(hi) < int(lo)):
                raise ConfigError(
                    f"{flag} {part!r} is not a level or a range A..B of levels >= 0; "
                    f"pass e.g. {flag} {example}"
                )
            if sep and int(hi) - int(lo) >= MAX_LEVELS:
                raise ConfigError(
                    f"{flag} {part!r} spans more than {MAX_LEVELS:,} levels; no task has that many: "
                    f"pass e.g. {flag} {example}"
                )
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    if not out:
        raise ConfigError(f"{flag} is empty; pass e.g. {flag} {example}")
    return out


def parse_statements(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"8:26"`` -> (8, 26); ``"12"`` -> (12, 12)."""
    if text is None:
        return None
    lo, sep, hi = text.strip().partition(":")
    if not is_digits(lo) or (sep and not is_digits(hi)):
        raise ConfigError(
            f"--statements {text!r} is not a range LO:HI; pass e.g. --statements 8:26"
        )
    return int(lo), int(hi) if sep else int(lo)


def family_params(
    family: str,
    mode: Optional[str],
    kind: Optional[str],
    statements: Optional[str],
    literals: Optional[str],
    layout: Optional[str] = None,
) -> dict:
    """The generator parameters given on the command line (unset ones keep the library defaults)."""
    params: dict = {}
    only = {
        "vars": (("--mode", mode), ("--statements", statements), ("--literals", literals)),
        "prefix": (("--layout", layout),),
    }
    for owner, flags in only.items():
        for flag, value in flags:
            if value is not None and family != owner:
                raise ConfigError(f"{flag} is for the {owner} family only; drop it for {family}")
    if layout is not None:
        params["layout"] = layout
    if mode is not None:
        params["mode"] = mode
    if kind is not None:
        params["kind"] = kind
    if statements is not None:
        params["statements"] = parse_statements(statements)
    if literals is not None:
        params["literals"] = parse_int(literals, "--literals", 1, "6")
    return params


@task_app.command("make")
def make(
    family: str = typer.Argument(..., help=f"Task family: {', '.join(TASKS.names())}."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output folder: train/val/test.jsonl, task.json."
    ),
    mode: Optional[str] = typer.Option(
        None, "--mode", help="vars: query (prompt / answer, default) or trace (infill scratchpad)."
    ),
    kind: Optional[str] = typer.Option(
        None, "--kind", help="vars: hops or arith (default); prefix: sum (default) or parity."
    ),
    layout: Optional[str] = typer.Option(
        None,
        "--layout",
        help="prefix: infill (DIGITS=SUMS, default) or interleaved (each sum after its digit).",
    ),
    train: str = typer.Option("1000", "--train", help="Training rows per level."),
    val: str = typer.Option(
        "100", "--val", help="Validation rows per level (at the training levels)."
    ),
    test: str = typer.Option("100", "--test", help="Test rows per level (at the test levels)."),
    train_levels: List[str] = typer.Option(
        [],
        "--train-levels",
        metavar="1,2,3",
        help="Levels (vars: depths, prefix: sizes), e.g. 0,1,2,3 or 0..3.",
    ),
    test_levels: List[str] = typer.Option(
        [], "--test-levels", metavar="1,2,3", help="Test levels, may be harder: 0..8."
    ),
    statements: Optional[str] = typer.Option(
        None,
        "--statements",
        help="vars: statements per program, LO:HI (default 8:26, raised for deep levels).",
    ),
    literals: Optional[str] = typer.Option(
        None, "--literals", help="vars: digit literals per program (1-10, default 6)."
    ),
    seed: str = typer.Option("0", "--seed", help="Random seed."),
    json_out: bool = typer.Option(
        False, "--json", help="Print task.json as one JSON object on stdout."
    ),
) -> None:
    """Write a task folder; the same command again leaves it as it is, a non-empty other folder is refused."""
    fam = TASKS.get(family)
    if out is None:
        raise ConfigError("--out is required; pass e.g. --out data/vars")
    res = write_task(
        out,
        fam.name,
        n_train=parse_int(train, "--train", 0, "1000"),
        n_val=parse_int(val, "--val", 0, "100"),
        n_test=parse_int(test, "--test", 0, "100"),
        train_levels=parse_levels(train_levels, "--train-levels", "0..3"),
        test_levels=parse_levels(test_levels, "--test-levels", "0..8"),
        seed=parse_int(seed, "--seed", 0, "0"),
        **family_params(fam.name, mode, kind, statements, literals, layout),
    )
    if json_out:
        emit_json(res)
        return
    verb = "wrote" if res["written"] else "unchanged:"
    rows = ", ".join(f"{s} {res['splits'][s]['rows']}" for s in ("train", "val", "test"))
    info(f"{verb} {out} ({res['spec']['family']} {', '.join(res['tasks'])}: {rows} rows)")
