"""Classes of bad input, one regression test (or more) per class: each answer is one line (``error: ...``, exit 2,
or a ``LoopMDMError``), never a traceback, and never loses data.

1. output folders (``loopmdm.outputs``): nothing a command did not create is deleted or overwritten;
2. paths are never read as YAML (``--data "corpus #v2"``, ``--data 2024``, ``--data on``);
3. devices this machine does not have (``loopmdm.runtime.pick_device``);
4. text that is not valid UTF-8 (lone surrogates from the shell);
5. CSV edge cases of puzzle files (a UTF-8 BOM, a field over the csv size limit);
6. exit codes: interrupts exit 130 / 143 after saving, a second signal exits without saving, usage errors are one
   line;
7. unbounded sampling requests (steps, samples, template spans).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import run_cli
from loopmdm.checkpoint import (
    list_checkpoints,
    load_model,
    read_latest,
    resolve_checkpoint,
    verify_checkpoint,
)
from loopmdm.config import RunConfig
from loopmdm.errors import CheckpointError, ConfigError, DataError, LoopMDMError


def check_output(*args, **kw):
    from loopmdm.outputs import check_output as check

    return check(*args, **kw)


def one_error_line(err: str) -> str:
    """The only line on stderr, which must be ``error: ...`` (no traceback, no usage box)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


# ============================================================================ 1. output folders


@pytest.fixture(scope="module")
def hf_folder(tiny_run, tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from loopmdm.hf.export import export_hf

    return export_hf(tiny_run, tmp_path_factory.mktemp("hf") / "hf")


def test_import_into_an_existing_run_is_refused_and_the_run_is_untouched(
    hf_folder, run_copy, capsys
):
    before = snapshot(run_copy)
    code, _, err = run_cli(["import", "--hf", hf_folder, "--out", run_copy], capsys)
    assert code == 2
    assert "is not empty" in one_error_line(err)
    assert snapshot(run_copy) == before  # checkpoint, config.json and `latest` as they were


def test_import_into_a_data_folder_is_refused(hf_folder, tiny_corpus, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    code, _, err = run_cli(["import", "--hf", hf_folder, "--out", data], capsys)
    assert code == 2 and "is not empty" in one_error_line(err)
    assert not (data / "checkpoints").exists() and not (data / "config.json").exists()
    # a new folder still works
    code, _, err = run_cli(["import", "--hf", hf_folder, "--out", tmp_path / "new"], capsys)
    assert code == 0, err
    verify_checkpoint(resolve_checkpoint(tmp_path / "new"))


def test_import_of_a_config_without_model_type_says_so(hf_folder, tmp_path, capsys):
    hf = tmp_path / "hf"
    shutil.copytree(hf_folder, hf)
    cfg = json.loads((hf / "config.json").read_text())
    cfg.pop("model_type")
    (hf / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["import", "--hf", hf, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "has no model_type" in one_error_line(err)


@pytest.mark.parametrize("step", [-5, "abc", 2.5, True])
def test_import_refuses_a_step_that_is_not_a_step(hf_folder, tmp_path, step, capsys):
    """An exported config.json whose loopmdm_step is not an integer >= 0 was imported as step_-00005, a run no
    command could load (or a ValueError traceback)."""
    hf = tmp_path / "hf"
    shutil.copytree(hf_folder, hf)
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "loopmdm_step": step}))
    code, _, err = run_cli(["import", "--hf", hf, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "loopmdm_step=" in one_error_line(err) and "integer >= 0" in err
    assert not (tmp_path / "run").exists()


def test_train_into_a_corpus_folder_is_refused_before_any_work(tiny_corpus, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    before = snapshot(data)
    code, _, err = run_cli(
        [
            "train",
            "--out",
            data,
            "--data",
            data,
            "--max-steps",
            "1",
            "--no-progress",
            "--set",
            "train.device=cpu",
        ],
        capsys,
    )
    assert code == 2 and "not a run folder" in one_error_line(err)
    assert snapshot(data) == before and not (data / "metrics.jsonl").exists()


def test_resuming_another_run_into_a_run_folder_is_refused(tiny_cfg, run_copy, tmp_path):
    from loopmdm.train import train

    other = tmp_path / "other"
    shutil.copytree(run_copy, other)
    before = snapshot(run_copy)
    with pytest.raises(CheckpointError, match="holds checkpoints of another run"):
        train(tiny_cfg, run_copy, resume=other, progress=False, log=lambda s: None)
    assert snapshot(run_copy) == before
    # the same run resumed into its own folder is fine (experiments' train_or_reuse, train --resume OUT)
    assert check_output(run_copy, "run", resume=run_copy) == run_copy
    assert check_output(run_copy, "run", resume=resolve_checkpoint(run_copy)) == run_copy


def test_the_output_rule(tmp_path, run_copy):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_output(tmp_path / "file" / "sub", "new")
    with pytest.raises(ConfigError, match="existing file"):
        check_output(tmp_path / "file", "run")
    (tmp_path / "empty").mkdir()
    for kind in ("run", "experiment", "new"):
        check_output(tmp_path / "empty", kind)
        check_output(tmp_path / "missing" / "deeper", kind)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        check_output(run_copy, "run")
    # a run folder without checkpoints yet (killed before the first save) is the run's own
    young = tmp_path / "young"
    young.mkdir()
    (young / "config.json").write_text(json.dumps({"model": {}, "train": {}}))
    (young / "metrics.jsonl").write_text("")
    check_output(young, "run")
    # ... but a transformers folder's config.json is not a run config
    hf = tmp_path / "hfish"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="not a run folder"):
        check_output(hf, "run")
    # experiments: their own results are reused, anything else refused
    exp = tmp_path / "exp"
    (exp / "seed_0").mkdir(parents=True)
    (exp / "results.json").write_text("{}")
    (exp / "loss_vs_flops.png").write_bytes(b"")
    check_output(exp, "experiment")
    (exp / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an experiment folder"):
        check_output(exp, "experiment")


def test_resuming_a_run_from_an_older_checkpoint_in_its_own_folder_is_refused(run_copy, tmp_path):
    """Resuming in place from a checkpoint older than ``latest`` would cut the newer steps' metrics and leave a
    newer checkpoint beside the new ones: refused (branch into a new folder instead). A complete folder newer
    than ``latest`` (a kill before ``latest`` moved) or a damaged newer one does not count."""
    ckpts = run_copy / "checkpoints"
    newest = list_checkpoints(ckpts)[-1]
    older = ckpts / "step_000001"
    shutil.copytree(newest, older)
    with pytest.raises(
        CheckpointError, match=f"would discard its newer checkpoints .{newest.name}"
    ):
        check_output(run_copy, "run", resume=older)
    check_output(run_copy, "run", resume=run_copy)  # from the newest
    check_output(tmp_path / "branch", "run", resume=older)  # a branch in a new folder
    (ckpts / "latest").write_text(older.name)  # killed after the rename, before latest moved
    check_output(run_copy, "run", resume=run_copy)
    (ckpts / "latest").write_text(newest.name)
    (newest / "model.safetensors").write_bytes(b"damaged")
    check_output(run_copy, "run", resume=older)  # the damaged newest is no history to keep


def test_a_latest_that_is_a_folder_is_refused_before_training(run_copy):
    (run_copy / "checkpoints" / "latest").unlink()
    (run_copy / "checkpoints" / "latest").mkdir()
    with pytest.raises(CheckpointError, match="latest is a folder, not the file"):
        check_output(run_copy, "run", resume=run_copy)


def test_resume_refuses_integer_weights_as_sample_does(run_copy):
    """``load_state_dict`` casts an int64 tensor into float weights silently; sampling refused it, resume did
    not."""
    from safetensors.torch import load_file, save_file

    from loopmdm.train import Trainer

    folder = resolve_checkpoint(run_copy)
    path = folder / "model.safetensors"
    state = load_file(path)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].long()
    save_file(state, path)
    index = json.loads((folder / "index.json").read_text())
    index["files"]["model.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()
    index["sizes"]["model.safetensors"] = path.stat().st_size
    (folder / "index.json").write_text(json.dumps(index))
    cfg = RunConfig.from_dict(json.loads((run_copy / "config.json").read_text()))
    with pytest.raises(CheckpointError, match=f"holds {name} as int64"):
        Trainer(cfg, run_copy).resume(run_copy)


def test_resume_cuts_only_the_metrics_after_its_step(tmp_path):
    """Lines after the resumed step go; every other line stays byte for byte, even one that is not JSON or not
    UTF-8; only a last line cut by a kill is dropped."""
    from loopmdm.train.resume import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [
        b'{"step": 1}',
        b"a note of mine",
        b'{"step": 2, "x": "\xff"}',
        b"\xff\xfe",
        b'{"step": 3}',
    ]
    path.write_bytes(b"\n".join(lines) + b'\n{"step": 4, "lo')
    truncate_metrics(path, 2)
    assert path.read_bytes() == b"\n".join(lines[:4]) + b"\n"


def test_an_experiment_refuses_the_folder_of_another_experiment(tmp_path):
    """One experiment's results and summary are never overwritten by another's report."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "results.json").write_text(json.dumps({"experiment": "loop-scaling"}))
    (exp / "summary.md").write_text("the loop-scaling report")
    check_output(exp, "experiment", experiment="loop-scaling")
    with pytest.raises(ConfigError, match="output of 'loopmdm experiment loop-scaling'"):
        check_output(exp, "experiment", experiment="reasoning", dirs=["prefix-sum"])
    # before any report: the budget folders say which experiment it is
    early = tmp_path / "early"
    (early / "budget_0").mkdir(parents=True)
    check_output(early, "experiment", experiment="loop-scaling")
    with pytest.raises(ConfigError, match="would overwrite its results"):
        check_output(early, "experiment", experiment="compute-matched")
    # the reasoning study's interim report names it too
    interim = tmp_path / "interim"
    interim.mkdir()
    (interim / "interim_results.json").write_text(json.dumps({"experiment": "reasoning"}))
    check_output(interim, "experiment", experiment="reasoning")
    with pytest.raises(ConfigError, match="experiment reasoning"):
        check_output(interim, "experiment", experiment="sudoku")


def test_export_loopify_and_experiments_refuse_folders_they_did_not_create(
    tiny_run, tiny_corpus, tmp_path, capsys
):
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    before = snapshot(data)
    for argv in (
        ["loopify", "--from", tiny_run, "--loop-layers", "1:3", "--out", data],
        ["experiment", "attention", "--checkpoint", tiny_run, "--out", data],
    ):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and "not empty" in one_error_line(err), argv
    assert snapshot(data) == before
    code, _, err = run_cli(["export", "--checkpoint", tiny_run, "--out", "/dev/null/hf"], capsys)
    assert code == 2 and "cannot be created" in one_error_line(err)


# ============================================================================ 2. paths are not YAML


@pytest.mark.parametrize("name", ["corpus #v2", "2024", "on", "null", "[a]", "x: y"])
def test_data_path_is_taken_verbatim(name, tiny_corpus, tmp_path, monkeypatch, fake_train, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_corpus, tmp_path / name)
    code, _, err = run_cli(
        ["train", "--out", "o", "--data", name, "--max-steps", "3", "--objective", "mdm"], capsys
    )
    assert code == 0, err
    cfg = fake_train[-1]
    assert cfg.data.source == name and cfg.train.max_steps == 3
    # --set keeps YAML values
    code, _, err = run_cli(
        ["train", "--out", "o", "--set", "train.max_steps=7", "--set", "train.ema=0.99"], capsys
    )
    assert code == 0, err
    assert fake_train[-1].train.max_steps == 7 and fake_train[-1].train.ema == 0.99


# ============================================================================ 3. devices


def test_devices_this_machine_lacks_are_one_line_errors(tiny_run, tiny_cfg, tmp_path, capsys):
    from loopmdm.runtime import pick_device
    from loopmdm.train import train

    mps = getattr(torch.backends, "mps", None)
    have = ["cpu"] + (["mps"] if mps is not None and mps.is_available() else [])
    assert pick_device("cpu") == torch.device("cpu") and pick_device("auto").type in ("cpu", "cuda")
    missing = ["mps"] if "mps" not in have else []
    if not torch.cuda.is_available():
        missing += ["cuda", "cuda:7"]
    elif torch.cuda.device_count() <= 7:
        missing += ["cuda:7"]
    for name in missing:
        with pytest.raises(
            ConfigError, match=f"device='{name}': this machine has .*available: cpu"
        ):
            pick_device(name)
        with pytest.raises(ConfigError, match="this machine has"):
            # eval, sample and serve place the model through load_model
            load_model(tiny_run, device=name)
        cfg = tiny_cfg
        cfg.train.device = name
        with pytest.raises(ConfigError, match=f"train.device='{name}': this machine has"):
            train(cfg, tmp_path / f"run_{name}", progress=False, log=lambda s: None)
        assert not (tmp_path / f"run_{name}").exists()
    with pytest.raises(ConfigError, match="is not a device; use auto, cpu, cuda, cuda:N or mps"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        code, _, err = run_cli(["eval", "--checkpoint", tiny_run, "--device", "cuda"], capsys)
        assert code == 2 and "no CUDA device; available: cpu" in one_error_line(err)


def test_device_messages_on_a_machine_with_one_gpu(monkeypatch):
    """The CUDA branches without a GPU: torch reports one device; cuda:N beyond it names the ones there are."""
    from loopmdm import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    assert runtime.available_devices() == ["cpu", "cuda:0"]
    assert runtime.pick_device("cuda:0") == torch.device("cuda", 0)
    assert runtime.pick_device("auto") == torch.device("cuda")
    with pytest.raises(
        ConfigError,
        match=r"--device='cuda:3': this machine has 1 CUDA device \(cuda:0..cuda:0\); "
        r"available: cpu, cuda:0",
    ):
        runtime.pick_device("cuda:3", "--device")


# ============================================================================ 4. text that is not UTF-8


def test_prompt_and_template_that_are_not_utf8(tiny_run, capsys):
    from loopmdm.sampling import generate

    # bytes 0xff / 0xfe
    for flag, text in (("--prompt", "def \udcff"), ("--template", "x [MASK:3] \udcfe")):
        code, _, err = run_cli(
            ["sample", "--checkpoint", tiny_run, flag, text, "--steps", "2"], capsys
        )
        assert code == 2 and "not valid UTF-8" in one_error_line(err), err
    model, tok, _ = load_model(tiny_run)
    with pytest.raises(
        ConfigError, match=r"template is not valid UTF-8 text \(lone surrogate U\+D800"
    ):
        generate(model, tok, steps=2, template="[MASK:2] \ud800")


# ============================================================================ 5. CSV puzzle files


def test_puzzle_csv_with_a_bom_and_with_an_overlong_field(tmp_path):
    from loopmdm.data.sudoku import generate_puzzles, read_puzzles

    pairs = generate_puzzles(3, (30, 34), seed=0)
    rows = "".join(f"{p.puzzle},{p.solution}\n" for p in pairs)
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + f"quizzes,solutions\n{rows}".encode())
    assert len(read_puzzles(str(bom)).pairs) == 3
    jsonl = tmp_path / "excel.jsonl"
    jsonl.write_bytes(
        b"\xef\xbb\xbf"
        + "".join(
            json.dumps({"puzzle": p.puzzle, "solution": p.solution}) + "\n" for p in pairs
        ).encode()
    )
    assert len(read_puzzles(str(jsonl)).pairs) == 3
    huge = tmp_path / "huge.csv"
    huge.write_text(f'quizzes,solutions\n{rows}"{"1" * (csv.field_size_limit() + 10)},x\n')
    with pytest.raises(
        DataError, match=r"huge.csv' line 5 has a field longer than [\d,]+ characters"
    ) as e:
        read_puzzles(str(huge))
    assert "\n" not in str(e.value)


# ============================================================================ 6. exit codes, signals, usage errors


@pytest.mark.parametrize(
    "argv,phrase",
    [
        (["train", "--bogus"], "No such option: --bogus"),
        (["train"], "Missing option '--out'"),
        (["sample", "--checkpoint", "x", "--steps", "abc"], "Invalid value for '--steps'"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_usage_errors_are_one_line(argv, phrase, capsys):
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    line = one_error_line(err)
    assert phrase in line and "--help" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["experiment", "reasoning", "--tasks", ","],
        ["experiment", "reasoning", "--models", " , "],
        ["experiment", "sudoku", "--models", ","],
    ],
)
def test_a_list_option_that_names_nothing_is_refused(argv, tmp_path, capsys):
    """``--tasks ,`` ran nothing and exited 0, as if the work were done."""
    code, _, err = run_cli([*argv, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "names nothing; pass e.g." in one_error_line(err)
    assert not (tmp_path / "out").exists()


def test_help_still_works(capsys):
    code, out, _ = run_cli(["train", "--help"], capsys)
    assert code == 0 and "--out" in out


def launch_train(run: Path, corpus: Path, cache: Path) -> subprocess.Popen:
    args = [
        "train",
        "--out",
        str(run),
        "--data",
        str(corpus),
        "--max-steps",
        "5000",
        "--no-progress",
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
        "train.eval_every=10000",
        "--set",
        "train.save_every=10000",
        "--set",
        "train.device=cpu",
        "--set",
        "data.val_fraction=0.2",
        "--set",
        f"data.cache_dir={cache}",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(
        [sys.executable, "-c", "from loopmdm.cli import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_train_saves_and_exits_non_zero(sig, code, tiny_corpus, tmp_path):
    run = tmp_path / "run"
    p = launch_train(run, tiny_corpus, tmp_path / "cache")
    deadline = time.time() + 240
    while (
        p.poll() is None
        and time.time() < deadline
        and not (
            (run / "metrics.jsonl").is_file()
            and (run / "metrics.jsonl").read_text().count("\n") >= 2
        )
    ):
        time.sleep(0.05)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-2000:]  # `train && sample` stops here
    assert "Traceback" not in err and f"stopped by {sig.name}" in err
    verify_checkpoint(resolve_checkpoint(run))


def test_second_signal_exits_at_once_without_saving(tiny_cfg, tmp_path, capfd):
    from loopmdm.train import Trainer

    tiny_cfg.train.max_steps, tiny_cfg.train.save_every, tiny_cfg.train.eval_every = 50, 2, 50
    tr = Trainer(tiny_cfg, tmp_path / "run", progress=False, log=lambda s: None)
    step, handler = tr._step, signal.getsignal(signal.SIGINT)

    def two_interrupts(idx, loops):
        if tr.step == 3:  # checkpoint step 2 exists; interrupt twice inside step 4
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return step(idx, loops)

    tr._step = two_interrupts
    with pytest.raises(KeyboardInterrupt) as e:  # loopmdm.train.SecondSignal
        tr.fit()
    assert getattr(e.value, "exit_code", None) == 130
    assert read_latest(tmp_path / "run" / "checkpoints") == "step_000002"
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step_000002"]
    err = capfd.readouterr().err
    assert "second SIGINT: exiting now without saving" in err
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handlers are back


# ============================================================================ 7. unbounded sampling requests


def test_sampling_steps_are_refused_above_a_maximum_and_clamped_below(tiny_run, capsys):
    t0 = time.time()
    code, _, err = run_cli(["sample", "--checkpoint", tiny_run, "--steps", str(10**12)], capsys)
    assert code == 2 and "exceeds the supported maximum" in one_error_line(err)
    code, out, err = run_cli(
        [
            "sample",
            "--checkpoint",
            tiny_run,
            "--steps",
            "100000",
            "--num-samples",
            "1",
            "--loops",
            "1",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert "note: --steps 100000 is more than the 32 positions to generate; using --steps 32" in err
    res = json.loads(out)
    assert res["steps"] == 32 and res["results"][0]["report"]["network_calls"] <= 32
    assert time.time() - t0 < 120


def test_huge_sample_counts_and_template_spans_are_refused_before_allocating(tiny_run, capsys):
    from loopmdm.sampling import build_canvas, generate

    model, tok, _ = load_model(tiny_run)
    with pytest.raises(
        ConfigError, match=r"num_samples=1000000000 at L=32 tokens needs about .* GiB .*use at most"
    ):
        generate(model, tok, num_samples=10**9, steps=2)
    for template in ("x [MASK:99999999999] y", "[MASK:" + "9" * 5000 + "]", "[MASK:20] [MASK:20]"):
        with pytest.raises(ConfigError, match="longer than the model window"):
            build_canvas(tok, 1, None, 32, template=template)
    code, _, err = run_cli(
        ["sample", "--checkpoint", tiny_run, "--template", "x [MASK:99999999999] y"], capsys
    )
    assert code == 2 and "longer than the model window of 32" in one_error_line(err)


def test_serve_answers_a_huge_template_span_with_422(tiny_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from loopmdm.serve import create_app

    with TestClient(create_app(tiny_run, timeout_s=30)) as client:
        r = client.post("/api/generate", json={"template": "x [MASK:99999999999] y", "steps": 2})
    assert r.status_code == 422 and "longer than the model window" in r.json()["error"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--loops", "1000000000000"],
        ["--policy-opt", "loops=99999999999999999999"],
        ["--policy", "converge", "--policy-opt", "s_max=99999999999999999999"],
    ],
)
def test_loop_counts_are_refused_above_a_maximum_before_sampling(tiny_run, argv, capsys):
    """A typo in S ran for hours (one network call loops S times); an overflowing s_max was a traceback."""
    t0 = time.time()
    code, _, err = run_cli(["sample", "--checkpoint", tiny_run, "--steps", "2", *argv], capsys)
    assert code == 2 and "exceeds the supported maximum of 1024 loops" in one_error_line(err)
    assert time.time() - t0 < 60


def test_loops_given_twice_are_refused(tiny_run, capsys):
    argv = ["sample", "--checkpoint", tiny_run, "--loops", "3", "--policy-opt", "loops=2"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "both set S" in one_error_line(err)


def test_serve_bounds_the_loops_of_one_request(tiny_run):
    """The server cancels a request between denoising steps only, so S is bounded per request (a request with
    S = 10**9 held a worker for good)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from loopmdm.serve import create_app

    with TestClient(create_app(tiny_run, timeout_s=30)) as client:
        limit = client.get("/api/info").json()["limits"]["max_loops"]
        r = client.post("/api/generate", json={"policy_options": {"loops": 10**9}, "steps": 2})
        assert r.status_code == 422 and f"limit of {limit} loops" in r.json()["error"]
        r = client.post(
            "/api/generate", json={"policy": "converge", "policy_options": {"s_max": limit + 1}}
        )
        assert r.status_code == 422 and "policy_options.s_max" in r.json()["error"]


def test_library_errors_stay_library_errors():
    assert issubclass(ConfigError, LoopMDMError) and issubclass(CheckpointError, LoopMDMError)


# --------------------------------------------------------------------------- 9. Python API inputs


@pytest.mark.parametrize(
    "x, t, message",
    [
        (torch.zeros(1, 8), None, "integer token ids"),
        (torch.zeros(8, dtype=torch.long), None, r"\[batch, length\]"),
        (torch.full((1, 8), 99, dtype=torch.long), None, r"in \[0, 20\)"),
        (torch.full((1, 8), -1, dtype=torch.long), None, r"in \[0, 20\)"),
        (torch.zeros(1, 8, dtype=torch.long), torch.ones(5), r"one time per row \[1\]"),
        (torch.zeros(1, 8, dtype=torch.long), torch.tensor([float("nan")]), r"in \[0, 1\]"),
    ],
)
def test_model_inputs_are_checked_with_one_line_errors(x, t, message):
    from loopmdm.errors import InputError
    from loopmdm.model import LoopMDM, ModelConfig

    m = LoopMDM(
        ModelConfig(
            vocab_size=20,
            max_seq_len=8,
            d_model=16,
            n_heads=2,
            n_layers=3,
            n_h=1,
            n_m=1,
            n_o=1,
            cond_dim=8,
        )
    )
    with pytest.raises(InputError, match=message) as e:
        m(x, torch.ones(1) if t is None else t)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)


def test_an_exported_folder_passed_to_loopify_suggests_import(hf_folder, tmp_path, capsys):
    code, _, err = run_cli(
        ["loopify", "--from", hf_folder, "--loop-layers", "1:3", "--out", tmp_path / "o"], capsys
    )
    assert code == 2 and "loopmdm import --hf DIR --out RUN" in one_error_line(err)


def test_an_exported_folder_passed_to_sample_suggests_import(hf_folder, capsys):
    code, _, err = run_cli(["sample", "--checkpoint", hf_folder, "--steps", "2"], capsys)
    assert code == 2 and "loopmdm import --hf" in err.strip().splitlines()[-1]


# --------------------------------------------------------------------------- 10. models too big for this machine


def test_huge_models_are_refused_before_allocating(tiny_run, tiny_cfg, tmp_path, capsys):
    from loopmdm.backbones import build_model
    from loopmdm.backbones.base import check_model_memory
    from loopmdm.model import LoopMDM, ModelConfig
    from loopmdm.model.flops import parameter_count
    from loopmdm.train import train

    for kw in (
        dict(),
        dict(time_conditioning="none", tie_embeddings=False, learned_positions=True),
        dict(input_injection=True, loop_embedding=True, mlp_ratio=2.5),
    ):
        cfg = ModelConfig(
            vocab_size=37,
            max_seq_len=16,
            d_model=24,
            n_heads=2,
            n_layers=5,
            n_h=1,
            n_m=2,
            n_o=2,
            cond_dim=8,
            **kw,
        )
        assert parameter_count(cfg) == LoopMDM(cfg).num_parameters()
    with pytest.raises(
        ConfigError, match=r"d_model=60,000.*GiB, but only 1.0 GiB of memory is available; lower"
    ):
        check_model_memory(ModelConfig(d_model=60000), available=2**30)
    t0 = time.time()
    tiny_cfg.model.d_model = 60000
    with pytest.raises(
        ConfigError,
        match=r"d_model=60,000, .* parameters, whose fp32 weights need about [\d,.]+ GiB",
    ):
        train(tiny_cfg, tmp_path / "big", progress=False, log=lambda s: None)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    folder = resolve_checkpoint(run)
    (folder / "index.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(vocab_size=16_000_000, d_model=65536)
    (folder / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(["sample", "--checkpoint", run, "--steps", "2"], capsys)
    assert code == 2 and "vocab_size=16,000,000, d_model=65,536" in one_error_line(err)
    assert time.time() - t0 < 60
    with pytest.raises(ConfigError, match="of memory is available"):
        build_model(ModelConfig(vocab_size=16_000_000, d_model=65536, n_heads=2))


# --------------------------------------------------------------------------- 11. messages that do not mislead


def test_paths_that_exist_but_are_not_files_or_folders_say_what_they_are(tmp_path, capsys):
    from loopmdm.data.sources import PathSource
    from loopmdm.data.sudoku import read_puzzles
    from loopmdm.data.tokenizer import TextTokenizer

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    (tmp_path / "folder").mkdir()
    for name, kind in (
        ("fifo", "is a FIFO"),
        ("loop", "is a symlink loop"),
        ("broken", "is a broken symlink"),
    ):
        path = tmp_path / name
        code, _, err = run_cli(["sample", "--checkpoint", path, "--steps", "2"], capsys)
        line = one_error_line(err)
        assert (
            code == 2
            and f"checkpoint path {str(path)!r} {kind}" in line
            and "does not exist" not in line
        )
        with pytest.raises(DataError, match=f"data path .* {kind}") as e:
            PathSource().read(str(path), None)
        assert "does not exist" not in str(e.value)
    with pytest.raises(DataError, match="puzzle file .*folder' is a folder, not a file"):
        read_puzzles(str(tmp_path / "folder"))
    with pytest.raises(DataError, match="tokenizer file .*fifo' is a FIFO"):
        TextTokenizer.load(tmp_path / "fifo")
    code, _, err = run_cli(["sample", "--checkpoint", tmp_path / "missing", "--steps", "2"], capsys)
    assert code == 2 and "does not exist" in one_error_line(err)


def test_text_prompts_to_a_sudoku_model_say_it_is_a_sudoku_model():
    from loopmdm.data.sudoku.dataset import sudoku_tokenizer
    from loopmdm.sampling import build_canvas

    tok = sudoku_tokenizer()
    for kw in (dict(prompt="def hello():"), dict(template="x [MASK:3] y")):
        with pytest.raises(
            ConfigError, match=r"this is a Sudoku model .*a board .*loopmdm eval --metric sudoku"
        ) as e:
            build_canvas(tok, 1, None, 81, **kw)
        assert "mask token itself" not in str(e.value)
    assert build_canvas(tok, 1, None, 81, prompt="123").x[0, :3].tolist() == [1, 2, 3]


def test_a_state_dict_mismatch_names_the_tensor_and_both_shapes(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    folder = resolve_checkpoint(run)
    (folder / "index.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    config["model"]["mlp_ratio"] = 2.0
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"tensor head\.blocks\.0\.mlp\.fc\.weight has shape \[128, 32\] in the "
        r"file but the model expects \[64, 32\]",
    ) as e:
        load_model(run)
    assert "Error(s) in loading state_dict" not in str(e.value) and "\n" not in str(e.value)


def test_cache_dir_errors_name_the_key(tiny_corpus, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for cache, phrase in (
        (tmp_path / "file", "is a file, not a folder"),
        (tmp_path / "file" / "sub", "cannot be created ('.*file' is a file)"),
    ):
        code, _, err = run_cli(
            [
                "train",
                "--out",
                tmp_path / "o",
                "--data",
                tiny_corpus,
                "--max-steps",
                "1",
                "--set",
                f"data.cache_dir={cache}",
            ],
            capsys,
        )
        line = one_error_line(err)
        assert code == 2 and f"data.cache_dir={str(cache)!r} {phrase.split(' (')[0]}" in line, line
        assert "set data.cache_dir to a writable folder" in line
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- 12. newcomer friction


def test_the_model_card_snippet_trusts_remote_code_explicitly(hf_folder):
    import re

    card = (hf_folder / "README.md").read_text()
    calls = re.findall(r"\w+\.from_pretrained\([^)]*\)", card)
    assert len(calls) >= 2 and any(c.startswith("AutoTokenizer") for c in calls), calls
    assert all("trust_remote_code=True" in c for c in calls), calls
    assert 'PATH = "' in card


def test_eval_with_few_batches_notes_that_the_nelbo_is_noisy(tiny_run, capsys):
    from loopmdm.cli.eval_cmd import precision_note

    code, out, err = run_cli(
        ["eval", "--checkpoint", tiny_run, "--batches", "2", "--loops", "1", "--json"], capsys
    )
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("note: this NELBO is a noisy estimate")]
    assert len(notes) == 1 and "--batches" in notes[0] and "--rel-stderr" in notes[0]
    assert json.loads(out)["results"]
    quiet = {"primary": "nelbo", "results": [{"nelbo": 4.0, "stderr": 0.01}]}
    assert precision_note(quiet, 16) is None
    assert "up to 5.0%" in precision_note(
        {"primary": "nelbo", "results": [{"nelbo": 4.0, "stderr": 0.2}]}, 16
    )
    assert "only --batches 2" in precision_note(quiet, 2)
    assert precision_note({"primary": "accuracy", "results": []}, 2) is None


def test_help_is_not_cut_and_list_options_have_readable_metavars(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    for argv, wanted in (
        (["train", "--help"], "--set KEY=VALUE"),
        (["eval", "--help"], "--loops 1,2,4"),
        (["sample", "--help"], "--loops 1,2,4"),
        (["loopify", "--help"], "--curriculum-steps "),
    ):
        code, out, _ = run_cli(argv, capsys)
        assert code == 0 and wanted in out, out
        assert "list[" not in out and "…" not in out and "-ste..." not in out
        assert max(len(line) for line in out.splitlines()) <= 100


def test_missing_extras_say_how_to_install_them_from_a_clone(monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_fastapi(name, *a, **k):
        if name.split(".")[0] in ("fastapi", "uvicorn"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    code, _, err = run_cli(["serve", "--checkpoint", "x"], capsys)
    assert (
        code == 2
        and "pip install 'loopmdm[serve]' (from a clone: pip install -e '.[serve]')" in err
    )
