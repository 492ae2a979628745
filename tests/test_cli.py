"""CLI end to end: train -> eval -> sample on a few steps, --json, and one-line errors (exit 2, no traceback)."""

import json
import os
import subprocess
import sys

import pytest


def run(*args, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.run(
        [sys.executable, "-c", "from loopmdm.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr[-2000:]}")
    return p


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
    "train.batch_size=8",
    "--set",
    "train.eval_every=3",
    "--set",
    "train.save_every=3",
    "--set",
    "train.precision=fp32",
    "--set",
    "data.val_fraction=0.2",
]


def test_train_eval_sample(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    cache = ["--set", f"data.cache_dir={tmp_path / 'cache'}"]
    p = run(
        "train",
        "--out",
        str(out),
        "--data",
        str(tiny_corpus),
        "--max-steps",
        "3",
        "--no-progress",
        "--json",
        *TINY,
        *cache,
    )
    summary = json.loads(p.stdout)
    assert summary["step"] == 3 and summary["val"]["nelbo"] > 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] and lines[-1]["flops"] > lines[0]["flops"] > 0
    p = run("eval", "--checkpoint", str(out), "--loops", "1,4", "--batches", "2", "--json")
    res = json.loads(p.stdout)["results"]
    assert [r["loops"] for r in res] == [1, 4] and all(r["ppl"] > 1 for r in res)
    p = run(
        "sample",
        "--checkpoint",
        str(out),
        "--loops",
        "2",
        "--steps",
        "4",
        "--num-samples",
        "2",
        "--json",
    )
    res = json.loads(p.stdout)["results"]
    assert len(res[0]["samples"]) == 2
    # --resume without --preset / --config continues with the run's own config (the --set flags need not be
    # repeated); --max-steps still extends it
    p = run(
        "train",
        "--out",
        str(out),
        "--resume",
        str(out),
        "--max-steps",
        "4",
        "--no-progress",
        "--json",
    )
    assert json.loads(p.stdout)["step"] == 4
    assert json.loads((out / "config.json").read_text())["model"]["d_model"] == 32


@pytest.mark.parametrize(
    "args,match",
    [
        (["train", "--out", "X", "--preset", "huge"], "unknown preset"),
        (["train", "--out", "X", "--set", "model.n_o=7"], "add up to n_layers"),
        (["train", "--out", "X", "--data", "/nonexistent/path"], "does not exist"),
        (["eval", "--checkpoint", "/nonexistent"], "does not exist"),
        (["eval", "--checkpoint", ".", "--loops", "0"], "positive integer"),
    ],
)
def test_cli_errors_are_one_line(args, match, tmp_path):
    args = [a.replace("X", str(tmp_path / "o")) for a in args]
    p = run(*args, check=False)
    assert p.returncode == 2, p.stderr
    assert match in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
