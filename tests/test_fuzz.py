"""Property-based fuzzer (hypothesis) of the bad-input rule: every bad input ends in exit 0 or exit 2 with ONE
``error: ...`` line on stderr (a ``LoopMDMError`` from the library), never a traceback, never a hang, and never
a lost file.

1. random CLI argument vectors, drawn from the parser's own option lists (``typer.main.get_command``), for the
   cheap subcommands (``sample``, ``eval``, ``train`` capped at one step of a tiny model, ``task make``, ``plot``,
   ``export``, ``import``, ``loopify``), run in-process against the ``tiny_run`` checkpoint and a scratch tree;
2. random config dicts (``RunConfig.from_dict(...).validate()``) and YAML files (``train --config``);
3. damaged copies of the ``tiny_run`` checkpoint (truncated / flipped / re-typed safetensors, garbled JSON,
   missing files, with and without a matching ``index.json``) through ``sample`` and ``eval``;
4. random JSONL rows of the ``answers`` format (``read_rows``, ``prepare_data``) and Sudoku puzzle CSV / JSONL
   files (``read_puzzles``);
5. no lost files: each CLI example runs in a scratch tree of pre-existing files (hashed before and after), and
   the ``tiny_run`` files stay byte-identical.

Every example runs under a wall-clock limit (``SIGALRM``): a hang is a failure naming the argument vector.
Examples are derandomized (the same in every CI run). ``LOOPMDM_FUZZ_EXAMPLES=N`` multiplies every example
count by N (``5`` or ``5x``: five times as many) for a longer local hunt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import shlex
import shutil
import signal
import struct
import tempfile
import typing
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from helpers import run_cli  # noqa: E402
from loopmdm.config import RunConfig, load_config  # noqa: E402
from loopmdm.errors import ConfigError, DataError, LoopMDMError  # noqa: E402


def _scale(raw: str) -> float:
    try:
        return max(float(raw.strip().rstrip("xX") or 1), 0.01)
    except ValueError:
        raise RuntimeError(
            f"LOOPMDM_FUZZ_EXAMPLES={raw!r} must be a number (a multiplier, e.g. 5)"
        ) from None


SCALE = _scale(os.environ.get("LOOPMDM_FUZZ_EXAMPLES", "1"))
# a file: one line per CLI call (exit code, command, last stderr line)
LOG = os.environ.get("LOOPMDM_FUZZ_LOG")
# wall-clock limit of one example (a hang fails)
LIMIT_S = float(os.environ.get("LOOPMDM_FUZZ_LIMIT_S", "30"))
HEALTH = [
    HealthCheck.too_slow,
    HealthCheck.function_scoped_fixture,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]


def fuzz(examples: int):
    """The settings of every fuzz test: ``examples`` (times ``LOOPMDM_FUZZ_EXAMPLES``), derandomized, no deadline
    (the wall-clock limit is ``time_limit``'s), no example database."""
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=HEALTH,
        print_blob=False,
    )


# =========================================================================== shared helpers


class Hang(BaseException):
    """Raised by SIGALRM inside an example; a BaseException so that no ``except Exception`` swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    def on_alarm(signum, frame):
        raise Hang(f"{what} did not finish within {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def bounded(fn, what: str, limit: float = LIMIT_S):
    """``fn()`` under the wall-clock limit; a hang becomes an AssertionError (hypothesis then shrinks it)."""
    try:
        with time_limit(limit, what):
            return fn()
    except Hang as e:
        raise AssertionError(f"hang: {e}") from None


def library_call(fn, what: str, allowed=(LoopMDMError,)):
    """``fn()``: a result, or one of ``allowed`` with a one-line message; anything else fails naming ``what``."""
    try:
        return bounded(fn, what)
    except allowed as e:
        assert str(e) and "\n" not in str(e), f"{what}: multi-line or empty error {e!r}"
        return None


def shown(argv) -> str:
    return "loopmdm " + " ".join(
        shlex.quote(str(a).encode("utf-8", "backslashreplace").decode()) for a in argv
    )


def check_cli(argv: list[str], capsys, limit: float = LIMIT_S) -> tuple[int, str, str]:
    """Run ``loopmdm ARGV`` in-process: exit 0, or exit 2 with one ``error:`` line; no traceback, no hang."""
    cmd = shown(argv)
    try:
        with time_limit(limit, cmd):
            code, out, err = run_cli(argv, capsys)
    except Hang as e:
        capsys.readouterr()
        raise AssertionError(f"hang: {e}") from None
    except Exception as e:  # escaped main(): the user would read a traceback
        err = capsys.readouterr().err
        raise AssertionError(
            f"`{cmd}` raised {type(e).__name__}: {str(e)[:300]} (a traceback for the user; "
            f"stderr: {err[-300:]!r})"
        ) from e
    assert code in (0, 2), f"`{cmd}` exited {code!r}: {err[-500:]!r}"
    assert "Traceback" not in err, f"`{cmd}` printed a traceback: {err[-2000:]}"
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("error: "), (
            f"`{cmd}` exited 2 without an error line: {err[-500:]!r}"
        )
        assert sum(ln.startswith("error:") for ln in lines) == 1, (
            f"`{cmd}`: more than one error line: {err!r}"
        )
    if LOG:
        last = (err.strip().splitlines() or [""])[-1][:160]
        with open(LOG, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"{code} {cmd[:300]}\n    {last}\n")
    return code, out, err


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def assert_unchanged(
    folder: Path, before: dict[str, str], what: str, allowed: frozenset = frozenset()
) -> None:
    """Every file of ``before`` is still there, byte-identical (unless it is one of ``allowed``: the command's
    documented output file)."""
    for rel, digest in before.items():
        p = folder / rel
        if p.resolve() in allowed:
            continue
        assert p.is_file(), f"{what}: pre-existing file {rel!r} was removed"
        assert sha(p) == digest, f"{what}: pre-existing file {rel!r} was changed"


@pytest.fixture(scope="module")
def run_hashes(tiny_run):
    """The ``tiny_run`` folder's files at the start: no example may change them."""
    return hashes(tiny_run)


@pytest.fixture(scope="module")
def scratch_base(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@contextlib.contextmanager
def scratch(base: Path):
    """A fresh folder per example (removed afterwards), the working directory while the example runs."""
    root = Path(tempfile.mkdtemp(dir=base))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)
        # an example may have left a folder without write permission
        for p in [root, *root.rglob("*")]:
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


# =========================================================================== 1 + 5. CLI argument vectors

FUZZED = ("sample", "eval", "train", "task make", "plot", "export", "import", "loopify")
# starts a server; `experiment *` runs whole studies (both covered by their own tests)
NOT_FUZZED = ("serve",)


def command_tree() -> dict[str, object]:
    """Every leaf command of the CLI by its path (``"task make"``); typer vendors its own click, so groups are
    found by their ``commands`` attribute, not by ``isinstance``."""
    import typer.main

    import loopmdm.cli  # noqa: F401  (registers the subcommands)
    from loopmdm.cli.app import app

    found = {}

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs is not None:
            for name, sub in subs.items():
                walk(sub, (*path, name))
        else:
            found[" ".join(path)] = cmd

    walk(typer.main.get_command(app), ())
    return found


@dataclasses.dataclass(frozen=True)
class Opt:
    """One parameter of a command as the parser declares it."""

    name: str
    flags: tuple[str, ...]  # every spelling (--ema, --no-ema); () for an argument
    kind: str  # flag | int | float | str | path
    multiple: bool
    required: bool


def param_kind(p) -> tuple[str, bool]:
    # a type, or its name when the command's module has `from __future__ import annotations`
    t = p.bare_type()
    multiple = bool(p.multiple) or p.nargs == -1
    if typing.get_origin(t) in (list, tuple):
        t, multiple = typing.get_args(t)[0], True
    name = t if isinstance(t, str) else getattr(t, "__name__", repr(t))
    if name.startswith(("list[", "List[")):
        name, multiple = name[5:-1], True
    if getattr(p, "is_flag", False) or name == "bool":
        return "flag", False
    return {"int": "int", "float": "float", "str": "str", "Path": "path"}.get(
        name, f"unknown {name!r}"
    ), multiple


def options_of(cmd) -> list[Opt]:
    out = []
    for p in cmd.params:
        kind, multiple = param_kind(p)
        flags = () if p.param_type_name == "argument" else (*p.opts, *p.secondary_opts)
        out.append(Opt(p.name, tuple(flags), kind, multiple, bool(p.required)))
    return out


TREE = command_tree()
OPTIONS = {name: options_of(TREE[name]) for name in FUZZED if name in TREE}

# ------------------------------------------------------------------ the values

# placeholders, replaced per example: {T} the scratch tree, {RUN} tiny_run, {CKPT} its checkpoint folder,
# {CORPUS} the tiny corpus, {HF} an exported transformers folder, {CACHE} a data cache shared by the examples
SCRATCH_FILES = {  # the pre-existing files of every CLI example (5.: none may change)
    "keep.txt": b"my notes, not the command's\n",
    "notes/readme.md": b"# a folder of mine\n",
    "notes/deeper/data.bin": bytes(range(256)),
    "rows.jsonl": b'{"prompt": "k=3?k", "answer": "3", "depth": 0}\n{"prompt": "q=1?q", "answer": "1", "depth": 0}\n',
    "puzzles.csv": b"quizzes,solutions\n" + b"0" * 81 + b"," + b"1" * 81 + b"\n",
    "sweep.json": json.dumps(
        {
            "metric": "nelbo",
            "primary": "nelbo",
            "results": [
                {"loops": 1, "nelbo": 5.0, "ppl": 148.4, "flops_per_token": 1e6},
                {"loops": 2, "nelbo": 4.5, "ppl": 90.0, "flops_per_token": 2e6},
            ],
        }
    ).encode(),
    "bad.json": b'{"results": [',
    "cfg.yaml": b"train:\n  lr: 0.002\n",
    "bad.yaml": b"train: [\n",
    "u \u00fc \u540d #v2/x.txt": "\u00fcnicode folder\n".encode(),
    "hf.png/keep.txt": b"a folder named like a file\n",
}
SCRATCH_DIRS = ("empty",)

PATHS = [  # values of Path options that read (inputs)
    "{RUN}",
    "{RUN}",
    "{CKPT}",
    "{CKPT}/model.safetensors",
    "{CKPT}/config.json",
    "{RUN}/checkpoints",
    "{T}",
    "{T}/empty",
    "{T}/notes",
    "{T}/keep.txt",
    "{T}/keep.txt/sub",
    "{T}/missing",
    "{T}/sweep.json",
    "{T}/bad.json",
    "{T}/rows.jsonl",
    "{T}/puzzles.csv",
    "{T}/cfg.yaml",
    "{T}/bad.yaml",
    "{T}/u \u00fc \u540d #v2",
    "{T}/fuzz.json",
    "{CORPUS}",
    "/dev/null",
    "/dev/null/x",
    "{T}/absent/deep/path",
    "",
    ".",
    "-",
    "x\udcff",
]
OUT_PATHS = [  # values of options that write (never the tiny run itself)
    "{T}/new_out",
    "{T}/new/deeper/out",
    "{T}/empty",
    "{T}/notes",
    "{T}",
    "{T}/keep.txt",
    "{T}/keep.txt/sub",
    "{T}/hf.png",
    "{T}/out.png",
    "{T}/out.html",
    "{T}/out.gif",
    "{T}/notes/out.png",
    "{T}/new/p.png",
    "{T}/u \u00fc \u540d #v2",
    "/dev/null",
    "/dev/null/x.png",
    "{T}/absent/deep/out",
    "",
    ".",
    "x\udcff.png",
]
WRITES = {
    ("train", "out"),
    ("export", "out"),
    ("import", "out"),
    ("loopify", "out"),
    ("task make", "out"),
    ("plot", "out"),
    ("sample", "trajectory"),
    ("eval", "samples_out"),
    ("eval", "plot"),
}
# may replace
FILE_OUTPUTS = {
    ("plot", "out"),
    ("sample", "trajectory"),
    ("eval", "samples_out"),
    ("eval", "plot"),
}
#                                                                        the file they name (their documented output)

WEIRD_TEXT = [
    "",
    " ",
    "-",
    "--",
    "=",
    "\u00fc",
    "\u540d\u524d",
    "\U0001f642",
    "x\udcff",
    "\udcfe",
    "a b",
    "#c",
    "'",
    '"',
    "\\",
    "%s",
    "{}",
    "${HOME}",
    "..",
    "/",
    "\t",
    "\n",
    "null",
    "~",
    "yes",
    "1e999",
    "nan",
    "-inf",
    "0x10",
    "\u00b2",
    "\u0661",
    "\uff11",
    "9" * 40,
    "x" * 300,
]
# argv cannot hold NUL
safe_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
text_value = st.one_of(st.sampled_from(WEIRD_TEXT), safe_text)
small_int = st.integers(-3, 4)
huge_ints = st.sampled_from([2**31, 2**63, -(2**63), 10**30, 10**6])
int_text = st.one_of(
    small_int.map(str),
    huge_ints.map(str),
    st.sampled_from(
        ["", "abc", "1.5", "1e3", "0x10", " 3", "\u00b2", "\u0661", "\uff13", "+2", "1_000", "--1"]
    ),
)
float_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0.0", "0", "1", "0.5", "abc", "", "1,5"]),
)

# options whose large *valid* values ask for long work (legitimately): drawn small or invalid only
CHEAP_INTS = {
    "num_samples",
    "batches",
    "repeats",
    "max_repeats",
    "batch_size",
    "threads",
    "max_documents",
    "max_boards",
    "length",
    "seq_len",
}
cheap_int_text = st.one_of(
    small_int.map(str),
    st.sampled_from(["0", "-1", "-(2**63)", str(-(2**63)), "abc", "", "1.5", "\u00b2", "nan"]),
)

STR_POOLS = {  # known-good names next to garbage, per option
    "sampler": ["ancestral", "cached", "confidence", "semi_ar", "bogus", ""],
    "policy": ["fixed", "schedule", "converge", "per_token", "warm", "bogus"],
    "sampler_opt": [
        "order=margin",
        "order=bogus",
        "threshold=0.9",
        "threshold=nan",
        "threshold=-1",
        "cache=dual",
        "cache=prefix",
        "cache=delayed",
        "cache=loops",
        "cache=bogus",
        "refresh=2",
        "refresh=-1",
        "delay=1",
        "delay=[1]",
        "bogus=1",
        "x",
        "=1",
        "order",
        "order={a: 1}",
        "threshold=1e999",
    ],
    "policy_opt": [
        "threshold=0.05",
        "threshold=-1",
        "threshold=nan",
        "criterion=kl",
        "criterion=bogus",
        "s_max=2",
        "s_max=0",
        "s_max=-3",
        "s_max=[1, 2]",
        "s_max=1e999",
        "s_max=99999999999999999999",
        "loops=2",
        "loops=0",
        "loops=x",
        "schedule=[1, 2]",
        "bogus=1",
        "x",
        "=",
        "loops=true",
    ],
    "loops": [
        "1",
        "2",
        "3",
        "1,2",
        "0",
        "-1",
        "a",
        "1,,2",
        "",
        "99999999999999999999",
        "4097",
        "1.5",
        "\u00b2",
        "\uff12",
    ],
    "metric": [
        "nelbo",
        "zero-shot",
        "gen-ppl",
        "sudoku",
        "exact-match",
        "ppl",
        "bits_per_byte",
        "gen_ppl",
        "entropy",
        "bogus",
        "",
    ],
    "device": ["cpu", "auto", "cuda", "cuda:7", "mps", "tpu", "", "cpu:0"],
    "precision": ["fp32", "bf16", "fp16", ""],
    "orders": [
        "margin",
        "probability",
        "random",
        "margin,probability,random",
        "margin,,",
        "bogus",
        "",
    ],
    "text_field": ["text", "prompt", "", "\u00fc"],
    "group_by": ["depth", "size", "prompt", "", "bogus"],
    "evaluator": [
        "{RUN}",
        "loopmdm:{RUN}",
        "gpt2",
        "hf:nope/nope",
        "{T}/keep.txt",
        "{T}/missing",
        "",
    ],
    "data": [
        "{CORPUS}",
        "{T}",
        "{T}/rows.jsonl",
        "{T}/puzzles.csv",
        "{T}/keep.txt",
        "{T}/missing",
        "hf:nope/nope",
        "hf:",
        "generate",
        "stdlib",
        "2024",
        "on",
        "corpus #v2",
        "",
    ],
    "steps": ["0", "1", "2", "-1", "a", "1,2", "99999999999999999999", ""],
    "preset": ["tiny", "answers", "sudoku", "paper", "tiny-baseline", "bogus", ""],
    "objective": ["mdm", "ar", "bogus", ""],
    "family": ["vars", "prefix", "bert", "roberta", "modernbert", "dream", "bogus", ""],
    "mode": ["query", "trace", "bogus", ""],
    "kind": ["hops", "arith", "sum", "parity", "bogus", ""],
    "train": ["0", "1", "2", "-1", "abc", "", " 2 ", "\u00b2", "\u0661", "1e3", "+1"],
    "train_levels": ["0", "0,1", "0..2", "2..0", "a", ",", "", "0..", "..2", "\u00b2", "1,1", "-1"],
    "statements": ["8:26", "3:3", "12", "26:8", "a:b", ":", "", "0:0", "\u00b2:3", "-1:2"],
    "literals": ["1", "6", "10", "0", "11", "-1", "abc", "", "\u00b2"],
    "seed": ["0", "1", "-1", "abc", "", str(2**64), str(2**70), "\u00b2", "\u0661"],
    "loop_layers": [
        "1:3",
        "0:4",
        "1:2",
        "0:0",
        "3:1",
        "a:b",
        "1",
        "-1:2",
        "1:99999999999999999999",
        "",
        ":",
        "\uff11:\uff13",
        "\u00b2:3",
        "0:5",
        "1:3:5",
    ],
    "tokenizer": ["{CKPT}/tokenizer.json", "{T}/keep.txt", "gpt2", "{T}/missing", ""],
    "source": [
        "{RUN}",
        "{CKPT}",
        "{T}",
        "{T}/keep.txt",
        "{T}/missing",
        "bert-base-uncased",
        "hf:x",
        "",
    ],
    "template": [
        "x [MASK:3] y",
        "[MASK]",
        "[MASK:0]",
        "[MASK:-1]",
        "[MASK:99999999999]",
        "[MASK:",
        "no mask",
        "[MASK:20] [MASK:20]",
        "def \udcff [MASK:2]",
        "",
    ],
    "prompt": ["def f(x):", "", "\u00fc" * 50, "x" * 200, "def \udcff", "<mask>", "[MASK:3]"],
}
STR_POOLS["val"] = STR_POOLS["test"] = STR_POOLS["train"]
STR_POOLS["test_levels"] = STR_POOLS["train_levels"]

SET_KEYS = [
    f"{s.name}.{f.name}"
    for s in dataclasses.fields(RunConfig)
    for f in dataclasses.fields(getattr(RunConfig(), s.name))
]
YAMLISH = [
    "1",
    "0",
    "-1",
    "2",
    "1.5",
    "[1, 2]",
    "{a: 1}",
    ".nan",
    ".inf",
    "-.inf",
    "null",
    "~",
    "yes",
    "no",
    "on",
    "'quoted'",
    '"dq"',
    "!!python/object/apply:os.system ['true']",
    "&a [*a]",
    "1e999",
    "0x1F",
    "2024-01-01",
    "!!binary aGk=",
    "!!set {a}",
    "[",
    "{",
    ": x",
    "a: b",
    "- x",
    "\u00fc",
    "cpu",
    "fp32",
    "bf16",
    "mdm",
    "ar",
    "uniform",
    "fixed",
    "skip",
    "char",
    "bpe",
    "",
    "   ",
    "99999999999999999999",
    str(2**63),
]
set_item = st.one_of(
    st.tuples(
        st.sampled_from(
            SET_KEYS + ["model", "bogus.key", "train.bogus", "a.b.c", "model.d_model.x"]
        ),
        st.one_of(st.sampled_from(YAMLISH), safe_text),
    ).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.sampled_from(["noequals", "=1", ".=1", "model.=1", "train..lr=1", " = "]),
)
STR_POOLS["set_"] = None  # drawn from set_item


plausible_int = st.integers(0, 4).map(str)
plausible_float = st.sampled_from(["0", "0.5", "0.9", "1", "1.0", "2"])


def value_strategy(command: str, opt: Opt):
    """Values of one option: two thirds plausible (a known name, a small number, a path of the scratch tree),
    one third anything (garbage text, huge or negative numbers, nan, paths that cannot be)."""
    key = (command, opt.name)
    if opt.name == "set_":
        return set_item
    if key in WRITES:
        return st.sampled_from(OUT_PATHS)
    if opt.kind == "path":
        return st.sampled_from(PATHS)
    if opt.kind == "int":
        return st.one_of(
            plausible_int, plausible_int, cheap_int_text if opt.name in CHEAP_INTS else int_text
        )
    if opt.kind == "float":
        return st.one_of(plausible_float, plausible_float, float_text)
    pool = STR_POOLS.get(opt.name)
    return (
        st.one_of(st.sampled_from(pool), st.sampled_from(pool), text_value) if pool else text_value
    )


@st.composite
def option_args(draw, command: str, skip=()):
    """A random subset of ``command``'s options (arguments too), each with a random value, in random order."""
    opts = [o for o in OPTIONS[command] if o.name not in skip]
    chosen = draw(st.lists(st.sampled_from(opts), max_size=5, unique_by=lambda o: o.name))
    argv = []
    for o in chosen:
        if o.kind == "flag":
            argv.append(draw(st.sampled_from(o.flags)))
            continue
        values = draw(
            st.lists(value_strategy(command, o), min_size=1, max_size=3 if o.multiple else 1)
        )
        for v in values:
            argv += [v] if not o.flags else [draw(st.sampled_from(o.flags)), v]
    return argv


TINY_SETS = [
    "model.vocab_size=320",
    "model.max_seq_len=32",
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=4",
    "model.n_h=1",
    "model.n_m=2",
    "model.n_o=1",
    "model.cond_dim=16",
    "model.mlp_ratio=4.0",
    "diffusion.s_max=2",
    "diffusion.s_fixed=1",
    "diffusion.s_mean=2.0",
    "train.batch_size=4",
    "train.grad_accum=1",
    "train.eval_every=1000",
    "train.eval_batches=1",
    "train.save_every=1000",
    "train.device=cpu",
    "train.precision=fp32",
    "train.threads=1",
    "train.compile=false",
    "train.fsdp=false",
    "data.val_fraction=0.2",
    "data.sudoku.n_train=4",
    "data.sudoku.n_val=2",
    "data.sudoku.n_test=2",
    "data.max_train_bytes=20000",
    "data.cache_dir={CACHE}",
]


@st.composite
def cli_argv(draw, command: str):
    """``(argv, fuzz_json)``: the command, a base that reaches real work, random options (a later value of a
    single option replaces the base's), and for train the caps that keep it to one step of a tiny model."""
    # the content of {T}/fuzz.json (a sweep file to plot, a config to read, ...)
    fuzz_json = draw(sweepish)
    if command == "sample":
        argv = [
            "sample",
            "--checkpoint",
            "{RUN}",
            "--steps",
            "2",
            "--num-samples",
            "1",
            *draw(option_args(command)),
        ]
    elif command == "eval":
        argv = [
            "eval",
            "--checkpoint",
            "{RUN}",
            "--batches",
            "1",
            "--rel-stderr",
            "0",
            "--max-repeats",
            "1",
            "--num-samples",
            "1",
            "--max-boards",
            "2",
            "--max-documents",
            "4",
            "--threads",
            "1",
            *draw(option_args(command)),
        ]
    elif command == "train":
        argv = [
            "train",
            "--out",
            "{T}/run_out",
            "--no-progress",
            *draw(option_args(command, skip={"max_steps"})),
        ]
        if "--data" not in argv:
            argv += ["--data", "{CORPUS}"]
        for item in TINY_SETS:
            argv += ["--set", item]
        argv += ["--max-steps", "1"]
    elif command == "task make":
        family = draw(
            st.one_of(
                st.sampled_from(["vars", "prefix"]),
                st.sampled_from(["vars", "prefix"]),
                st.sampled_from(["VARS", "bogus", ""]),
                text_value,
            )
        )
        argv = [
            "task",
            "make",
            family,
            "--out",
            "{T}/task",
            "--train",
            "2",
            "--val",
            "1",
            "--test",
            "1",
            *draw(option_args(command, skip={"family"})),
        ]
    elif command == "plot":
        sweeps = draw(
            st.lists(
                st.sampled_from(
                    [
                        "{T}/sweep.json",
                        "{T}/fuzz.json",
                        "{T}/fuzz.json",
                        "{T}/bad.json",
                        "{T}/keep.txt",
                        "{T}/missing.json",
                        "{T}",
                        "{RUN}",
                    ]
                ),
                min_size=1,
                max_size=3,
            )
        )
        argv = [
            "plot",
            *sweeps,
            "--out",
            "{T}/plot.png",
            *draw(option_args(command, skip={"sweeps"})),
        ]
    elif command == "export":
        argv = [
            "export",
            "--checkpoint",
            "{RUN}",
            "--out",
            "{T}/hf_out",
            *draw(option_args(command)),
        ]
    elif command == "import":
        argv = ["import", "--hf", "{HF}", "--out", "{T}/imported", *draw(option_args(command))]
    elif command == "loopify":
        argv = [
            "loopify",
            "--from",
            "{RUN}",
            "--loop-layers",
            "1:3",
            "--out",
            "{T}/loopified",
            *draw(option_args(command)),
        ]
    else:
        raise AssertionError(command)
    return argv, fuzz_json


# the content of {T}/fuzz.json: sweep-shaped JSON with random holes, or any JSON, or broken bytes
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.sampled_from([1e308, -1e308, 2**70, -1, 0]),
    st.text(max_size=8),
    st.sampled_from(["nelbo", "ppl", "gen_ppl", "entropy", "bits_per_byte"]),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
result_row = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "loops": st.one_of(st.integers(-2, 5), json_scalar),
            "nelbo": json_value,
            "ppl": json_value,
            "gen_ppl": json_value,
            "entropy": json_value,
            "bits_per_byte": json_value,
            "flops_per_token": json_value,
            "flops_per_sample": json_value,
            "stderr": json_value,
            "network_calls": json_value,
        },
    ),
    json_value,
)
sweepish = st.one_of(
    st.fixed_dictionaries(
        {"results": st.lists(result_row, max_size=4)},
        optional={
            "primary": json_value,
            "metric": json_value,
            "label": json_value,
            "checkpoint": json_value,
        },
    ).map(lambda d: json.dumps(d).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"\xff\xfe{", b"[" * 2000, b'{"results": [' + b"[" * 2000, b"\x00\x01"]),
)


@pytest.fixture(scope="module")
def hf_folder(tiny_run, tmp_path_factory):
    """An exported transformers folder of tiny_run (``import --hf``), or a missing path without transformers."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return tmp_path_factory.mktemp("no_hf") / "missing"
    from loopmdm.hf.export import export_hf

    return export_hf(tiny_run, tmp_path_factory.mktemp("hf") / "hf")


@pytest.fixture(scope="module")
def cli_env(tiny_run, tiny_corpus, hf_folder, run_hashes, tmp_path_factory):
    """The placeholders' values; imports that the first example would otherwise pay inside its time limit."""
    from loopmdm.checkpoint import resolve_checkpoint

    for module in (
        "matplotlib.pyplot",
        "transformers",
        "loopmdm.hf.export",
        "loopmdm.loopify",
        "loopmdm.tasks",
    ):
        with contextlib.suppress(ImportError):
            __import__(module)
    return {
        "{RUN}": str(tiny_run),
        "{CKPT}": str(resolve_checkpoint(tiny_run)),
        "{CORPUS}": str(tiny_corpus),
        "{HF}": str(hf_folder),
        "{CACHE}": str(tmp_path_factory.mktemp("fuzz_cache")),
    }


def make_scratch(root: Path, fuzz_json: bytes) -> None:
    for rel, data in SCRATCH_FILES.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for rel in SCRATCH_DIRS:
        (root / rel).mkdir()
    (root / "fuzz.json").write_bytes(fuzz_json)


def resolve(argv: list[str], env: dict, root: Path) -> list[str]:
    out = []
    for a in argv:
        for k, v in {**env, "{T}": str(root)}.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def written_files(command: str, argv: list[str]) -> frozenset:
    """The files the command may replace: the values of its file-output options (--plot, --trajectory, ...)."""
    flags = {f for o in OPTIONS[command] if (command, o.name) in FILE_OUTPUTS for f in o.flags}
    found = set()
    for flag, value in itertools.pairwise(argv):
        if flag in flags:
            p = Path(value).resolve()
            found |= {
                p,
                p.with_name(f"{p.stem}.S1{p.suffix}"),
                p.with_name(f"{p.stem}.S2{p.suffix}"),
                p.with_name(f"{p.stem}.S3{p.suffix}"),
            }
    return frozenset(found)


def run_cli_example(
    command: str,
    argv: list[str],
    fuzz_json: bytes,
    env: dict,
    base: Path,
    capsys,
    tiny_run,
    run_hashes,
) -> int:
    import torch

    with scratch(base) as root:
        make_scratch(root, fuzz_json)
        before = hashes(root)
        before.pop("fuzz.json")
        real = resolve(argv, env, root)
        threads = torch.get_num_threads()
        try:
            code, _, _ = check_cli(real, capsys)
        finally:
            torch.set_num_threads(threads)  # --threads changes it for the whole process
        assert_unchanged(root, before, shown(real), written_files(command, real))
    assert_unchanged(tiny_run, run_hashes, f"{shown(real)} (the tiny run)")
    return code


# examples per command: sample / eval / train do real work on a tiny model (train: one step), the others stop
# early or write a small folder; about 30 s together on a busy 2-core machine
CLI_EXAMPLES = {
    "sample": 40,
    "eval": 30,
    "train": 15,
    "task make": 30,
    "plot": 40,
    "export": 12,
    "import": 12,
    "loopify": 20,
}


def test_the_fuzzed_commands_are_the_cli_commands():
    """The fuzzer follows the parser: every fuzzed command exists, every option's kind is known, and every
    command not fuzzed is named as such (a new subcommand must be added to one of the lists)."""
    assert set(FUZZED) <= set(TREE), sorted(set(FUZZED) - set(TREE))
    for name in FUZZED:
        for o in OPTIONS[name]:
            assert not o.kind.startswith("unknown"), (name, o)
    leftover = {
        n for n in TREE if n not in FUZZED and n.split()[0] not in (*NOT_FUZZED, "experiment")
    }
    assert not leftover, (
        f"new CLI commands to add to the fuzzer (FUZZED or NOT_FUZZED): {sorted(leftover)}"
    )


PLOT = ["plot", "{T}/fuzz.json", "--out", "{T}/plot.png"]
REGRESSIONS = {  # bugs this fuzzer found (tracebacks before the fix), replayed first in every run
    "plot": [  # loopmdm.viz.sweeps.load_sweep / plot_sweeps: sweep files nested too deeply or with bad rows
        (PLOT, b"[" * 2000),
        (PLOT, b'{"results": [null]}'),
        (PLOT, b'{"results": [{"loops": 0, "nelbo": []}]}'),
        (PLOT, b'{"results": [{"loops": 0, "nelbo": {"": null}}]}'),
        (PLOT, b'{"metric": null, "primary": {}, "results": [{"loops": 0, "nelbo": {"": 0}}]}'),
        (
            PLOT,
            (
                b'{"results": [{"loops": 1, "nelbo": 1e308, "flops_per_token": 1e308}, '
                b'{"loops": 1180591620717411303424, "nelbo": -1e308, "flops_per_token": -5}]}'
            ),
        ),
        (PLOT, b'{"results": [{"loops": 1, "nelbo": 2.0, "stderr": -1}]}'),
    ],
    "task make": [  # loopmdm.cli.task_cmd: "²".isdigit() is True but int("²") fails; "--1"
        (["task", "make", "vars", "--out", "{T}/task", "--train", "²"], b"{}"),
        (["task", "make", "vars", "--out", "{T}/task", "--test-levels", "²..3"], b"{}"),
        (["task", "make", "vars", "--out", "{T}/task", "--statements", "²:3"], b"{}"),
        (["task", "make", "prefix", "--out", "{T}/task", "--seed", "--1"], b"{}"),
    ],
    "sample": [  # loopmdm.model.fields.parse_int_list (--loops)
        (["sample", "--checkpoint", "{RUN}", "--steps", "2", "--loops", "²"], b"{}"),
        (["sample", "--checkpoint", "{RUN}", "--steps", "2", "--loops", "1,--1"], b"{}"),
    ],
    "eval": [(["eval", "--checkpoint", "{RUN}", "--batches", "1", "--loops", "³"], b"{}")],
}


def _cli_test(command: str):
    @fuzz(CLI_EXAMPLES[command])
    @given(drawn=cli_argv(command))
    def test(drawn, cli_env, scratch_base, capsys, tiny_run, run_hashes):
        argv, fuzz_json = drawn
        run_cli_example(
            command, argv, fuzz_json, cli_env, scratch_base, capsys, tiny_run, run_hashes
        )

    for drawn in REGRESSIONS.get(command, ()):
        test = example(drawn=drawn)(test)

    test.__name__ = f"test_cli_{command.replace(' ', '_')}"
    return test


test_cli_sample = _cli_test("sample")
test_cli_eval = _cli_test("eval")
test_cli_train = _cli_test("train")
test_cli_task_make = _cli_test("task make")
test_cli_plot = _cli_test("plot")
test_cli_export = _cli_test("export")
test_cli_import = _cli_test("import")
test_cli_loopify = _cli_test("loopify")


# =========================================================================== 2. config dicts and YAML files


def _leaf_fields(obj, prefix=""):
    """``{"model.d_model": default, "data.sudoku.givens": default, ...}`` of every config field."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f"{prefix}{f.name}"] = value  # the section itself: a wrong type here is a case too
            out.update(_leaf_fields(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


CONFIG_FIELDS = _leaf_fields(RunConfig())
NAMES = [
    "mdm",
    "ar",
    "loglinear",
    "cosine",
    "linear",
    "uniform",
    "fixed",
    "balanced",
    "lognormal_poisson",
    "flop_proportional",
    "elbo",
    "none",
    "all",
    "random",
    "bell",
    "ppots",
    "exact",
    "paper",
    "text",
    "sudoku",
    "answers",
    "digits",
    "char",
    "bpe",
    "skip",
    "error",
    "fp32",
    "bf16",
    "auto",
    "cpu",
    "cuda",
    "cuda:3",
    "mps",
    "ema",
    "raw",
    "adaln",
    "loopmdm",
    "bert",
    "dream",
    "modernbert",
    "roberta",
    "stdlib",
    "generate",
    "hf:x",
    "hf:",
    "gpt2",
    "",
]
date_value = st.dates()
wild_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(-3, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(NAMES),
    st.sampled_from(
        [
            "1",
            "1e3",
            "3e-4",
            "nan",
            "inf",
            "-1",
            "0x10",
            "a\x00b",
            " 2 ",
            "1_000",
            "99999999999999999999",
        ]
    ),
    st.binary(max_size=4),
    date_value,
    st.frozensets(st.integers(0, 3), max_size=2),
)
wild = st.recursive(
    wild_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(0, 3)), inner, max_size=3),
    ),
    max_leaves=6,
)


def typed_value(default):
    """Mostly values of the field's own type (in and out of range), sometimes anything."""
    if isinstance(default, bool):
        same = st.booleans()
    elif isinstance(default, int):
        same = st.one_of(
            st.integers(-3, 9), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 4096, 4097])
        )
    elif isinstance(default, float):
        same = st.one_of(
            st.floats(-2, 2), st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 2)
        )
    elif isinstance(default, str):
        same = st.one_of(st.sampled_from(NAMES), st.text(max_size=8))
    elif isinstance(default, tuple):
        same = st.lists(
            st.one_of(st.integers(-1, 100), st.floats(allow_nan=True), st.text(max_size=3)),
            max_size=3,
        )
    elif isinstance(default, dict):
        same = st.dictionaries(
            st.sampled_from(["std", "mean", "w", "a", "b", "model_type", "x"]), wild, max_size=3
        )
    elif default is None:
        same = st.one_of(st.none(), st.integers(-2, 9), st.floats(-2, 2), st.text(max_size=8))
    else:  # a section
        same = st.dictionaries(st.text(max_size=6), wild_scalar, max_size=2)
    return st.one_of(same, same, wild)


@st.composite
def config_dicts(draw):
    """A nested dict of random real keys (any depth), some unknown keys and non-string keys, random values."""
    d: dict = {}
    paths = draw(
        st.lists(
            st.sampled_from(
                sorted(CONFIG_FIELDS)
                + ["bogus", "model.bogus", "data.sudoku.bogus", "train.lr.x", ""]
            ),
            max_size=7,
            unique=True,
        )
    )
    for path in paths:
        *parents, leaf = path.split(".")
        node = d
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = draw(typed_value(CONFIG_FIELDS.get(path)))
    if draw(st.integers(0, 9)) == 0:
        # YAML allows non-string keys
        d[draw(st.sampled_from([1, None, 2.5, True]))] = draw(wild_scalar)
    return d


@fuzz(300)
@given(config_dicts())
@example({"diffusion": {"t_sampler": "bell", "t_sampler_params": {"std": "x"}}})
@example({"model": {"source_config": {"a": [float("nan")]}}, "train": {"betas": [0.9]}})
@example({"data": {"sudoku": {"givens": [17, "80"]}}, 1: 2})
def test_config_from_any_dict(d):
    """``RunConfig.from_dict(d).validate()`` raises only ``ConfigError`` (or gives a config that round-trips)."""
    import copy

    cfg = library_call(
        lambda: RunConfig.from_dict(copy.deepcopy(d)).validate(),
        f"RunConfig.from_dict({d!r})",
        allowed=(ConfigError,),
    )
    if cfg is not None:
        assert RunConfig.from_dict(copy.deepcopy(cfg.to_dict())).validate() == cfg


YAML_SNIPPETS = [
    b"",
    b"\n",
    b"~\n",
    b"[]\n",
    b"- 1\n",
    b"just text\n",
    b"42\n",
    b"model: 3\n",
    b"model:\n  d_model: [\n",
    b"model: {d_model: &a 64, n_heads: *a}\n",
    b"train: !!python/object/apply:os.system ['touch /tmp/loopmdm-fuzz-yaml-ran-code']\n",
    b"train:\n  lr: !!binary aGk=\n",
    b"train:\n  seed: !!set {1, 2}\n",
    b"train:\n  lr: 2024-01-01\n",
    b"train:\n  lr: 1\n  lr: 2\n",
    b"train:\n\tlr: 1\n",
    b"\xef\xbb\xbftrain:\n  lr: 0.01\n",
    b"\xff\xfetrain",
    b"train:\n  device: \x00cpu\n",
    b"? [a, b]\n: 1\n",
    b"model:\n  " + b"[" * 3000 + b"\n",
    b"&a [*a]\n",
    b"a: &a {b: *a}\n",
    b"{1: 2}\n",
    b"model: {1: 2}\n",
    b"diffusion:\n  t_sampler_params: {1: 2}\n",
    b"train:\n  lr: 1e999\n",
    b"train:\n  max_steps: 0x10\n",
    b"train:\n  betas: [.nan, .inf]\n",
    b"%YAML 1.1\n---\ntrain: {lr: 0.5}\n...\n---\nmodel: {}\n",
    b"data:\n  source: !!str 2024\n",
    b"model: !!map {d_model: 8}\n",
    b"!<tag:yaml.org,2002:python/name:os.system> x\n",
]


@st.composite
def yaml_files(draw):
    """A YAML config file's bytes: a random config dict dumped, a snippet, or a dump cut or spliced at random."""
    import yaml

    kind = draw(st.integers(0, 3))
    if kind == 3:
        return draw(st.sampled_from(YAML_SNIPPETS))
    d = draw(config_dicts())
    try:
        text = yaml.safe_dump(d, allow_unicode=True).encode()
    except yaml.YAMLError:
        text = repr(d).encode()
    if kind == 1:
        text = text[: draw(st.integers(0, len(text)))]
    elif kind == 2:
        text = draw(st.sampled_from(YAML_SNIPPETS)) + text
    return text


@fuzz(60)
@given(content=yaml_files())
def test_config_yaml_files(content, fake_train, scratch_base, capsys):
    """``load_config(preset, FILE)`` raises only ``ConfigError``; ``train --config FILE`` exits 0 or 2 with one
    line; the file is read, never changed; the YAML tags that construct objects never run."""
    with scratch(scratch_base) as root:
        path = root / "cfg.yaml"
        path.write_bytes(content)
        library_call(
            lambda: load_config("tiny", path),
            f"load_config('tiny', {content[:200]!r})",
            allowed=(ConfigError,),
        )
        check_cli(
            [
                "train",
                "--out",
                str(root / "out"),
                "--config",
                str(path),
                "--set",
                "train.device=cpu",
            ],
            capsys,
        )
        assert path.read_bytes() == content
        assert not (root / "out").exists()  # training was replaced: nothing may have been written
    assert not Path("/tmp/loopmdm-fuzz-yaml-ran-code").exists()


# =========================================================================== 3. damaged checkpoints

DTYPES = [
    "F64",
    "F32",
    "F16",
    "BF16",
    "I64",
    "I32",
    "I16",
    "I8",
    "U8",
    "BOOL",
    "F8_E4M3",
    "F8_E5M2",
    "U64",
    "Q4",
    "",
    7,
    None,
]


def read_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_safetensors(path: Path, header: dict, body: bytes, length: int | None = None) -> None:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h) if length is None else length) + h + body)


@st.composite
def corruptions(draw):
    """A list of damage operations: (what, file, parameters); applied in order by ``damage``."""
    files = [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "index.json",
        "trainer_state.json",
    ]
    op = st.one_of(
        st.tuples(st.just("truncate"), st.sampled_from(files), st.floats(0, 1)),
        st.tuples(
            st.just("flip"),
            st.sampled_from(files),
            st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=4),
        ),
        st.tuples(st.just("dtype"), st.integers(0, 200), st.sampled_from(DTYPES)),
        st.tuples(
            st.just("shape"),
            st.integers(0, 200),
            st.one_of(
                st.lists(st.integers(-1, 2**40), max_size=3),
                st.sampled_from([[0], [2**62, 2**62], "x", None]),
            ),
        ),
        st.tuples(
            st.just("offsets"),
            st.integers(0, 200),
            st.one_of(
                st.lists(st.integers(-1, 2**40), max_size=3), st.sampled_from([[0, 0], [8, 4], "x"])
            ),
        ),
        st.tuples(st.just("drop_tensor"), st.integers(0, 200), st.none()),
        st.tuples(
            st.just("rename_tensor"),
            st.integers(0, 200),
            st.sampled_from(["x", "", "embed.weight", "\u00fc"]),
        ),
        st.tuples(
            st.just("metadata"),
            st.none(),
            st.one_of(st.dictionaries(st.text(max_size=3), json_scalar, max_size=2), json_scalar),
        ),
        st.tuples(
            st.just("header_length"), st.none(), st.sampled_from([0, 1, 7, 2**20, 2**63, 2**64 - 1])
        ),
        st.tuples(st.just("delete"), st.sampled_from(files + ["checkpoints/latest"]), st.none()),
        st.tuples(
            st.just("replace"),
            st.sampled_from(files),
            st.one_of(
                json_value.map(lambda v: json.dumps(v).encode()),
                st.binary(max_size=40),
                st.sampled_from(
                    [b"", b"\x80\x04K\x01.", b"PK\x03\x04", b"{" * 3000, b"\xff\xfe{}", b"null"]
                ),
            ),
        ),
        st.tuples(
            st.just("config_field"),
            st.sampled_from(
                [
                    "model.vocab_size",
                    "model.d_model",
                    "model.n_layers",
                    "model.n_heads",
                    "model.max_seq_len",
                    "model.backbone",
                    "model.tie_embeddings",
                    "diffusion.s_max",
                    "model.time_conditioning",
                    "model.causal",
                ]
            ),
            st.one_of(st.integers(-1, 400), st.sampled_from([True, "x", None, 2**40, 1.5])),
        ),
        st.tuples(
            st.just("tokenizer_field"),
            st.sampled_from(
                [
                    "model",
                    "model.vocab",
                    "added_tokens",
                    "decoder",
                    "pre_tokenizer",
                    "normalizer",
                    "model.type",
                ]
            ),
            json_value,
        ),
    )
    # (damage, fix index.json's checksums)
    return draw(st.lists(op, min_size=1, max_size=3)), draw(st.booleans())


def damage(run: Path, ops, fix_index: bool) -> None:
    from loopmdm.checkpoint import resolve_checkpoint

    ck = resolve_checkpoint(run)
    weights = ck / "model.safetensors"
    for what, target, arg in ops:
        if what in (
            "dtype",
            "shape",
            "offsets",
            "drop_tensor",
            "rename_tensor",
            "metadata",
            "header_length",
        ):
            if not weights.is_file():
                continue
            try:
                header, body = read_safetensors(weights)
            except (ValueError, struct.error, UnicodeDecodeError, RecursionError):
                continue  # already damaged beyond a header
            if not isinstance(header, dict):
                continue
            names = sorted(k for k in header if k != "__metadata__")
            name = names[target % len(names)] if names and isinstance(target, int) else None
            if what == "dtype" and name and isinstance(header[name], dict):
                header[name]["dtype"] = arg
            elif what == "shape" and name and isinstance(header[name], dict):
                header[name]["shape"] = arg
            elif what == "offsets" and name and isinstance(header[name], dict):
                header[name]["data_offsets"] = arg
            elif what == "drop_tensor" and name:
                del header[name]
            elif what == "rename_tensor" and name:
                header[arg] = header.pop(name)
            elif what == "metadata":
                header["__metadata__"] = arg
            write_safetensors(
                weights, header, body, length=arg if what == "header_length" else None
            )
            continue
        p = run / target if target.startswith("checkpoints/") else ck / target
        if what == "delete":
            if p.is_file():
                p.unlink()
        elif what in ("truncate", "flip") and p.is_file():
            raw = bytearray(p.read_bytes())
            if what == "truncate":
                raw = raw[: int(len(raw) * arg)]
            else:
                for pos, x in arg:
                    if raw:
                        raw[min(int(pos * len(raw)), len(raw) - 1)] ^= x
            p.write_bytes(bytes(raw))
        elif what == "replace":
            p.write_bytes(arg)
        elif what in ("config_field", "tokenizer_field") and p.parent.is_dir():
            name = "config.json" if what == "config_field" else "tokenizer.json"
            p = ck / name
            try:
                obj = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError, RecursionError):
                continue
            node = obj
            *parents, leaf = target.split(".")
            for k in parents:
                node = node.get(k) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node[leaf] = arg
                p.write_text(json.dumps(obj), encoding="utf-8")
    index_path = ck / "index.json"
    # the damage passes the integrity check: the parsers must refuse it
    if fix_index and index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        if isinstance(index, dict) and isinstance(index.get("files"), dict):
            for name in list(index["files"]):
                f = ck / str(name)
                if f.is_file() and "/" not in str(name):
                    index["files"][name] = sha(f)
                    if isinstance(index.get("sizes"), dict):
                        index["sizes"][name] = f.stat().st_size
            index_path.write_text(json.dumps(index), encoding="utf-8")


@fuzz(40)
@given(drawn=corruptions())
@example(drawn=([("dtype", 0, "I32")], True))  # same byte size, another type: loads unless refused
@example(drawn=([("dtype", 3, "F16")], True))
@example(drawn=([("replace", "tokenizer.json", b'{"model": {}}')], True))
def test_damaged_checkpoint(drawn, tiny_run, run_hashes, scratch_base, capsys):
    """``sample`` and ``eval`` of a damaged copy of tiny_run: exit 0 or 2 with one line; the copy is only read,
    and the original stays byte-identical."""
    ops, fix_index = drawn
    with scratch(scratch_base) as root:
        run = root / "run"
        shutil.copytree(tiny_run, run)
        damage(run, ops, fix_index)
        damaged = hashes(run)
        for argv in (
            ["sample", "--checkpoint", str(run), "--steps", "2", "--num-samples", "1"],
            [
                "eval",
                "--checkpoint",
                str(run),
                "--batches",
                "1",
                "--rel-stderr",
                "0",
                "--max-repeats",
                "1",
                "--threads",
                "1",
            ],
        ):
            check_cli(argv, capsys)
            assert_unchanged(run, damaged, shown(argv) + " (the damaged copy)")
    assert_unchanged(tiny_run, run_hashes, "the damaged-checkpoint examples (the tiny run)")


def test_integer_weights_are_refused(tiny_run, scratch_base):
    """Found by this fuzzer: a weights file whose float32 tensor is re-typed as int32 (same size, checksums fixed)
    loaded, cast silently, and sampled garbage (NELBO 1.8e10); now ``load_model`` refuses it in one line."""
    from loopmdm.checkpoint import load_model
    from loopmdm.errors import CheckpointError

    with scratch(scratch_base) as root:
        run = root / "run"
        shutil.copytree(tiny_run, run)
        damage(run, [("dtype", 0, "I32")], fix_index=True)
        with pytest.raises(CheckpointError, match="not as floating-point weights") as e:
            load_model(run)
        assert "\n" not in str(e.value)


# =========================================================================== 4. data rows

answer_row = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "prompt": st.one_of(st.text(max_size=12), json_scalar),
            "answer": st.one_of(st.text(max_size=6), json_scalar),
            "text": st.one_of(st.text(max_size=16), json_scalar),
            "targets": st.one_of(
                st.lists(
                    st.one_of(
                        st.lists(st.one_of(st.integers(-2, 20), json_scalar), max_size=3),
                        json_scalar,
                    ),
                    max_size=4,
                ),
                json_scalar,
            ),
            "depth": st.one_of(st.integers(-1, 5), json_scalar),
        },
    ),
    json_value,
)
raw_line = st.one_of(
    answer_row.map(lambda r: json.dumps(r).encode()),
    answer_row.map(lambda r: json.dumps(r).encode()),
    st.sampled_from(
        [
            b"",
            b"   ",
            b"{",
            b"not json",
            b"[" * 3000,
            b'{"prompt": "a", "answer": "\xff"}',
            b"\xef\xbb\xbf{}",
            b"\x00",
            b'{"prompt": "a", "answer": "b"}' + b" " * 100000,
            b'{"answer": "' + b"x" * 200000 + b'"}',
            b'{"prompt": "\\ud800", "answer": "b"}',
            b'{"text": "abc", "targets": [[0, 1], [0, 1]]}',
            b'{"text": "abc", "targets": [[true, 2]]}',
            b'{"text": "abc", "targets": [[1, 1e400]]}',
            b'{"prompt": "a", "answer": "b"}\r',
        ]
    ),
    st.binary(max_size=20),
)
GOOD_ROWS = [
    b'{"prompt": "k=3;q=1?k", "answer": "3", "depth": 1}',
    b'{"prompt": "a=2?a", "answer": "2", "depth": 0}',
    b'{"text": "x=1:1;y=2:2", "targets": [[4, 5], [10, 11]]}',
    b'{"prompt": "z=5;w=z?w", "answer": "5"}',
]


@st.composite
def jsonl_bytes(draw):
    lines = draw(st.lists(st.one_of(raw_line, st.sampled_from(GOOD_ROWS)), max_size=8))
    sep = draw(st.sampled_from([b"\n", b"\r\n", b"\n\n"]))
    return draw(st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe"])) + sep.join(lines)


@fuzz(100)
@given(
    content=jsonl_bytes(),
    seq_len=st.sampled_from([1, 8, 32]),
    val_fraction=st.sampled_from([0.2, 0.5]),
    tokenizer=st.sampled_from(["char", "bpe"]),
)
def test_answer_rows(content, seq_len, val_fraction, tokenizer, scratch_base):
    """``read_rows`` and ``prepare_data`` (format ``answers``) of random JSONL: ``DataError`` / ``ConfigError`` or
    rows; a prepared row keeps its answer tokens inside the window."""
    from loopmdm.config.sections import AnswersDataConfig, DataConfig
    from loopmdm.data import prepare_data
    from loopmdm.data.answers import read_rows

    with scratch(scratch_base) as root:
        path = root / "rows.jsonl"
        path.write_bytes(content)
        rows = library_call(
            lambda: read_rows(path, AnswersDataConfig(), "text"),
            f"read_rows({content[:300]!r})",
            allowed=(DataError, ConfigError),
        )
        if rows is not None:
            assert rows and all(any(tgt and s for s, tgt in r.segments) for r in rows)
        cfg = DataConfig(
            source=str(path),
            format="answers",
            val_fraction=val_fraction,
            answers=AnswersDataConfig(tokenizer=tokenizer),
            cache_dir=str(root / "cache"),
        )
        cfg.validate()
        prepared = library_call(
            lambda: prepare_data(cfg, 300, seq_len, use_cache=False),
            f"prepare_data(answers, seq_len={seq_len}, {content[:300]!r})",
            allowed=(DataError, ConfigError),
        )
        if prepared is not None:
            assert prepared.train.shape[1] == seq_len and prepared.val.shape[1] == seq_len
        assert path.read_bytes() == content


PUZZLE_POOL = None


def puzzle_pool():
    global PUZZLE_POOL
    if PUZZLE_POOL is None:
        from loopmdm.data.sudoku import generate_puzzles

        PUZZLE_POOL = generate_puzzles(3, (30, 34), seed=0)
    return PUZZLE_POOL


grid_text = st.one_of(
    st.text(st.sampled_from("0123456789."), min_size=80, max_size=82),
    st.text(max_size=10),
    st.sampled_from(["", " " * 81, "1" * 81, "0" * 81, "\u0661" * 81, "\uff11" * 81]),
)


NASTY_CSV = [
    '"unclosed',
    "\x00,\x00",
    ",,,",
    "x",
    '"' + "1" * 200000,
    "\udcff",
    "1" * 81 + ',"' + "2" * 81,
    '"a""b",c',
]
NASTY_JSONL = [
    "{",
    "[" * 3000,
    '{"puzzle": ' * 3000,
    "null",
    '{"puzzle": 1}',
    "\udcff",
    "[]",
    '"x"',
    "1e999",
]


@st.composite
def puzzle_file(draw):
    """(file name, bytes): a CSV or JSONL puzzle file mixing valid pairs, broken grids and broken syntax, in a
    random order."""
    pool = puzzle_pool()
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    header = draw(
        st.sampled_from(
            [
                "quizzes,solutions",
                "puzzle,solution",
                "source,question,answer,rating",
                "Quizzes , Solutions",
                "a,b",
                "",
                "solutions,quizzes",
                '"quizzes,solutions"',
            ]
        )
    )
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 5))
        p = pool[draw(st.integers(0, len(pool) - 1))]
        if kind == 0:
            a, b = p.puzzle, p.solution
        elif kind == 1:
            a, b = p.puzzle.replace("0", "."), p.solution
        elif kind == 2:  # contradicts a given / breaks a rule
            a, b = p.puzzle, p.solution[::-1]
        elif kind == 3:
            a, b = draw(st.one_of(grid_text, json_scalar)), draw(st.one_of(grid_text, json_scalar))
        else:  # a line that is not a row at all
            lines.append(draw(st.sampled_from(NASTY_CSV if fmt == "csv" else NASTY_JSONL)))
            continue
        if fmt == "jsonl":
            lines.append(json.dumps({"puzzle": a, "solution": b}))
        elif header.startswith("source"):
            lines.append(f"x,{a},{b},1")
        else:
            lines.append(f"{a},{b}")
    lines = draw(st.permutations(lines))
    if fmt == "csv":
        lines = [header, *lines]
    text = "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))
    return f"puzzles.{fmt}", draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + text.encode(
        "utf-8", "surrogateescape"
    )


@fuzz(100)
@given(drawn=puzzle_file(), max_rows=st.sampled_from([None, 1, 2]))
# RecursionError in files._jsonl_rows before the fix
@example(drawn=("puzzles.jsonl", b"[" * 3000), max_rows=None)
def test_puzzle_files(drawn, max_rows, scratch_base):
    """``read_puzzles`` of random CSV / JSONL: ``DataError`` / ``ConfigError``, or valid pairs only."""
    from loopmdm.data.sudoku import read_puzzles
    from loopmdm.data.sudoku.files import row_problem

    name, content = drawn
    with scratch(scratch_base) as root:
        path = root / name
        path.write_bytes(content)
        report = library_call(
            lambda: read_puzzles(str(path), max_rows),
            f"read_puzzles({name}, {content[:300]!r})",
            allowed=(DataError, ConfigError),
        )
        if report is not None:
            assert report.pairs and all(
                row_problem(p.puzzle, p.solution) is None for p in report.pairs
            )
            assert max_rows is None or len(report.pairs) <= max_rows
        assert path.read_bytes() == content
