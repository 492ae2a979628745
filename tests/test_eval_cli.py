"""``loopmdm eval`` metrics, sweeps, --json, --plot, ``loopmdm plot``, zero-shot corpora and one-line errors."""

from __future__ import annotations

import json

import pytest

from conftest import python_like_text
from helpers import run_cli


def cli(capsys, *args):
    return run_cli(args, capsys)


def test_nelbo_sweep_json_table_and_plot(tiny_run, tmp_path, capsys, monkeypatch):
    code, out, err = cli(
        capsys,
        "eval",
        "--checkpoint",
        tiny_run,
        "--loops",
        "1,3",
        "--batches",
        "2",
        "--rel-stderr",
        "0.02",
        "--max-repeats",
        "6",
        "--json",
        "--plot",
        tmp_path / "s.png",
    )
    assert code == 0, err
    payload = json.loads(out)
    assert payload["metric"] == "nelbo" and payload["primary"] == "nelbo"
    rows = payload["results"]
    assert [r["loops"] for r in rows] == [1, 3]
    for r in rows:
        assert (
            r["ppl"] > 1 and r["bits_per_byte"] > 0 and r["stderr"] > 0 and 3 <= r["repeats"] <= 6
        )
    assert rows[1]["flops_per_token"] > rows[0]["flops_per_token"]
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "sweep.json").write_text(out)
    code, out, err = cli(
        capsys,
        "eval",
        "--checkpoint",
        tiny_run,
        "--loops",
        "2",
        "--batches",
        "1",
        "--rel-stderr",
        "0",
    )
    header, row = out.splitlines()[0].split(), out.splitlines()[1].split()
    assert code == 0 and header[:3] == ["S", "NELBO", "+-"]
    assert (
        row[0] == "2"
        and row[header.index("passes")] == "1"
        and row[header.index("dNELBO")] == "+0.0000"
    )
    code, out, err = cli(
        capsys,
        "plot",
        tmp_path / "sweep.json",
        tmp_path / "sweep.json",
        "--out",
        tmp_path / "two.png",
        "--metric",
        "bits_per_byte",
    )
    assert code == 0, err
    assert (tmp_path / "two.png").stat().st_size > 1000


def test_zero_shot_on_folder_and_jsonl(tiny_run, tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "other.jsonl"
    corpus.write_text(
        "".join(json.dumps({"body": python_like_text(100 + i)}) + "\n" for i in range(4))
    )
    code, out, err = cli(
        capsys,
        "eval",
        "--checkpoint",
        tiny_run,
        "--metric",
        "zero-shot",
        "--data",
        corpus,
        "--text-field",
        "body",
        "--loops",
        "2",
        "--batches",
        "2",
        "--rel-stderr",
        "0",
        "--repeats",
        "2",
        "--json",
    )
    assert code == 0, err
    p = json.loads(out)
    assert p["documents"] == 4 and p["rows"] > 4 and p["results"][0]["repeats"] == 2
    assert p["results"][0]["bits_per_byte"] > 0
    # gibberish is scored worse than text like the training data
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text(
        "".join(chr(0x4E00 + (i * 7919) % 2000) for i in range(400))
    )
    code, out2, err = cli(
        capsys,
        "eval",
        "--checkpoint",
        tiny_run,
        "--metric",
        "zero-shot",
        "--data",
        tmp_path / "junk",
        "--loops",
        "2",
        "--batches",
        "2",
        "--rel-stderr",
        "0",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out2)["results"][0]["nelbo"] > p["results"][0]["nelbo"] + 1


def test_gen_ppl_generated_and_given_samples(tiny_run, tiny_ar_run, tmp_path, capsys, monkeypatch):
    code, out, err = cli(
        capsys,
        "eval",
        "--checkpoint",
        tiny_run,
        "--metric",
        "gen-ppl",
        "--evaluator",
        tiny_ar_run,
        "--loops",
        "1,2",
        "--num-samples",
        "3",
        "--steps",
        "4",
        "--samples-out",
        tmp_path / "gen.jsonl",
        "--json",
    )
    assert code == 0, err
    p = json.loads(out)
    assert p["primary"] == "gen_ppl" and [r["loops"] for r in p["results"]] == [1, 2]
    for r in p["results"]:
        assert (
            r["gen_ppl"] > 1
            and r["samples"] + r["empty_samples"] == 3
            and r["entropy_tokens"] == "generator"
        )
        assert r["flops_per_sample"] > 0
    assert len((tmp_path / "gen.jsonl").read_text().splitlines()) == 6
    code, out, err = cli(
        capsys,
        "eval",
        "--metric",
        "gen-ppl",
        "--evaluator",
        tiny_ar_run,
        "--samples",
        tmp_path / "gen.jsonl",
    )
    assert code == 0, err
    header, row = out.splitlines()[:2]
    assert header.split()[:2] == ["S", "gen-PPL"] and row.split()[0] == "-"


@pytest.mark.parametrize(
    "args,match",
    [
        (["eval", "--checkpoint", "CKPT", "--loops", "0"], "positive integer"),
        (["eval", "--checkpoint", "CKPT", "--loops", "1,x"], "positive integer"),
        (["eval", "--checkpoint", "CKPT", "--loops", "2.5"], "positive integer"),
        (["eval", "--checkpoint", "CKPT", "--metric", "bleu"], "unknown eval metric 'bleu'"),
        (["eval", "--checkpoint", "CKPT", "--metric", "zero-shot"], "needs --data"),
        (
            ["eval", "--checkpoint", "CKPT", "--metric", "zero-shot", "--data", "EMPTY"],
            "no text found",
        ),
        (
            ["eval", "--checkpoint", "CKPT", "--metric", "zero-shot", "--data", "SHORT"],
            "fewer than one sequence",
        ),
        (["eval", "--checkpoint", "CKPT", "--metric", "gen-ppl"], "needs --evaluator"),
        (
            ["eval", "--checkpoint", "CKPT", "--metric", "gen-ppl", "--evaluator", "CKPT"],
            "not autoregressive",
        ),
        (["eval", "--metric", "nelbo"], "--checkpoint is required"),
        (
            ["eval", "--checkpoint", "CKPT", "--plot", "OUT/x.pdf", "--batches", "1"],
            "must end in .png",
        ),
        (["plot", "MISSING.json", "--out", "OUT/p.png"], "does not exist"),
    ],
)
def test_errors_are_one_line(args, match, tiny_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("  \n\n")
    (tmp_path / "short.txt").write_text("x = 1\n")
    subst = {
        "CKPT": str(tiny_run),
        "EMPTY": str(tmp_path / "empty"),
        "SHORT": str(tmp_path / "short.txt"),
        "OUT": str(tmp_path),
        "MISSING.json": str(tmp_path / "missing.json"),
    }
    args = [next((a.replace(k, v) for k, v in subst.items() if k in a), a) for a in args]
    code, out, err = cli(capsys, *args)
    assert code == 2, err
    assert match in err and "Traceback" not in err
    errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
    # one error line (progress lines may precede it)
    assert len(errors) == 1 and match in errors[0], err
