"""Reasoning task suites (``loopmdm.tasks``): answers equal an independent checker, depths and sizes are exact
(recomputed here by a graph walk of our own), literal counts never tell the depth, splits are disjoint, every
level gets its rows, heuristics match a Monte-Carlo estimate, and ``loopmdm task make`` is idempotent with
one-line errors."""

from __future__ import annotations

import ast
import json
import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import run_cli
from loopmdm.errors import ConfigError, DataError
from loopmdm.tasks import TASKS, heuristic_for, make_splits, row_key, target_text, write_task
from loopmdm.tasks.base import draw_distinct

STMT = re.compile(r"([a-z])=(\d|[a-z]|[a-z][+-][a-z])")

CASES = [  # (family, params, levels)
    ("vars", {"mode": "query", "kind": "hops"}, [0, 1, 2, 3, 5, 8]),
    ("vars", {"mode": "query", "kind": "arith"}, [0, 1, 2, 3, 5, 8]),
    ("vars", {"mode": "trace", "kind": "hops"}, [1, 2, 4, 8]),
    ("vars", {"mode": "trace", "kind": "arith"}, [1, 2, 4, 8]),
    ("vars", {"mode": "query", "kind": "arith", "literals": 1, "statements": (3, 9)}, [0, 1, 2]),
    ("prefix", {"kind": "sum"}, [2, 4, 12, 24]),
    ("prefix", {"kind": "parity"}, [5, 8, 24]),
    ("prefix", {"kind": "sum", "layout": "interleaved"}, [2, 4, 12, 24]),
]
IDS = [
    "query-hops",
    "query-arith",
    "trace-hops",
    "trace-arith",
    "query-1-literal",
    "prefix-sum",
    "prefix-parity",
    "prefix-sum-interleaved",
]


# --------------------------------------------------------------------------- the test's own parser


def statements_of(row: dict) -> list[tuple[str, str]]:
    """[(name, expr)] of a vars row, in printed order (parsed here, independently of the library)."""
    if "prompt" in row:
        program = row["prompt"].split("?")[0]
    else:
        program = ";".join(part.rsplit(":", 1)[0] for part in row["text"].split(";"))
    out = []
    for stmt in program.split(";"):
        m = STMT.fullmatch(stmt)
        assert m, stmt
        out.append((m.group(1), m.group(2)))
    return out


def reads(expr: str) -> list[str]:
    return re.findall(r"[a-z]", expr)


def depths(statements: list[tuple[str, str]]) -> dict[str, int]:
    """Depth of every name by a Kahn walk of the dependency graph (asserts: no cycle, every read assigned)."""
    exprs = dict(statements)
    assert len(exprs) == len(statements), "a name is assigned twice"
    pending = {n: set(reads(e)) for n, e in exprs.items()}
    assert all(r in exprs for deps in pending.values() for r in deps), (
        "a name is read but never assigned"
    )
    depth: dict[str, int] = {}
    while pending:
        ready = [n for n, deps in pending.items() if deps <= depth.keys()]
        assert ready, "cycle"
        for n in ready:
            depth[n] = 1 + max(depth[r] for r in pending[n]) if pending[n] else 0
            del pending[n]
    return depth


def literal_digits(row: dict) -> list[str]:
    return [e for _, e in statements_of(row) if e.isdigit()]


# --------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("family, params, levels", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_answers_equal_the_independent_checker(family, params, levels, seed):
    fam = TASKS.get(family)
    rows = fam.generate(25, levels, seed, **params)
    assert len(rows) == 25 * len(levels)
    for row in rows:
        assert fam.check(row) == target_text(row), row
        if "targets" in row:
            spans = row["targets"]
            assert spans == sorted(spans) and all(0 <= s < e <= len(row["text"]) for s, e in spans)
            assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:])), (
                "overlapping targets"
            )
        else:
            assert len(row["answer"]) == 1 and row["answer"].isdigit()


def corrupt(row: dict) -> dict:
    """The row with one answer character changed."""
    bump = {c: str((int(c) + 1) % 10) for c in "0123456789"}
    if "prompt" in row:
        return {**row, "answer": bump[row["answer"]]}
    s, _ = row["targets"][-1]
    text = row["text"]
    new = "1" if text[s] == "0" else "0"  # stays a valid parity digit
    return {**row, "text": text[:s] + new + text[s + 1 :]}


@pytest.mark.parametrize("family, params, levels", CASES, ids=IDS)
def test_the_checker_rejects_wrong_answers(family, params, levels):
    fam = TASKS.get(family)
    for row in fam.generate(10, levels, 3, **params):
        bad = corrupt(row)
        assert fam.check(bad) != target_text(bad)


@pytest.mark.parametrize(
    "prompt, match",
    [
        ("a=1;b=c?b", "never assigns"),
        ("a=b;b=a?a", "cycle"),
        ("a=1;a=2?a", "twice"),
        ("a=12?a", "malformed"),
        ("a=1;b=a+a?b", "one name twice"),
        ("a=1;b=2", "no '?NAME'"),
    ],
)
def test_the_checker_refuses_malformed_programs(prompt, match):
    with pytest.raises(DataError, match=re.escape(match)):
        TASKS.get("vars").check({"prompt": prompt, "answer": "0", "task": "vars-arith"})


def test_the_checker_on_hand_written_rows():
    vars_, prefix = TASKS.get("vars"), TASKS.get("prefix")
    assert vars_.check({"prompt": "k=3;b=k+q;q=7?b", "answer": "0"}) == "0"
    assert vars_.check({"prompt": "k=3;b=k-q;q=7?b", "answer": "6"}) == "6"  # 3 - 7 mod 10
    assert (
        vars_.check({"text": "k=3:3;q=7:7;b=q-k:4", "targets": [[4, 5], [10, 11], [18, 19]]})
        == "374"
    )
    assert prefix.check({"text": "3141=3489", "targets": [[5, 9]], "task": "prefix-sum"}) == "3489"
    assert (
        prefix.check({"text": "1011=1101", "targets": [[5, 9]], "task": "prefix-parity"}) == "1101"
    )
    assert (
        prefix.check(
            {"text": "33144819", "targets": [[1, 2], [3, 4], [5, 6], [7, 8]], "task": "prefix-sum"}
        )
        == "3489"
    )
    for bad in ("3314481", "3=14", "3a1", "1=1=1"):
        with pytest.raises(DataError, match="malformed prefix row"):
            prefix.check({"text": bad, "targets": [[1, 2]], "task": "prefix-sum"})


# --------------------------------------------------------------------------- depth, size, literals


@pytest.mark.parametrize("kind", ["hops", "arith"])
def test_query_depth_is_exact_and_programs_look_alike(kind):
    levels = [0, 1, 2, 4, 6, 8]
    rows = TASKS.get("vars").generate(
        150, levels, 7, mode="query", kind=kind, literals=5, statements=(14, 24)
    )
    counts_by_depth: dict[int, list[int]] = {}
    shuffled = 0
    for row in rows:
        stmts = statements_of(row)
        d = depths(stmts)
        name = row["prompt"].split("?")[1]
        assert d[name] == row["depth"]
        assert max(d.values()) == row["max_depth"] == 8  # every program built to the deepest level
        assert set(range(9)) <= set(d.values())
        assert row["statements"] == len(stmts) and 14 <= len(stmts) <= 24
        digits = literal_digits(row)
        assert len(digits) == len(set(digits)) == 5 == row["literals"]
        for _, e in stmts:
            if len(e) == 3:
                assert kind == "arith" and e[0] != e[2]
        seen = set()
        for n, e in stmts:
            shuffled += any(r not in seen for r in reads(e))
            seen.add(n)
        counts_by_depth.setdefault(row["depth"], []).append(len(stmts))
    assert shuffled > 0, "statements are never printed before the names they read"
    means = [sum(v) / len(v) for v in counts_by_depth.values()]
    assert max(means) - min(means) < 1.5, means  # the statement count does not tell the depth
    if kind == "arith":  # copy, + and - equally likely (the documented construction)
        ops = Counter(
            e[1] if len(e) == 3 else "="
            for row in rows
            for _, e in statements_of(row)
            if not e.isdigit()
        )
        total = sum(ops.values())
        assert all(0.29 < ops[op] / total < 0.38 for op in "=+-"), ops


@pytest.mark.parametrize("kind", ["hops", "arith"])
def test_trace_depth_is_exact_and_order_is_topological(kind):
    rows = TASKS.get("vars").generate(100, [1, 3, 8], 4, mode="trace", kind=kind)
    orders = set()
    for row in rows:
        stmts = statements_of(row)
        d = depths(stmts)
        assert max(d.values()) == row["depth"]
        seen: set[str] = set()
        for n, e in stmts:
            assert all(r in seen for r in reads(e)), f"{n}={e} printed before what it reads"
            seen.add(n)
        digits = literal_digits(row)
        assert len(digits) == len(set(digits)) == 6
        assert row["statements"] == len(stmts) and len(row["targets"]) == len(stmts)
        for (s, e), part_end in zip(row["targets"], ends_of_parts(row["text"])):
            assert (s, e) == (part_end - 1, part_end) and row["text"][s - 1] == ":"
        orders.add(tuple(0 if e.isdigit() else 1 for _, e in stmts))
    assert len(orders) > 50, "the topological order is not randomised"


def test_trace_order_is_a_uniform_pick_among_ready_statements():
    """Two literals and one copy: the copy comes second (right after what it reads) with probability 1/4."""
    rows = TASKS.get("vars").generate(
        800, [1], 0, mode="trace", kind="hops", literals=2, statements=(3, 3)
    )
    middle = sum(not statements_of(r)[1][1].isdigit() for r in rows) / len(rows)
    assert 0.2 < middle < 0.3, middle


def ends_of_parts(text: str) -> list[int]:
    out, pos = [], 0
    for part in text.split(";"):
        pos += len(part)
        out.append(pos)
        pos += 1
    return out


@pytest.mark.parametrize(
    "kind, alphabet, levels", [("sum", "0123456789", [2, 5, 17]), ("parity", "01", [6, 9, 17])]
)
def test_prefix_size_is_exact(kind, alphabet, levels):
    rows = TASKS.get("prefix").generate(40, levels, 0, kind=kind)
    assert Counter(r["size"] for r in rows) == {lv: 40 for lv in levels}
    for row in rows:
        digits, out = row["text"].split("=")
        assert len(digits) == len(out) == row["size"] and set(digits) <= set(alphabet)
        assert (
            row["targets"] == [[row["size"] + 1, 2 * row["size"] + 1]]
            and row["task"] == f"prefix-{kind}"
        )


def test_prefix_interleaved_layout_puts_each_sum_after_its_digit():
    fam = TASKS.get("prefix")
    infill = fam.generate(30, [3, 7], 4)
    rows = fam.generate(30, [3, 7], 4, layout="interleaved")
    for a, b in zip(infill, rows):  # the same inputs, drawn in the same order
        digits, out = a["text"].split("=")
        assert b["text"] == "".join(x + y for x, y in zip(digits, out)) and b["size"] == a["size"]
        assert b["targets"] == [[2 * i + 1, 2 * i + 2] for i in range(b["size"])]
        assert fam.heuristic_accuracy(b) == fam.heuristic_accuracy(a)


# --------------------------------------------------------------------------- splits and levels

SPLIT_CASES = [
    ("vars", {"mode": "query", "kind": "arith"}, [0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8]),
    (
        "vars",
        {"mode": "trace", "kind": "hops", "literals": 4, "statements": (12, 16)},
        [1, 2, 3],
        [1, 2, 3, 5, 8],
    ),
    ("prefix", {"kind": "sum"}, [3, 4], [3, 4, 6]),  # size 3: 900 of the 1000 inputs are used
    ("prefix", {"kind": "parity"}, [9, 10], [9, 10, 12]),  # size 9: 450 of 512
    ("prefix", {"kind": "sum", "layout": "interleaved"}, [3, 4], [3, 4, 6]),
]


@pytest.mark.parametrize("family, params, train_levels, test_levels", SPLIT_CASES)
def test_splits_are_disjoint_and_every_level_gets_its_rows(
    family, params, train_levels, test_levels
):
    n = (
        {"train": 300, "val": 100, "test": 200}
        if family != "prefix" or params["kind"] == "sum"
        else {"train": 250, "val": 100, "test": 100}
    )
    splits = make_splits(
        family, n["train"], n["val"], n["test"], train_levels, test_levels, seed=5, **params
    )
    field = TASKS.get(family).level_field
    keys = []
    for name, rows, levels in zip(
        ["train", "val", "test"], splits, [train_levels, train_levels, test_levels]
    ):
        assert Counter(r[field] for r in rows) == {lv: n[name] for lv in levels}
        k = {row_key(r) for r in rows}
        assert len(k) == len(rows), f"duplicate rows within {name}"
        keys.append(k)
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    if params.get("mode") == "query":  # every split's programs come from one generator
        assert {r["max_depth"] for split in splits for r in split} == {8}


def test_exhausted_levels_are_a_config_error():
    with pytest.raises(ConfigError, match="size 3 has only 1000 distinct inputs"):
        make_splits("prefix", 500, 300, 300, [3], [3], kind="sum")
    # draws that keep repeating
    with pytest.raises(ConfigError, match="found only 1 distinct rows of 2"):
        draw_distinct(
            random.Random(0), 2, lambda rng: {"prompt": "a=1?a", "answer": "1"}, set(), "depth 0"
        )


def test_generation_is_deterministic_and_seeded():
    fam = TASKS.get("vars")
    assert fam.generate(20, [0, 3], 1) == fam.generate(20, [0, 3], 1)
    assert fam.generate(20, [0, 3], 1) != fam.generate(20, [0, 3], 2)
    again = make_splits("prefix", 10, 5, 5, [4], [4, 8], seed=3)
    assert make_splits("prefix", 10, 5, 5, [4], [4, 8], seed=3) == again


def test_twenty_thousand_rows_take_well_under_ten_seconds():
    t0 = time.perf_counter()
    rows = TASKS.get("vars").generate(2000, list(range(10)), 0, mode="query", kind="arith")
    elapsed = time.perf_counter() - t0
    assert len(rows) == 20000 and elapsed < 8.0, elapsed


# --------------------------------------------------------------------------- heuristics


def guess_query(row: dict, rng: random.Random) -> bool:
    return rng.choice(literal_digits(row)) == row["answer"]


def guess_trace(row: dict, rng: random.Random) -> bool:
    digits = literal_digits(row)
    for (_, e), (s, t) in zip(statements_of(row), row["targets"]):
        guess = e if e.isdigit() else rng.choice(digits)
        if guess != row["text"][s:t]:
            return False
    return True


@pytest.mark.parametrize(
    "params, levels, guess",
    [
        ({"mode": "query", "kind": "arith"}, [0, 1, 2, 5], guess_query),
        (
            {"mode": "query", "kind": "hops", "literals": 3, "statements": (6, 9)},
            [0, 2],
            guess_query,
        ),
        (
            {"mode": "trace", "kind": "arith", "literals": 2, "statements": (4, 5)},
            [1, 2],
            guess_trace,
        ),
        (
            {"mode": "trace", "kind": "hops", "literals": 2, "statements": (4, 4)},
            [1, 2],
            guess_trace,
        ),
    ],
)
def test_vars_heuristic_matches_monte_carlo(params, levels, guess):
    fam, rng, trials = TASKS.get("vars"), random.Random(0), 3000
    for row in fam.generate(3, levels, 11, **params):
        h = fam.heuristic_accuracy(row)
        assert 0.0 <= h <= 1.0
        mc = sum(guess(row, rng) for _ in range(trials)) / trials
        assert abs(mc - h) < 4 * max(h * (1 - h), 1e-3) ** 0.5 / trials**0.5 + 0.005, (row, h, mc)
        if params["kind"] == "hops" and params["mode"] == "query":
            # a copy chain always ends at a literal
            assert h == pytest.approx(1 / params["literals"])


def test_prefix_heuristic_copies_the_input():
    fam = TASKS.get("prefix")
    assert (
        fam.heuristic_accuracy({"text": "0007=0007", "targets": [[5, 9]], "task": "prefix-sum"})
        == 1.0
    )
    assert (
        fam.heuristic_accuracy({"text": "3141=3489", "targets": [[5, 9]], "task": "prefix-sum"})
        == 0.0
    )
    for row in fam.generate(50, [2, 6], 0):
        digits, out = row["text"].split("=")
        assert fam.heuristic_accuracy(row) == float(digits == out)
    # size 1: output = input
    assert all(fam.heuristic_accuracy(r) == 1.0 for r in fam.generate(10, [1], 0))


def test_heuristic_for_rows_of_known_and_unknown_tasks():
    rows = TASKS.get("vars").generate(5, [1], 0) + TASKS.get("prefix").generate(5, [3], 0)
    heuristic, name = heuristic_for(rows)
    assert "vars" in name and "prefix" in name
    expected = [TASKS.get(r["task"].split("-")[0]).heuristic_accuracy(r) for r in rows]
    assert [heuristic(r) for r in rows] == expected
    assert heuristic({"prompt": "x", "answer": "1", "task": "other"}) is None
    assert heuristic({"prompt": "garbage", "answer": "1", "task": "vars-arith"}) is None
    assert heuristic_for([{"prompt": "a", "answer": "b"}]) == (None, None)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "family, levels, params, match",
    [
        ("vars", [0, 1], {"literals": 11}, "--literals 11"),
        ("vars", [0, 1], {"literals": 0}, "--literals 0"),
        ("vars", [0, 1], {"statements": (30, 40)}, "--statements 30:40"),
        ("vars", [0, 8], {"statements": (8, 26)}, "pass --statements 14:26"),
        ("vars", [0, 1], {"statements": (9, 8)}, "--statements 9:8"),
        ("vars", [0, 1], {"mode": "trace"}, ">= 1"),
        ("vars", [0, 1], {"kind": "mul"}, "--kind 'mul'"),
        ("vars", [0, 1], {"mode": "nope"}, "--mode 'nope'"),
        ("vars", [0, 1], {"depth": 3}, "unknown vars option 'depth'"),
        ("vars", [0, 3], {"program_depth": 2}, "program_depth 2"),
        ("vars", [0, 21], {}, "out of range"),
        ("vars", [1, 1], {}, "repeats a level"),
        ("prefix", [0, 4], {}, "out of range"),
        ("prefix", [4], {"kind": "xor"}, "--kind 'xor'"),
        ("prefix", [4], {"literals": 3}, "unknown prefix option 'literals'"),
    ],
)
def test_bad_parameters_are_one_line_config_errors(family, levels, params, match):
    with pytest.raises(ConfigError, match=re.escape(match)) as e:
        TASKS.get(family).generate(2, levels, 0, **params)
    assert "\n" not in str(e.value)


def test_bad_counts_and_families():
    with pytest.raises(ConfigError, match="--train -1"):
        make_splits("vars", -1, 1, 1)
    with pytest.raises(ConfigError, match="unknown task family 'nope'"):
        make_splits("nope", 1, 1, 1)


# --------------------------------------------------------------------------- files and the command line


def cli(argv, capsys) -> tuple[int, str, str]:
    """``helpers.run_cli``, also when the entry point returns on success instead of raising SystemExit(0)
    (errors always exit through SystemExit(2))."""
    try:
        return run_cli(argv, capsys)
    except pytest.fail.Exception:  # "DID NOT RAISE SystemExit": the command returned normally
        out = capsys.readouterr()
        return 0, out.out, out.err


def snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_write_task_is_idempotent_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "t"
    args = dict(
        n_train=6,
        n_val=2,
        n_test=3,
        train_levels=[0, 1],
        test_levels=[0, 1, 2],
        seed=4,
        kind="hops",
    )
    res = write_task(out, "vars", **args)
    names = sorted(p.name for p in out.iterdir())
    assert res["written"] and names == ["task.json", "test.jsonl", "train.jsonl", "val.jsonl"]
    info = json.loads((out / "task.json").read_text())
    assert info["spec"]["params"] == {
        "mode": "query",
        "kind": "hops",
        "literals": 6,
        "program_depth": 2,
        "statements": [8, 26],
    }
    assert (
        info["spec"]["seed"] == 4
        and info["format"] == "prompt-answer"
        and info["level_field"] == "depth"
    )
    assert info["splits"]["test"]["per_level"] == {"0": 3, "1": 3, "2": 3}
    assert info["splits"]["train"]["rows"] == 12 and info["splits"]["val"]["per_level"] == {
        "0": 2,
        "1": 2,
    }
    rows = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(TASKS.get("vars").check(r) == r["answer"] for r in rows)
    before = snapshot(out)
    assert write_task(out, "vars", **args)["written"] is False
    assert snapshot(out) == before
    with pytest.raises(ConfigError, match="other parameters"):
        write_task(out, "vars", **{**args, "seed": 5})
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds no task.json"):
        write_task(tmp_path / "foreign", "vars", **args)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        write_task(tmp_path / "file", "vars", **args)


def test_a_folder_written_before_a_parameter_existed_is_reused(tmp_path):
    """Found by the reasoning study: prefix's ``layout`` parameter (default infill) orphaned the prefix-sum folder
    written before it existed ("holds a task with other parameters"); its default now fills the old spec."""
    out = tmp_path / "p"
    args = dict(n_train=4, n_val=2, n_test=2, train_levels=[4], test_levels=[4, 6], seed=0)
    write_task(out, "prefix", **args)
    info = json.loads((out / "task.json").read_text())
    assert info["spec"]["params"].pop("layout") == "infill"  # as an older version wrote it
    (out / "task.json").write_text(json.dumps(info))
    before = snapshot(out)
    assert write_task(out, "prefix", **args)["written"] is False and snapshot(out) == before
    with pytest.raises(ConfigError, match="other parameters"):
        write_task(out, "prefix", **args, layout="interleaved")


def test_cli_task_make_writes_and_is_idempotent(tmp_path, capsys):
    out = tmp_path / "vars"
    argv = [
        "task",
        "make",
        "vars",
        "--out",
        out,
        "--mode",
        "trace",
        "--kind",
        "arith",
        "--train",
        "4",
        "--val",
        "2",
        "--test",
        "2",
        "--train-levels",
        "1,2",
        "--test-levels",
        "1..4",
        "--statements",
        "10:20",
        "--literals",
        "5",
        "--seed",
        "1",
        "--json",
    ]
    code, stdout, err = cli(argv, capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["written"] and res["spec"]["params"] == {
        "mode": "trace",
        "kind": "arith",
        "literals": 5,
        "statements": [10, 20],
    }
    assert res["splits"]["test"]["per_level"] == {"1": 2, "2": 2, "3": 2, "4": 2}
    assert {p.name for p in out.iterdir()} == {
        "train.jsonl",
        "val.jsonl",
        "test.jsonl",
        "task.json",
    }
    before = snapshot(out)
    code, stdout, err = cli(argv, capsys)
    assert code == 0 and json.loads(stdout)["written"] is False and snapshot(out) == before
    code, _, err = cli(
        [
            "task",
            "make",
            "prefix",
            "--out",
            tmp_path / "p",
            "--train",
            "3",
            "--val",
            "1",
            "--test",
            "1",
            "--train-levels",
            "4",
            "--test-levels",
            "4,8",
        ],
        capsys,
    )
    assert code == 0 and "wrote" in err
    rows = [json.loads(x) for x in (tmp_path / "p" / "test.jsonl").read_text().splitlines()]
    assert sorted(r["size"] for r in rows) == [4, 8] and all(
        r["task"] == "prefix-sum" for r in rows
    )


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--literals", "11"], "--literals 11"),
        (["--statements", "30:40"], "--statements 30:40"),
        (["--statements", "8:26", "--test-levels", "0..8"], "--statements 14:26"),
        (["--statements", "abc"], "--statements 'abc'"),
        (["--train", "x"], "--train 'x'"),
        (["--train-levels", "1,a"], "--train-levels 'a'"),
        (["--mode", "trace", "--train-levels", "0,1"], ">= 1"),
        (["--kind", "mul"], "--kind 'mul'"),
        (["--train-levels", "0..99999999999"], "spans more than 4,096 levels"),
        (["--train", "99999999999"], "more than the supported 10,000,000"),
    ],
)
def test_cli_bad_options_exit_2_with_one_line(extra, match, tmp_path, capsys):
    code, _, err = cli(["task", "make", "vars", "--out", tmp_path / "o", *extra], capsys)
    assert code == 2 and err.startswith("error: ") and match in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["task", "make", "prefix", "--out", "OUT", "--literals", "3"], "for the vars family only"),
        (
            ["task", "make", "vars", "--out", "OUT", "--layout", "interleaved"],
            "for the prefix family only",
        ),
        (["task", "make", "prefix", "--out", "OUT", "--layout", "zigzag"], "--layout 'zigzag'"),
        (["task", "make", "nope", "--out", "OUT"], "unknown task family"),
        (["task", "make", "vars"], "--out is required"),
    ],
)
def test_cli_other_errors(argv, match, tmp_path, capsys):
    code, _, err = cli([str(tmp_path / "o") if a == "OUT" else a for a in argv], capsys)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_cli_refuses_a_non_empty_foreign_folder(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = cli(["task", "make", "vars", "--out", out, "--train", "2"], capsys)
    assert code == 2 and err.startswith("error: ") and "not empty" in err
    assert len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# --------------------------------------------------------------------------- layering


def test_tasks_import_only_lower_layers():
    root = Path(__import__("loopmdm.tasks", fromlist=["x"]).__file__).parent
    allowed = ("loopmdm.errors", "loopmdm.fileio", "loopmdm.registry", "loopmdm.tasks")
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = (
                    "loopmdm.tasks." if node.level == 1 else "loopmdm." if node.level == 2 else ""
                ) + (node.module or "")
                names = [mod]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith("torch"), f"{path.name} imports torch"
                if name.startswith("loopmdm"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"
