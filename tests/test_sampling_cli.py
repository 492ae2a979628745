"""``loopmdm sample``: sampler / policy / options / template through the CLI, --json, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import run_cli


def run(*args, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, "-c", "from loopmdm.cli import main; main()", "sample", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr[-2000:]}")
    return p


def test_sample_cli_policy_and_template_json(tiny_run):
    p = run(
        "--checkpoint",
        str(tiny_run),
        "--sampler",
        "cached",
        "--sampler-opt",
        "granularity=batch",
        "--policy",
        "converge",
        "--policy-opt",
        "threshold=0.1",
        "--policy-opt",
        "criterion=kl",
        "--template",
        "def f(x):\n[MASK:5]\n    return x",
        "--steps",
        "6",
        "--num-samples",
        "2",
        "--top-k",
        "20",
        "--json",
    )
    out = json.loads(p.stdout)
    assert out["sampler"] == "cached" and out["policy"] == "converge"
    (res,) = out["results"]
    # s_max: training S_max
    assert res["policy_options"] == {"threshold": 0.1, "criterion": "kl", "s_max": 3}
    assert len(res["samples"]) == 2 and all(s.startswith("def f(x):") for s in res["samples"])
    rep = res["report"]
    assert (
        rep["network_calls"] >= 1
        and rep["loop_iterations"] >= rep["network_calls"]
        and rep["flops"] > 0
    )


def test_sample_cli_fixed_loops_text_output(tiny_run):
    p = run(
        "--checkpoint",
        str(tiny_run),
        "--loops",
        "1,5",
        "--steps",
        "3",
        "--num-samples",
        "1",
        "--prompt",
        "def",
        "--sampler",
        "semi_ar",
        "--sampler-opt",
        "block_length=16",
    )
    assert "S=1 sample 0" in p.stdout and "S=5 sample 0" in p.stdout
    assert p.stdout.count("----- compute: network calls 3 | loop iterations") == 2


def test_sample_cli_writes_one_trajectory_per_loop_count(tiny_run, tmp_path):
    p = run(
        "--checkpoint",
        str(tiny_run),
        "--loops",
        "1,2",
        "--steps",
        "4",
        "--num-samples",
        "1",
        "--trajectory",
        str(tmp_path / "traj.html"),
        "--json",
    )
    paths = [r["trajectory"] for r in json.loads(p.stdout)["results"]]
    assert paths == [str(tmp_path / "traj.S1.html"), str(tmp_path / "traj.S2.html")]
    for path in paths:
        html = open(path, encoding="utf-8").read()
        assert html.lower().startswith("<!doctype html>") and "reveal_step" in html
    bad = run(
        "--checkpoint",
        str(tiny_run),
        "--steps",
        "2",
        "--trajectory",
        str(tmp_path / "t.txt"),
        check=False,
    )
    assert (
        bad.returncode == 2
        and "unknown format '.txt'" in bad.stderr
        and "Traceback" not in bad.stderr
    )


@pytest.mark.parametrize(
    "args,match",
    [  # the library's checks are tested in test_sampling.py; here the plumbing
        (["--policy", "oracle"], "unknown loop policy 'oracle'; choose one of: converge, fixed"),
        (["--template", "nothing to fill"], "no span to fill"),
        (
            ["--policy", "schedule", "--policy-opt", "s_min=4", "--policy-opt", "s_max=2"],
            "S_min <= S_max",
        ),
        (["--policy", "converge", "--loops", "3"], "--loops applies to --policy fixed"),
        (["--policy-opt", "loops"], "must look like name=value"),
    ],
)
def test_sample_cli_errors_are_one_line(tiny_run, args, match):
    p = run("--checkpoint", str(tiny_run), *args, check=False)
    assert p.returncode == 2, p.stderr
    assert match in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_bad_trajectory_paths_are_refused_before_generating(
    tiny_run, tmp_path, capsys, monkeypatch
):
    import loopmdm.cli.sample_cmd as sample_cmd

    def boom(*a, **k):
        raise AssertionError("generated before checking --trajectory")

    monkeypatch.setattr(sample_cmd, "generate", boom)
    for bad, why in (
        (tmp_path / "out.txt", "unknown format"),
        (tmp_path, "unknown format"),
        (tmp_path / "f.html" / "x.html", "cannot be written"),
    ):
        if why == "cannot be written":
            (tmp_path / "f.html").write_text("a file, not a folder")
        code, _, err = run_cli(
            ["sample", "--checkpoint", tiny_run, "--steps", "2", "--trajectory", bad], capsys
        )
        assert code == 2 and why in err.strip().splitlines()[-1]


def test_sample_in_bf16_on_the_cpu(tiny_run, capsys):
    code, out, err = run_cli(
        [
            "sample",
            "--checkpoint",
            tiny_run,
            "--steps",
            "4",
            "--num-samples",
            "1",
            "--precision",
            "bf16",
            "--device",
            "cpu",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out)["results"][0]["report"]["network_calls"] == 4
    code, _, err = run_cli(["sample", "--checkpoint", tiny_run, "--precision", "fp16"], capsys)
    assert code == 2 and "fp32 or bf16" in err


def test_without_loops_a_plain_model_samples_at_the_s_it_was_trained_with(
    tiny_corpus, tmp_path, capsys
):
    """A model trained with S fixed at 1 (a plain MDM with a mid block, as the reasoning study's calibration and
    baselines) samples at S = 1 when no --loops is given, not at the config's unused s_max."""
    from conftest import make_tiny_cfg
    from loopmdm.train import train

    cfg = make_tiny_cfg(tiny_corpus, tmp_path / "cache")
    cfg.diffusion.loop_dist, cfg.diffusion.s_fixed = "fixed", 1
    assert cfg.diffusion.s_max > 1
    cfg.train.max_steps = cfg.train.eval_every = cfg.train.save_every = 2
    train(cfg, tmp_path / "plain", progress=False, log=lambda s: None)
    for extra in ([], ["--policy", "converge"]):
        code, out, err = run_cli(
            ["sample", "--checkpoint", tmp_path / "plain", "--steps", "2", "--num-samples", "1"]
            + extra
            + ["--json"],
            capsys,
        )
        assert code == 0, err
        assert json.loads(out)["results"][0]["report"]["mean_loops"] == 1.0
