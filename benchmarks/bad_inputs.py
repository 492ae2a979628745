"""Try many distinct bad inputs through the CLI (a subprocess each) and the Python API; record what the user sees.

    python benchmarks/bad_inputs.py                     # writes docs/bad_inputs.md and benchmarks/results/bad_inputs.json
    python benchmarks/bad_inputs.py --only sample       # a subset (ids containing the text)

For every input it records the exit code, the line the user reads, whether a raw traceback leaked (a Python
traceback on stderr, or an API exception outside ``loopmdm.errors.LoopMDMError``), and whether any checkpoint
that was valid before the call was lost or damaged by it. The targets: 0 raw tracebacks, 0 lost checkpoints.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import pickle
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from loopmdm.fileio import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set",
    "model.vocab_size=320",
    "--set",
    "model.max_seq_len=32",
    "--set",
    "model.d_model=32",
    "--set",
    "model.n_heads=2",
    "--set",
    "model.cond_dim=16",
    "--set",
    "model.n_layers=4",
    "--set",
    "model.n_o=1",
    "--set",
    "diffusion.s_max=3",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.eval_every=50",
    "--set",
    "train.eval_batches=1",
    "--set",
    "train.precision=fp32",
    "--set",
    "train.device=cpu",
    "--set",
    "train.threads=1",
    "--set",
    "data.val_fraction=0.2",
    "--no-progress",
]


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    id: str
    area: str
    input: str
    how: str  # the command line or API call, with $W for the scratch folder
    exit: Optional[int]  # CLI exit code; None for API calls
    sees: str  # the line the user reads
    raw_traceback: bool
    one_line: bool
    expected: bool  # the message matched what this input should say
    lost_checkpoints: int
    seconds: float
    notes: list[str] = field(default_factory=list)


@dataclass
class Case:
    id: str
    area: str
    input: str
    expect: str  # regex the message must match
    # builds the inputs -> CLI args (after `loopmdm`)
    cli: Optional[Callable[["Ctx"], list[str]]] = None
    # builds the inputs -> the call to measure
    api: Optional[Callable[["Ctx"], Callable[[], object]]] = None
    call: str = ""  # how the API call reads, for the table
    env: Optional[dict] = None
    interrupt: Optional[int] = None  # send this signal once training has logged a step
    # extra checks (ctx, cli args) -> problems
    after: Optional[Callable[["Ctx", list[str]], list[str]]] = None
    # the CLI exit code this input must give (default: 2 for an error line)
    exit_code: Optional[int] = None


class Ctx:
    """The scratch folder: a tiny corpus, a trained tiny run, and helpers that build damaged copies."""

    def __init__(self, work: Path):
        self.w = work
        self.corpus = work / "corpus"
        self.good = work / "good"
        self.n = 0
        # run folders copied while building the current case (all watched)
        self.created: list[Path] = []

    def fresh(self, name: str) -> Path:
        self.n += 1
        p = self.w / f"{name}_{self.n}"
        p.mkdir(parents=True)
        return p

    def copy_run(self, name: str) -> Path:
        self.n += 1
        dst = self.w / f"{name}_{self.n}"
        shutil.copytree(self.good, dst)
        self.created.append(dst)
        return dst

    def ckpt(self, run: Path) -> Path:
        from loopmdm.checkpoint import resolve_checkpoint

        return resolve_checkpoint(run)

    def write(self, rel: str, data: bytes | str) -> Path:
        p = self.w / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p


class Payload:
    """Unpickling runs ``exec``, which creates a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def plant(folder: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint file and fix index.json's checksum too (as an attacker would)."""
    (folder / name).write_bytes(data)
    index = json.loads((folder / "index.json").read_text())
    index["files"][name] = hashlib.sha256(data).hexdigest()
    index.setdefault("sizes", {})[name] = len(data)
    (folder / "index.json").write_text(json.dumps(index))


def valid_checkpoints(run: Path) -> set[str]:
    from loopmdm.checkpoint import list_checkpoints, verify_checkpoint
    from loopmdm.errors import LoopMDMError

    ok = set()
    for folder in list_checkpoints(run / "checkpoints"):
        try:
            verify_checkpoint(folder)
            ok.add(str(folder))
        except LoopMDMError:
            pass
    return ok


# --------------------------------------------------------------------------- running one case


def cli_command(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from loopmdm.cli import main; main()", *args]


def user_line(stderr: str) -> str:
    """The line a user reads: our ``error: ...`` line, else the message inside typer's usage box, else the last
    non-empty line."""
    lines = [ln.strip(" │╭╮╰╯─\t") for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in lines:
        if ln.startswith("error:"):
            return ln
    box = [ln for ln in lines if not ln.startswith(("Usage:", "Try '", "Error"))]
    return box[-1] if box else (lines[-1] if lines else "")


@dataclass
class Prepared:
    case: Case
    args: list[str]
    thunk: Optional[Callable[[], object]]
    watched: list[Path]
    before: dict[str, set[str]]


def prepare(case: Case, ctx: Ctx) -> Prepared:
    """Build the case's inputs (sequentially: copies, damaged files) and snapshot the valid checkpoints of every
    run folder it touches (the reference run included)."""
    ctx.created = []
    args = case.cli(ctx) if case.cli is not None else []
    thunk = case.api(ctx) if case.api is not None else None
    watched = [ctx.good, *ctx.created]
    return Prepared(case, args, thunk, watched, {str(r): valid_checkpoints(r) for r in watched})


def execute(prep: Prepared, ctx: Ctx, env: dict) -> Result:
    case, args = prep.case, prep.args
    t0 = time.perf_counter()
    notes: list[str] = []
    if case.cli is not None:
        p = subprocess.Popen(
            cli_command(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env, **(case.env or {})),
        )
        if case.interrupt is not None:
            deadline = time.time() + 300
            metrics = Path(args[args.index("--out") + 1]) / "metrics.jsonl"
            while (
                p.poll() is None
                and time.time() < deadline
                and not (metrics.is_file() and metrics.read_text().count("\n") >= 2)
            ):
                time.sleep(0.05)
            p.send_signal(case.interrupt)
        _, err = p.communicate(timeout=600)
        code, sees = p.returncode, user_line(err)
        raw = "Traceback (most recent call last)" in err
        one_line = sum(ln.startswith("error:") for ln in err.splitlines()) <= 1
        how = "loopmdm " + " ".join(_show(a, ctx) for a in _without_tiny(args))
        if len(_without_tiny(args)) < len(args):
            how += " <tiny settings>"
    else:
        from loopmdm.errors import LoopMDMError

        code, how = None, case.call
        try:
            value = prep.thunk()
            sees, raw, one_line = f"returned {type(value).__name__} (no error)", False, True
        except LoopMDMError as e:
            sees, raw, one_line = f"{type(e).__name__}: {e}", False, "\n" not in str(e)
        except BaseException as e:  # noqa: BLE001 - this is what we are measuring
            first = str(e).splitlines()[0][:200] if str(e) else ""
            sees, raw, one_line = f"RAW {type(e).__name__}: {first}", True, False
    seconds = time.perf_counter() - t0
    if case.after:
        notes += case.after(ctx, args)
    want = (
        case.exit_code if case.exit_code is not None else (2 if sees.startswith("error:") else None)
    )
    if code is not None and want is not None and code != want:
        notes.append(f"exit {code}, expected {want}")
    lost = sum(len(prep.before[str(r)] - valid_checkpoints(r)) for r in prep.watched)
    expected = bool(re.search(case.expect, sees)) and not notes and one_line
    return Result(
        case.id,
        case.area,
        case.input,
        how,
        code,
        sees.replace(str(ctx.w), "$W"),
        raw,
        one_line,
        expected,
        lost,
        round(seconds, 2),
        notes,
    )


def _without_tiny(args: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(args):
        if args[i] == "--set" and i + 1 < len(args) and args[i + 1] in TINY:
            i += 2
        elif args[i] == "--no-progress":
            i += 1
        else:
            out.append(args[i])
            i += 1
    return out


def _show(arg: str, ctx: Ctx) -> str:
    s = arg.replace(str(ctx.w), "$W")
    return f"'{s}'" if (" " in s or not s or any(c in s for c in "[]*;&|")) else s


# --------------------------------------------------------------------------- the inputs


def train(
    ctx: Ctx, *extra: str, out: Optional[Path] = None, data: Optional[Path] = None
) -> list[str]:
    out = out or ctx.w / f"out_{ctx.n}"
    ctx.n += 1
    return [
        "train",
        "--out",
        str(out),
        "--data",
        str(data or ctx.corpus),
        *TINY,
        "--max-steps",
        "2",
        *extra,
    ]


def sample(ckpt: Path, *extra: str) -> list[str]:
    return ["sample", "--checkpoint", str(ckpt), "--steps", "2", "--num-samples", "1", *extra]


def marker_absent(name: str) -> Callable[[Ctx, list[str]], list[str]]:
    def check(ctx: Ctx, args: list[str]) -> list[str]:
        return [f"PAYLOAD RAN: {name} exists"] if (ctx.w / name).exists() else []

    return check


def damaged(ctx: Ctx, how: Callable[[Path], None], drop_index: bool = False) -> Path:
    run = ctx.copy_run("damaged")
    folder = ctx.ckpt(run)
    if drop_index:
        (folder / "index.json").unlink()
    how(folder)
    return run


def flip(path: Path, offset: int = 2000) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0xFF
    path.write_bytes(bytes(b))


def _disk_full(ctx: Ctx) -> Callable[[], object]:
    """Save with every file write failing as on a full disk (ENOSPC); the previous checkpoint must survive."""
    import copy

    import loopmdm.checkpoint.save as ck  # where the checkpoint writer looks the function up
    from loopmdm.checkpoint import load_config_file
    from loopmdm.train import Trainer

    run = ctx.copy_run("diskfull")
    cfg = load_config_file(ctx.ckpt(run))
    tr = Trainer(copy.deepcopy(cfg), run, progress=False, log=lambda s: None)
    tr.resume(run)
    tr.step += 1

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def call():
        real, ck.write_bytes_synced = ck.write_bytes_synced, full
        try:
            return tr.save()
        finally:
            ck.write_bytes_synced = real

    return call


def _diverge(ctx: Ctx) -> Callable[[], object]:
    import copy

    from loopmdm.checkpoint import load_config_file
    from loopmdm.train import train as run_train

    cfg = copy.deepcopy(load_config_file(ctx.ckpt(ctx.good)))
    cfg.train.lr, cfg.train.warmup_steps, cfg.train.max_bad_steps, cfg.train.max_steps = (
        1e30,
        0,
        2,
        20,
    )
    cfg.train.save_every = 1
    return lambda: run_train(cfg, ctx.w / "diverge", progress=False, log=lambda s: None)


def _load_model(path: Path):
    from loopmdm.checkpoint import load_model

    return load_model(path)


def _generate_nan(ctx: Ctx) -> Callable[[], object]:
    from loopmdm.sampling import generate

    model, tok, _ = _load_model(ctx.good)
    return lambda: generate(model, tok, steps=2, temperature=float("nan"), top_k=-1)


def _from_dict(d: dict) -> Callable[[], object]:
    from loopmdm.config import RunConfig

    return lambda: RunConfig.from_dict(d).validate()


def cases() -> list[Case]:
    c = []
    add = c.append
    # ---- configuration and CLI arguments
    add(
        Case(
            "cfg-preset",
            "config",
            "unknown preset",
            r"unknown preset 'huge'",
            cli=lambda x: train(x, "--preset", "huge"),
        )
    )
    add(
        Case(
            "cfg-layers",
            "config",
            "layer split does not add up",
            r"add up to n_layers",
            cli=lambda x: train(x, "--set", "model.n_o=7"),
        )
    )
    add(
        Case(
            "cfg-type",
            "config",
            "a word where a number belongs",
            r"model.d_model='abc' must be an integer",
            cli=lambda x: train(x, "--set", "model.d_model=abc"),
        )
    )
    add(
        Case(
            "cfg-neg-lr",
            "config",
            "negative learning rate",
            r"train.lr=-1.0 must be > 0",
            cli=lambda x: train(x, "--set", "train.lr=-1"),
        )
    )
    add(
        Case(
            "cfg-nan-lr",
            "config",
            "NaN learning rate",
            r"train.lr=nan must be a finite number",
            cli=lambda x: train(x, "--set", "train.lr=.nan"),
        )
    )
    add(
        Case(
            "cfg-smax",
            "config",
            "S_max = 0",
            r"diffusion.s_max=0 must be >= 1",
            cli=lambda x: train(x, "--set", "diffusion.s_max=0"),
        )
    )
    add(
        Case(
            "cfg-bptt",
            "config",
            "truncation depth > S_max",
            r"backprop_depth=9 exceeds diffusion.s_max",
            cli=lambda x: train(
                x, "--set", "model.backprop_depth=9", "--set", "model.input_injection=true"
            ),
        )
    )
    add(
        Case(
            "cfg-key",
            "config",
            "misspelt key",
            r"unknown config key 'model.d_modle'; valid keys here",
            cli=lambda x: train(x, "--set", "model.d_modle=64"),
        )
    )
    add(
        Case(
            "cfg-noeq",
            "config",
            "--set without '='",
            r"must look like section.key=value",
            cli=lambda x: train(x, "--set", "model.d_model"),
        )
    )
    add(
        Case(
            "cfg-precision",
            "config",
            "unknown precision",
            r"train.precision='fp8' is unknown",
            cli=lambda x: train(x, "--set", "train.precision=fp8"),
        )
    )
    add(
        Case(
            "cfg-device",
            "config",
            "unknown device",
            r"train.device='tpu' is not a device",
            cli=lambda x: train(x, "--set", "train.device=tpu"),
        )
    )
    add(
        Case(
            "cfg-accum",
            "config",
            "batch not divisible by accumulation",
            r"not divisible by .*grad_accum",
            cli=lambda x: train(x, "--set", "train.batch_size=7", "--set", "train.grad_accum=2"),
        )
    )
    add(
        Case(
            "cfg-huge",
            "config",
            "absurd model width (typo)",
            r"larger than the supported 65536",
            cli=lambda x: train(x, "--set", "model.d_model=1e12"),
        )
    )
    add(
        Case(
            "cfg-seed",
            "config",
            "negative seed",
            r"train.seed=-1 must be in \[0, 2\*\*62\)",
            cli=lambda x: train(x, "--set", "train.seed=-1"),
        )
    )
    add(
        Case(
            "cfg-valfrac",
            "config",
            "validation fraction 1.5",
            r"data.val_fraction=1.5 must be in \(0, 1\)",
            cli=lambda x: train(x, "--set", "data.val_fraction=1.5"),
        )
    )
    add(
        Case(
            "cfg-steps",
            "config",
            "--max-steps -5",
            r"train.max_steps=-5 must be >= 1",
            cli=lambda x: train(x, "--max-steps", "-5"),
        )
    )
    add(
        Case(
            "cfg-objective",
            "config",
            "--objective xyz",
            r"unknown objective 'xyz'; choose one of: ar, mdm",
            cli=lambda x: train(x, "--objective", "xyz"),
        )
    )
    add(
        Case(
            "cfg-yaml-missing",
            "config",
            "--config file missing",
            r"config file .* does not exist",
            cli=lambda x: train(x, "--config", str(x.w / "nope.yaml")),
        )
    )
    add(
        Case(
            "cfg-yaml-syntax",
            "config",
            "--config with broken YAML",
            r"is not valid YAML",
            cli=lambda x: train(
                x, "--config", str(x.write("bad.yaml", "model: {d_model: [1, 2\n"))
            ),
        )
    )
    add(
        Case(
            "cfg-yaml-list",
            "config",
            "--config whose top level is a list",
            r"must (be|hold) a mapping",
            cli=lambda x: train(x, "--config", str(x.write("list.yaml", "- 1\n- 2\n"))),
        )
    )
    add(
        Case(
            "cfg-yaml-binary",
            "config",
            "--config pointing at a binary file",
            r"is not valid YAML",
            cli=lambda x: train(x, "--config", str(x.write("bin.yaml", bytes(range(256)) * 4))),
        )
    )
    add(
        Case(
            "cfg-dict-api",
            "config",
            "RunConfig.from_dict with a list section",
            r"must be a mapping",
            api=lambda x: _from_dict({"model": [1, 2]}),
            call='RunConfig.from_dict({"model": [1, 2]}).validate()',
        )
    )
    add(
        Case(
            "cfg-dict-inf",
            "config",
            "RunConfig.from_dict with an infinite float",
            r"must be a finite number",
            api=lambda x: _from_dict({"train": {"lr": float("inf")}}),
            call='RunConfig.from_dict({"train": {"lr": float("inf")}}).validate()',
        )
    )
    # ---- data files
    add(
        Case(
            "data-missing",
            "data",
            "data path does not exist",
            r"data path .* does not exist",
            cli=lambda x: train(x, data=x.w / "no_such_dir"),
        )
    )
    add(
        Case(
            "data-empty-dir",
            "data",
            "empty folder",
            r"no text found .*no files skipped",
            cli=lambda x: train(x, data=x.fresh("empty_dir")),
        )
    )
    add(
        Case(
            "data-empty-file",
            "data",
            "empty file",
            r"no text found .*1 file skipped \(1 empty\)",
            cli=lambda x: train(x, data=x.write("empty.txt", "")),
        )
    )
    add(
        Case(
            "data-binary",
            "data",
            "folder of binary files",
            r"no text found .*1 file skipped \(1 binary\)",
            cli=lambda x: train(x, data=x.write("bin/a.dat", bytes(range(256)) * 8).parent),
        )
    )
    add(
        Case(
            "data-latin1",
            "data",
            "Latin-1 file (default: skip with a count)",
            r"1 not UTF-8",
            cli=lambda x: train(
                x, data=x.write("latin/a.txt", "caf\xe9 cr\xe8me\n".encode("latin-1") * 50).parent
            ),
        )
    )
    add(
        Case(
            "data-latin1-error",
            "data",
            "Latin-1 file with data.bad_files=error",
            r"data file .*a.txt' cannot be used \(not UTF-8: byte 0xe9 at offset 3\); fix or remove it",
            cli=lambda x: train(
                x,
                "--set",
                "data.bad_files=error",
                data=x.write("latin2/a.txt", "caf\xe9\n".encode("latin-1") * 50).parent,
            ),
        )
    )
    add(
        Case(
            "data-utf16",
            "data",
            "UTF-16 file with data.bad_files=error",
            r"cannot be used \(UTF-16 text, convert it to UTF-8\)",
            cli=lambda x: train(
                x,
                "--set",
                "data.bad_files=error",
                data=x.write("u16.txt", "hello world\n".encode("utf-16") * 50),
            ),
        )
    )
    add(
        Case(
            "data-device",
            "data",
            "a device instead of a file (/dev/zero)",
            r"not a regular file or folder",
            cli=lambda x: train(x, data=Path("/dev/zero")),
        )
    )
    add(
        Case(
            "data-jsonl",
            "data",
            "JSONL with a broken line",
            r"\.jsonl:2 is not valid JSON",
            cli=lambda x: train(x, data=x.write("bad.jsonl", '{"text": "a b c"}\n{oops\n')),
        )
    )
    add(
        Case(
            "data-jsonl-field",
            "data",
            "JSONL without the text field",
            r"has no string field 'text'",
            cli=lambda x: train(x, data=x.write("nofield.jsonl", '{"body": "a b c"}\n')),
        )
    )
    add(
        Case(
            "data-small",
            "data",
            "corpus too small for the window",
            r"corpus is too small|exceeds the .* training rows|need at least 2 to split",
            cli=lambda x: train(
                x,
                "--set",
                "model.max_seq_len=1024",
                data=x.write("small/a.txt", "tiny text\n").parent,
            ),
        )
    )
    # type: ignore[arg-type]
    add(
        Case(
            "data-hf-offline",
            "data",
            "hf: dataset while offline",
            r"hf|Hugging Face|offline|datasets",
            cli=lambda x: train(x, data="hf:no_such_dataset_xyz"),
        )
    )
    add(
        Case(
            "data-tok-hub",
            "data",
            "Hub tokenizer name while offline",
            r"tokenizer 'gpt2' .*HF_HUB_OFFLINE|gpt2",
            cli=lambda x: train(x, "--set", "data.tokenizer=gpt2"),
        )
    )
    add(
        Case(
            "data-tok-garbage",
            "data",
            "tokenizer.json that is garbage",
            r"tokenizer file .* cannot be read",
            cli=lambda x: train(
                x, "--set", f"data.tokenizer={x.write('garbage_tok.json', '{not json')}"
            ),
        )
    )
    add(
        Case(
            "data-batch",
            "data",
            "batch larger than the corpus",
            r"train.batch_size=100000 exceeds the",
            cli=lambda x: train(x, "--set", "train.batch_size=100000"),
        )
    )
    # ---- checkpoints
    add(
        Case(
            "ck-missing",
            "checkpoint",
            "checkpoint path does not exist",
            r"does not exist",
            cli=lambda x: sample(x.w / "nowhere"),
        )
    )
    add(
        Case(
            "ck-empty",
            "checkpoint",
            "folder without a checkpoint",
            r"holds no checkpoint",
            cli=lambda x: sample(x.fresh("nockpt")),
        )
    )
    add(
        Case(
            "ck-truncated",
            "checkpoint",
            "truncated model.safetensors",
            r"model.safetensors' is truncated or corrupt",
            cli=lambda x: sample(
                damaged(
                    x,
                    lambda f: (f / "model.safetensors").write_bytes(
                        (f / "model.safetensors").read_bytes()[:4000]
                    ),
                )
            ),
        )
    )
    add(
        Case(
            "ck-truncated-noindex",
            "checkpoint",
            "truncated weights, no index.json",
            r"model.safetensors' is not a valid safetensors file",
            cli=lambda x: sample(
                damaged(
                    x,
                    lambda f: (f / "model.safetensors").write_bytes(
                        (f / "model.safetensors").read_bytes()[:4000]
                    ),
                    drop_index=True,
                )
            ),
        )
    )
    add(
        Case(
            "ck-bitflip",
            "checkpoint",
            "one flipped byte in optimizer.safetensors",
            r"optimizer.safetensors' is corrupt or truncated \(checksum mismatch\)",
            cli=lambda x: sample(damaged(x, lambda f: flip(f / "optimizer.safetensors"))),
        )
    )
    add(
        Case(
            "ck-config",
            "checkpoint",
            "config.json that is not JSON",
            r"config.json' is not valid JSON",
            cli=lambda x: sample(
                damaged(x, lambda f: (f / "config.json").write_text("{oops"), drop_index=True)
            ),
        )
    )
    add(
        Case(
            "ck-config-bad",
            "checkpoint",
            "config.json with an invalid layer split",
            r"config.json: .*n_layers",
            cli=lambda x: sample(
                damaged(
                    x,
                    lambda f: (f / "config.json").write_text('{"model": {"n_m": 9}}'),
                    drop_index=True,
                )
            ),
        )
    )
    add(
        Case(
            "ck-no-tok",
            "checkpoint",
            "tokenizer.json deleted",
            r"is missing tokenizer.json",
            cli=lambda x: sample(damaged(x, lambda f: (f / "tokenizer.json").unlink())),
        )
    )
    add(
        Case(
            "ck-pickle",
            "security",
            "pickle with a __reduce__ payload as model.safetensors (index fixed up)",
            r"model.safetensors' is a pickle / torch.save file, not safetensors, and was refused",
            cli=lambda x: sample(
                damaged(
                    x,
                    lambda f: plant(f, "model.safetensors", pickle.dumps(Payload(x.w / "PWNED1"))),
                )
            ),
            after=marker_absent("PWNED1"),
        )
    )
    add(
        Case(
            "ck-pickle-state",
            "security",
            "pickle payload as trainer_state.json, then --resume",
            r"trainer_state.json' is not valid JSON",
            cli=lambda x: train(
                x,
                "--resume",
                str(
                    damaged(
                        x,
                        lambda f: plant(
                            f, "trainer_state.json", pickle.dumps(Payload(x.w / "PWNED2"))
                        ),
                    )
                ),
                "--max-steps",
                "40",
            ),
            after=marker_absent("PWNED2"),
        )
    )
    add(
        Case(
            "ck-bin",
            "security",
            "folder with only pytorch_model.bin (a pickle)",
            r"pytorch_model.bin' is a pickle-format file; LoopMDM loads weights only from safetensors",
            cli=lambda x: sample(
                x.write("binonly/pytorch_model.bin", pickle.dumps(Payload(x.w / "PWNED3"))).parent
            ),
            after=marker_absent("PWNED3"),
        )
    )
    add(
        Case(
            "ck-nan",
            "checkpoint",
            "weights containing NaN",
            r"non-finite weights",
            api=lambda x: lambda run=damaged(x, _nan_weights): _load_model(run),
            call="load_model(RUN_WITH_NAN)",
        )
    )
    add(
        Case(
            "ck-file",
            "checkpoint",
            "--checkpoint pointing at a random file",
            r"is a file; pass the run folder",
            cli=lambda x: sample(x.write("random.txt", "hello")),
        )
    )
    add(
        Case(
            "ck-latest",
            "checkpoint",
            "tampered latest pointer ('../../etc')",
            r"returned tuple \(no error\)",
            api=lambda x: lambda run=_tamper_latest(x.copy_run("latest")): _load_model(run),
            call="load_model(RUN) with checkpoints/latest = '../../../etc'",
        )
    )
    # ---- resuming
    add(
        Case(
            "rs-model",
            "resume",
            "--resume with a different model width",
            r"different model config \(model.d_model: 32 -> 64\)",
            cli=lambda x: train(
                x,
                "--set",
                "model.d_model=64",
                "--resume",
                str(x.copy_run("rs")),
                "--max-steps",
                "40",
            ),
        )
    )
    add(
        Case(
            "rs-fresh",
            "resume",
            "new run into a folder that holds checkpoints (no --resume)",
            r"already holds checkpoints .*--resume",
            cli=lambda x: train(x, out=x.copy_run("fresh")),
        )
    )
    add(
        Case(
            "rs-none",
            "resume",
            "--resume from an empty folder",
            r"holds no checkpoint",
            cli=lambda x: train(x, "--resume", str(x.fresh("rs_empty"))),
        )
    )
    add(
        Case(
            "rs-weights-only",
            "resume",
            "--resume from a weights-only folder",
            r"has no trainer_state.json",
            cli=lambda x: train(
                x,
                "--resume",
                str(
                    damaged(
                        x,
                        lambda f: [(f / n).unlink() for n in ("trainer_state.json", "index.json")],
                    )
                ),
            ),
        )
    )
    add(
        Case(
            "rs-disk-full",
            "disk",
            "disk full while saving (ENOSPC injected)",
            r"could not save checkpoint .*disk full \(ENOSPC\)\); the previous checkpoint is intact",
            api=_disk_full,
            call="Trainer.save() with every write failing with ENOSPC",
        )
    )
    add(
        Case(
            "rs-out-file",
            "disk",
            "--out under a regular file (not writable as a folder)",
            r"cannot write the run folder|cannot be created|Not a directory|File exists",
            cli=lambda x: train(x, out=x.write("plainfile", "x") / "run"),
        )
    )
    add(
        Case(
            "rs-diverge",
            "numerics",
            "learning rate 1e30: every step non-finite",
            r"training diverged: 2 non-finite steps in a row .*likely causes: learning rate too high",
            api=_diverge,
            call="train(cfg with train.lr=1e30, train.max_bad_steps=2)",
        )
    )
    add(
        Case(
            "rs-sigint",
            "signals",
            "Ctrl-C (SIGINT) during training: saves, exits 130",
            r"stopped by SIGINT at step \d+ .*checkpoint saved .*--resume",
            cli=lambda x: train(x, "--max-steps", "2000", "--set", "train.save_every=1000"),
            interrupt=signal.SIGINT,
            after=_sigint_saved,
            exit_code=130,
        )
    )
    add(
        Case(
            "rs-sigterm",
            "signals",
            "SIGTERM during training: saves, exits 143 (`train && sample` stops)",
            r"stopped by SIGTERM at step \d+ .*checkpoint saved .*--resume",
            cli=lambda x: train(x, "--max-steps", "2000", "--set", "train.save_every=1000"),
            interrupt=signal.SIGTERM,
            after=_sigint_saved,
            exit_code=143,
        )
    )
    # ---- output folders: never delete or overwrite what the command did not create (loopmdm.outputs)
    add(
        Case(
            "out-import-run",
            "output",
            "import --out an existing run (would prune its checkpoints)",
            r"--out .* exists and is not empty .*choose a new or empty folder",
            cli=lambda x: [
                "import",
                "--hf",
                str(_hf_export(x)),
                "--out",
                str(x.copy_run("imp_run")),
            ],
            after=_unchanged_run,
        )
    )
    add(
        Case(
            "out-import-data",
            "output",
            "import --out a data folder",
            r"exists and is not empty",
            cli=lambda x: ["import", "--hf", str(_hf_export(x)), "--out", str(_corpus_copy(x))],
        )
    )
    add(
        Case(
            "out-train-corpus",
            "output",
            "train --out a corpus folder (no run there)",
            r"is not empty and not a run folder .*--data",
            cli=lambda x: train(x, out=_corpus_copy(x)),
        )
    )
    add(
        Case(
            "out-resume-other",
            "output",
            "train --resume RUN_B --out RUN_A (another run's folder)",
            r"holds checkpoints of another run",
            cli=lambda x: train(
                x, "--resume", str(x.copy_run("rs_b")), "--max-steps", "40", out=x.copy_run("rs_a")
            ),
        )
    )
    add(
        Case(
            "out-experiment-corpus",
            "output",
            "experiment --out a corpus folder",
            r"is not empty and not an experiment folder",
            cli=lambda x: [
                "experiment",
                "attention",
                "--checkpoint",
                str(x.good),
                "--out",
                str(_corpus_copy(x)),
            ],
        )
    )
    # ---- the reasoning study's own files and config
    add(
        Case(
            "exp-reasoning-calibration",
            "experiment",
            "reasoning study whose calibration.json was cut short",
            r"calibration.json is not a calibration record .* delete it to calibrate this task again",
            cli=lambda x: [
                "experiment",
                "reasoning",
                "--tasks",
                "prefix-sum-interleaved",
                "--out",
                str(
                    x.write(
                        "rs_cal/prefix-sum-interleaved/calibration.json", '{"tried": ['
                    ).parents[1]
                ),
            ],
        )
    )
    add(
        Case(
            "exp-reasoning-candidate",
            "experiment",
            "reasoning config with a candidate shape the model refuses",
            r"candidate \{'d_model': 64, 'n_heads': 3\}: model.d_model=64 must split into n_heads=3",
            cli=lambda x: [
                "experiment",
                "reasoning",
                "--config",
                str(x.write("rs_bad.yaml", "candidates: [{d_model: 64, n_heads: 3}]\n")),
                "--out",
                str(x.w / "rs_bad_out"),
            ],
        )
    )
    # ---- command-line values that are paths are never YAML
    add(
        Case(
            "yaml-data-hash",
            "config",
            "--data 'DIR #v2' (was read as DIR: a YAML comment)",
            r"data source '.*corpus #v2'",
            cli=lambda x: train(x, data=x.write("corpus #v2/a.bin", bytes(range(256)) * 4).parent),
        )
    )
    # ---- devices
    add(
        Case(
            "dev-train-cuda",
            "device",
            "train.device=cuda:99",
            r"train.device='cuda:99': this machine has",
            cli=lambda x: train(x, "--set", "train.device=cuda:99"),
        )
    )
    add(
        Case(
            "dev-eval-mps",
            "device",
            "eval --device mps (no Apple GPU)",
            r"device='mps': this machine has",
            cli=lambda x: [
                "eval",
                "--checkpoint",
                str(x.good),
                "--device",
                "mps",
                "--batches",
                "1",
            ],
        )
    )
    # ---- option parsing (click / typer): one line, exit 2
    add(
        Case(
            "cli-unknown-option",
            "cli",
            "unknown option",
            r"^error: No such option: --bogus.*--help",
            cli=lambda x: ["train", "--bogus"],
        )
    )
    add(
        Case(
            "cli-missing-option",
            "cli",
            "missing required option",
            r"^error: Missing option '--out'",
            cli=lambda x: ["train", "--data", str(x.corpus)],
        )
    )
    add(
        Case(
            "cli-bad-int",
            "cli",
            "--steps abc",
            r"^error: Invalid value for '--steps'",
            cli=lambda x: sample(x.good, "--steps", "abc"),
        )
    )
    # ---- sampling options
    s = [
        ("smp-loops0", "--loops 0", ["--loops", "0"], r"positive integer"),
        (
            "smp-loops-word",
            "--loops abc",
            ["--loops", "abc"],
            r"--loops 'abc' is not a positive integer",
        ),
        ("smp-steps0", "--steps 0", ["--steps", "0"], r"steps"),
        ("smp-n0", "--num-samples 0", ["--num-samples", "0"], r"num.samples"),
        ("smp-len", "--length 10000 (beyond the window)", ["--length", "10000"], r"length"),
        ("smp-temp", "--temperature -1", ["--temperature", "-1"], r"temperature"),
        ("smp-topp", "--top-p 2", ["--top-p", "2"], r"top.p"),
        ("smp-topk", "--top-k 0", ["--top-k", "0"], r"top.k"),
        (
            "smp-sampler",
            "--sampler bogus",
            ["--sampler", "bogus"],
            r"unknown sampler 'bogus'; choose one of",
        ),
        (
            "smp-policy",
            "--policy bogus",
            ["--policy", "bogus"],
            r"unknown loop policy 'bogus'|policy",
        ),
        (
            "smp-opt",
            "--sampler-opt bogus=1",
            ["--sampler", "cached", "--sampler-opt", "bogus=1"],
            r"unknown option 'bogus'",
        ),
        ("smp-policy-opt", "--policy-opt loops=-3", ["--policy-opt", "loops=-3"], r"loops"),
        ("smp-prompt", "prompt longer than the window", ["--prompt", "word " * 200], r"prompt"),
        (
            "smp-template",
            "malformed infill template",
            ["--template", "def f(): [MASK:abc]"],
            r"MASK|template",
        ),
        (
            "smp-both",
            "--prompt and --template together",
            ["--prompt", "x", "--template", "[MASK:3]"],
            r"prompt|template",
        ),
        (
            "smp-utf8",
            "--prompt with a byte that is not UTF-8 ($'\\xff')",
            ["--prompt", "def \udcff"],
            r"--prompt is not valid UTF-8 text \(byte 0xff",
        ),
        (
            "smp-steps-huge",
            "--steps 10**12 (hung before)",
            ["--steps", str(10**12)],
            r"exceeds the supported maximum",
        ),
        (
            "smp-n-huge",
            "--num-samples 10**9",
            ["--num-samples", str(10**9)],
            r"needs about .* GiB .*use at most",
        ),
        (
            "smp-span-huge",
            "--template 'x [MASK:99999999999] y' (MemoryError before)",
            ["--template", "x [MASK:99999999999] y"],
            r"longer than the model window",
        ),
    ]
    for cid, text, extra, rx in s:
        add(Case(cid, "sampling", text, rx, cli=lambda x, extra=extra: sample(x.good, *extra)))
    add(
        Case(
            "smp-clamp",
            "sampling",
            "--steps 100000 on a 32-token window: clamped to 32 with a note",
            r"note: --steps 100000 is more than the \d+ positions to generate",
            cli=lambda x: [
                "sample",
                "--checkpoint",
                str(x.good),
                "--num-samples",
                "1",
                "--steps",
                "100000",
                "--json",
            ],
            exit_code=0,
        )
    )
    add(
        Case(
            "smp-api-temp",
            "sampling",
            "generate(temperature=nan, top_k=-1)",
            r"temperature|top_k",
            api=_generate_nan,
            call='generate(model, tok, steps=2, temperature=float("nan"), top_k=-1)',
        )
    )
    # ---- export / import (transformers format)
    add(
        Case(
            "hf-export-out",
            "hf",
            "export into a path under /dev/null",
            r"Not a directory|cannot write|cannot be created",
            cli=lambda x: ["export", "--checkpoint", str(x.good), "--out", "/dev/null/hf"],
        )
    )
    add(
        Case(
            "hf-import-list",
            "hf",
            "import a folder whose config.json is a JSON list",
            r"config.json",
            cli=lambda x: [
                "import",
                "--hf",
                str(x.write("hf_list/config.json", "[1, 2]").parent),
                "--out",
                str(x.w / "imported_list"),
            ],
        )
    )
    add(
        Case(
            "hf-import-index",
            "hf",
            "import with a broken model.safetensors.index.json",
            r"shard index",
            cli=lambda x: [
                "import",
                "--hf",
                str(_hf_with_bin(x, index="{}")),
                "--out",
                str(x.w / "imported_idx"),
            ],
        )
    )
    add(
        Case(
            "hf-import-bin",
            "security",
            "import a transformers folder holding only pytorch_model.bin",
            r"pickle|safetensors",
            cli=lambda x: [
                "import",
                "--hf",
                str(_hf_with_bin(x)),
                "--out",
                str(x.w / "imported_bin"),
            ],
            after=marker_absent("PWNED4"),
        )
    )
    # ---- Sudoku puzzle files (CSV)
    add(
        Case(
            "csv-bom",
            "data",
            "puzzle CSV with a UTF-8 BOM (Excel): accepted",
            r"returned PuzzleReport",
            api=lambda x: _read_puzzles(_puzzle_csv(x, "bom.csv", bom=True)),
            call="read_puzzles('bom.csv')",
        )
    )
    add(
        Case(
            "csv-huge-field",
            "data",
            "puzzle CSV with a field over the csv size limit",
            r"line \d+ has a field longer than [\d,]+ characters",
            api=lambda x: _read_puzzles(_puzzle_csv(x, "huge.csv", huge=True)),
            call="read_puzzles('huge.csv')",
        )
    )
    # ---- evaluation
    add(
        Case(
            "ev-metric",
            "eval",
            "--metric bogus",
            r"bogus",
            cli=lambda x: ["eval", "--checkpoint", str(x.good), "--metric", "bogus"],
        )
    )
    add(
        Case(
            "ev-loops",
            "eval",
            "--loops 1,x",
            r"--loops 'x' is not a positive integer",
            cli=lambda x: ["eval", "--checkpoint", str(x.good), "--loops", "1,x"],
        )
    )
    add(
        Case(
            "ev-batches",
            "eval",
            "--batches 0",
            r"batches",
            cli=lambda x: ["eval", "--checkpoint", str(x.good), "--batches", "0"],
        )
    )
    add(
        Case(
            "ev-data",
            "eval",
            "--metric zero-shot on a binary file",
            r"no text found|binary|not UTF-8",
            cli=lambda x: [
                "eval",
                "--checkpoint",
                str(x.good),
                "--metric",
                "zero-shot",
                "--data",
                str(x.write("zs/b.bin", bytes(range(256)) * 4).parent),
            ],
        )
    )
    _round_7(add)
    return c


def _older_copy(ctx: Ctx) -> tuple[Path, Path]:
    """A run copy with an extra, older checkpoint folder (a copy of its newest as step_000001)."""
    run = ctx.copy_run("older")
    older = run / "checkpoints" / "step_000001"
    shutil.copytree(ctx.ckpt(run), older)
    return run, older


def _latest_folder(ctx: Ctx) -> Path:
    run = ctx.copy_run("latestdir")
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "latest").mkdir()
    return run


def _round_7(add: Callable[[Case], None]) -> None:
    """The inputs a review found in round 7 (each broke something or lost work before it was fixed)."""
    add(
        Case(
            "rs-older",
            "resume",
            "resume in place from a checkpoint older than latest",
            r"would discard its newer checkpoints",
            cli=lambda x: (lambda run, older: train(x, "--resume", str(older), out=run))(
                *_older_copy(x)
            ),
        )
    )
    add(
        Case(
            "rs-latest-dir",
            "resume",
            "checkpoints/latest is a folder",
            r"latest is a folder, not the file",
            cli=lambda x: (lambda run: train(x, "--resume", str(run), out=run))(_latest_folder(x)),
        )
    )
    add(
        Case(
            "out-other-experiment",
            "output",
            "an experiment's --out holds another experiment's results",
            r"holds the output of 'loopmdm experiment loop-scaling'",
            cli=lambda x: [
                "experiment",
                "sudoku",
                "--out",
                str(x.write("ls/results.json", '{"experiment": "loop-scaling"}').parent),
            ],
        )
    )
    add(
        Case(
            "exp-names-nothing",
            "config",
            "--tasks that names nothing",
            r"--tasks ',' names nothing",
            cli=lambda x: ["experiment", "reasoning", "--tasks", ",", "--out", str(x.w / "rz")],
        )
    )
    add(
        Case(
            "smp-loops-huge",
            "sampling",
            "--loops 10^12 (a typo)",
            r"exceeds the supported maximum of 1024 loops",
            cli=lambda x: sample(x.good, "--loops", "1000000000000"),
        )
    )
    add(
        Case(
            "smp-marker",
            "sampling",
            "malformed template marker [MASK:-1]",
            r"template marker '\[MASK:-1\]' is malformed",
            cli=lambda x: sample(x.good, "--template", "a [MASK:-1] b"),
        )
    )
    add(
        Case(
            "task-levels-huge",
            "data",
            "task make with a level range of 10^11 levels",
            r"spans more than 4,096 levels",
            cli=lambda x: [
                "task",
                "make",
                "prefix",
                "--out",
                str(x.w / "tk"),
                "--train-levels",
                "0..99999999999",
            ],
        )
    )


def _hf_with_bin(ctx: Ctx, index: Optional[str] = None) -> Path:
    """A transformers-style folder (config + tokenizer) whose only weights are a pickle with a payload."""
    ctx.n += 1
    folder = ctx.w / f"hf_bin_{ctx.n}"
    folder.mkdir()
    if index is not None:
        (folder / "model.safetensors.index.json").write_text(index)
    ck = ctx.ckpt(ctx.good)
    cfg = json.loads((ck / "config.json").read_text())
    (folder / "config.json").write_text(
        json.dumps({"model_type": "loopmdm", "loopmdm_run_config": cfg})
    )
    shutil.copy(ck / "tokenizer.json", folder / "tokenizer.json")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(ctx.w / "PWNED4")))
    return folder


def _hf_export(ctx: Ctx) -> Path:
    """The reference run exported once as a transformers folder (needs the [hf] extra)."""
    folder = ctx.w / "hf_export"
    if not folder.is_dir():
        from loopmdm.hf.export import export_hf

        export_hf(ctx.good, folder)
    return folder


def _corpus_copy(ctx: Ctx) -> Path:
    ctx.n += 1
    dst = ctx.w / f"corpus_copy_{ctx.n}"
    shutil.copytree(ctx.corpus, dst)
    return dst


def _unchanged_run(ctx: Ctx, args: list[str]) -> list[str]:
    run = Path(args[args.index("--out") + 1])
    problems = (
        []
        if (run / "checkpoints" / "latest").read_text().strip() == "step_000006"
        else ["latest moved"]
    )
    return problems + (
        [] if len(list((run / "checkpoints").glob("step_*"))) == 3 else ["a checkpoint was pruned"]
    )


def _puzzle_csv(ctx: Ctx, name: str, bom: bool = False, huge: bool = False) -> Path:
    import csv

    from loopmdm.data.sudoku import generate_puzzles

    rows = "".join(f"{p.puzzle},{p.solution}\n" for p in generate_puzzles(2, (30, 34), seed=0))
    if huge:
        rows += '"' + "1" * (csv.field_size_limit() + 10) + ",x\n"
    return ctx.write(
        name, (b"\xef\xbb\xbf" if bom else b"") + f"quizzes,solutions\n{rows}".encode()
    )


def _read_puzzles(path: Path) -> Callable[[], object]:
    from loopmdm.data.sudoku import read_puzzles

    return lambda: read_puzzles(str(path))


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state[next(iter(state))].view(-1)[0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    (folder / "index.json").unlink()


def _tamper_latest(run: Path) -> Path:
    (run / "checkpoints" / "latest").write_text("../../../etc\n")
    return run


def _sigint_saved(ctx: Ctx, args: list[str]) -> list[str]:
    run = Path(args[args.index("--out") + 1])
    if not (run / "checkpoints" / "latest").is_file():
        return ["Ctrl-C left no checkpoint"]
    return []


# --------------------------------------------------------------------------- report

CLASSES = [
    "**Config values and options** (`cfg-*`, `cli-*`): every value is checked with its name and the fix; click / "
    "typer's option errors (unknown or missing option, a word for a number) are one `error:` line too.",
    "**Paths are never YAML** (`yaml-*`): `--data`, `--out`, `--checkpoint`, `--resume`, `--init` are taken "
    "verbatim (`--data 'corpus #v2'`, `--data 2024`, `--data on`); only `--set key=value` reads YAML.",
    "**Data files** (`data-*`, `csv-*`): unreadable, binary, non-UTF-8 and empty files are counted or named; a "
    "puzzle CSV may start with a UTF-8 BOM; a field over the csv size limit names its line.",
    "**Checkpoints** (`ck-*`, `rs-*`, `security`): truncated, corrupt, mismatched or pickled files are named and "
    "refused before use; nothing is ever unpickled.",
    "**Output folders** (`out-*`, `loopmdm.outputs`): `train`, `import`, `export`, `loopify` and `experiment` "
    "never delete or overwrite what they did not create: `--out` must be new, empty or the command's own earlier "
    "output (a resumed run's own folder); checked before any work starts.",
    "**Devices** (`dev-*`): a device this machine lacks (`cuda`, `cuda:N`, `mps`) is one line listing the "
    "devices it has; bf16 where the device cannot run it names fp32.",
    "**Text** (`smp-utf8`): a prompt or template that is not valid UTF-8 (a lone surrogate from the shell) is "
    "refused naming the byte.",
    "**Signals and exit codes** (`rs-sigint`, `rs-sigterm`): a stop saves the step and exits 130 (SIGINT) / 143 "
    "(SIGTERM) so that `train && sample` stops; a second signal exits at once without saving and says so.",
    "**Unbounded requests** (`smp-*-huge`, `smp-clamp`): denoising steps above the positions to generate are "
    "clamped (a note says so) and refused above 1,000,000; a sample count whose memory exceeds what the device "
    "has, and template spans longer than the model window, are refused before anything is allocated.",
]


def setup(ctx: Ctx, env: dict) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import python_like_text  # the test suite's deterministic tiny corpus

    ctx.corpus.mkdir(parents=True)
    for i in range(40):
        (ctx.corpus / f"mod_{i:02d}.py").write_text(python_like_text(i))
    p = subprocess.run(
        cli_command(
            [
                "train",
                "--out",
                str(ctx.good),
                "--data",
                str(ctx.corpus),
                *TINY,
                "--max-steps",
                "6",
                "--set",
                "train.save_every=2",
                "--set",
                "train.keep_last=3",
            ]
        ),
        capture_output=True,
        text=True,
        env=env,
    )
    if p.returncode != 0:
        raise SystemExit(f"could not train the reference run:\n{p.stderr[-3000:]}")


def markdown(results: list[Result], command: str, machine: str, wall: float) -> str:
    raw = sum(r.raw_traceback for r in results)
    lost = sum(r.lost_checkpoints for r in results)
    unexpected = [r for r in results if not r.expected]
    lines = [
        "# Bad inputs: what the user sees",
        "",
        "Every row is one bad input tried through the command line (a `loopmdm` subprocess) or the Python API.",
        "The table is written by the script below; do not edit it by hand.",
        "",
        f"    {command}",
        "",
        f"Machine: {machine}. Wall time {wall:.0f} s.",
        "",
        f"**{len(results)} distinct bad inputs, {raw} raw tracebacks, {lost} lost checkpoints, "
        f"{len(results) - len(unexpected)} answered with the expected message.**",
        "",
        "A *raw traceback* is a Python traceback on stderr, or an API exception outside "
        "`loopmdm.errors.LoopMDMError`. A *lost checkpoint* is one that was complete and valid before the call and "
        "missing or failing verification after it (checked on every run folder a case touches). `$W` is the "
        "scratch folder; `<tiny settings>` stands for the `--set` options of a ~50k-parameter model. CLI errors "
        "are `error: ...` on stderr with exit code 2; a stop on Ctrl-C / SIGTERM saves the step and exits 130 / 143.",
        "",
        "| # | id | area | bad input | command or call | what the user sees | exit | traceback | lost ckpt |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        sees = r.sees if len(r.sees) < 320 else r.sees[:317] + "..."
        sees += "" if r.expected else " **(unexpected)**"
        if r.notes:
            sees += " " + "; ".join(r.notes)
        cells = [
            str(i),
            f"`{r.id}`",
            r.area,
            r.input,
            f"`{r.how}`",
            sees,
            "" if r.exit is None else str(r.exit),
            "yes" if r.raw_traceback else "no",
            str(r.lost_checkpoints),
        ]
        lines.append(
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
        )
    lines += ["", "## Classes of bad input", ""] + [f"- {c}" for c in CLASSES]
    lines += [
        "",
        "## Notes",
        "",
        "- Empty files never stop a run: they are counted as skipped in both `data.bad_files` modes.",
        "  Binary, non-UTF-8, UTF-16/32 and unreadable files are skipped with a count (`skip`, the default)",
        "  or stop the run naming the file and the first bad byte (`error`).",
        "- Checkpoints are never unpickled: safetensors and JSON only. A pickle or `torch.save` archive found",
        "  where a safetensors file is expected is refused by its magic bytes before any parser sees it; the",
        "  payload rows above check that the marker file the payload would create does not exist.",
        "- Text that spells a special token (`<mask>`, `<eos>`, `<bos>`, `<pad>`) inside user text is ordinary",
        "  text: `TextTokenizer` sets `encode_special_tokens = True`, so it never becomes a special token (fixed;",
        "  see docs/reliability.md, Fixed gaps, and the round-trip property test).",
        "",
    ]
    return "\n".join(lines)


def printable(text: str) -> str:
    """``text`` with characters UTF-8 cannot hold (lone surrogates from a non-UTF-8 argument) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bad_inputs.md")
    ap.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "bad_inputs.json"
    )
    ap.add_argument("--only", default="", help="run only cases whose id contains this text")
    ap.add_argument("--workers", type=int, default=2, help="CLI cases run in parallel")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="loopmdm_bad_inputs_"))
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        LOOPMDM_CACHE=str(work / "cache"),
    )
    os.environ.update(
        {k: env[k] for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "LOOPMDM_CACHE")}
    )
    ctx = Ctx(work)
    try:
        setup(ctx, env)
        todo = [c for c in cases() if args.only in c.id]
        prepared = [prepare(c, ctx) for c in todo]
        cli = [p for p in prepared if p.case.cli is not None]
        results: dict[str, Result] = {}
        # subprocesses: run a few at a time
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            for prep, res in zip(cli, pool.map(lambda p: execute(p, ctx, env), cli)):
                results[prep.case.id] = res
        for prep in prepared:
            if prep.case.api is not None:
                results[prep.case.id] = execute(prep, ctx, env)
        ordered = [results[c.id] for c in todo]
        wall = time.time() - t0
        width = max(len(r.id) for r in ordered)
        for r in ordered:
            flag = "RAW " if r.raw_traceback else ("??? " if not r.expected else "ok  ")
            print(
                f"{flag}{r.id:<{width}}  exit={r.exit!s:<4} lost={r.lost_checkpoints}  {r.sees[:150]}"
            )
        raw = sum(r.raw_traceback for r in ordered)
        lost = sum(r.lost_checkpoints for r in ordered)
        print(
            f"\n{len(ordered)} inputs, {raw} raw tracebacks, {lost} lost checkpoints, "
            f"{sum(not r.expected for r in ordered)} unexpected messages, {wall:.0f} s"
        )
        machine = (
            f"{os.cpu_count()}-core CPU (shared), Python {platform.python_version()}, torch "
            f"{__import__('torch').__version__}"
        )
        command = "python benchmarks/bad_inputs.py" + (f" --only {args.only}" if args.only else "")
        if not args.only:
            atomic_write_text(args.out, printable(markdown(ordered, command, machine, wall)))
            print(f"wrote {args.out}")
        atomic_write_text(
            args.json,
            printable(
                json.dumps(
                    {
                        "command": command,
                        "machine": machine,
                        "wall_s": wall,
                        "inputs": len(ordered),
                        "raw_tracebacks": raw,
                        "lost_checkpoints": lost,
                        "results": [asdict(r) for r in ordered],
                    },
                    indent=1,
                )
            ),
        )
        print(f"wrote {args.json}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"scratch folder kept: {work}")


if __name__ == "__main__":
    main()
