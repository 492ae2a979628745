"""benchmarks/gpu_evidence.py: every section runs on CPU with --smoke and the JSON is rewritten after each; a
failing or killed section keeps the others; unknown sections and a missing GPU are one-line errors (exit 2); the
per-section time caps; the peak-FLOPs table used for MFU."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_evidence.py"
# as when the script runs: its folder first (for bench_hardware)
if str(SCRIPT.parent) not in sys.path:
    sys.path.insert(0, str(SCRIPT.parent))
from bench_hardware import peak_flops, peak_flops_for_name  # noqa: E402

ALL = ["throughput", "syncs", "profile", "loss", "sampling", "trio", "sudoku"]


def load_script():
    name = "gpu_evidence_under_test"
    # registered first: its dataclasses look their module up while being defined
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run(args, tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if k != "GPU_EVIDENCE_FAIL"}
    full.update(
        HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", LOOPMDM_CACHE=str(tmp_path / "cache"), **env
    )
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=full, timeout=600
    )


def read(out: Path) -> dict:
    return json.loads((out / "gpu_evidence.json").read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    p = run(["--smoke", "--out", str(tmp / "out")], tmp)
    return p, tmp / "out"


def test_smoke_runs_every_section(smoke):
    p, out = smoke
    assert p.returncode == 0, p.stderr[-3000:]
    res = read(out)
    assert res["smoke"] and res["finished"] and res["sections_requested"] == ALL
    assert list(res["sections"]) == ALL
    for name, entry in res["sections"].items():
        assert entry["status"] == "ok", (name, entry)
        assert entry["wall_s"] >= 0 and entry["cap_s"] > 0 and entry["share_s"] > 0
    sec = {k: v["result"] for k, v in res["sections"].items()}
    runs = sec["throughput"]["runs"]
    assert {(r["loops"], r["compile"]) for r in runs} == {
        (1, False),
        (2, False),
        (1, True),
        (2, True),
    }
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in runs)
    # the OOM fallback ran
    assert runs[0]["oom_batches"] == [8] and all(r["batch"] == 4 for r in runs)
    assert all(
        r["compiled_blocks"] > 0 and r["compile_s"] is not None for r in runs if r["compile"]
    )
    assert sec["throughput"]["precision"] == "bf16 autocast"
    # counted on the CPU too (SyncCounter): no sync in a training step at a given S nor in a denoising step
    syncs = sec["syncs"]
    assert syncs["train_step"]["syncs"] == 0 and "cuda_syncs" not in syncs["train_step"]
    assert syncs["denoising"]["per_step"] == 0 and syncs["denoising"]["fixed"] <= 3
    assert sec["profile"]["sdpa_backend"] != "none seen" and (out / "profile_top.txt").is_file()
    assert sec["loss"]["ratio_lce_over_gemms"] > 0
    assert set(sec["sampling"]["runs"]) == {"fp32", "bf16"}
    flops = [r["planned_flops"] for r in sec["trio"]["plan"]["runs"]]
    assert (max(flops) - min(flops)) / max(flops) < 0.02
    assert "no BPE" in sec["trio"]["tokenizer"]
    assert (out / "trio" / "results.json").is_file() and (out / "sudoku" / "results.json").is_file()
    assert "wall time per section" in p.stdout


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path):
    out = tmp_path / "out"
    p = run(
        ["--smoke", "--out", str(out), "--sections", "sampling,loss,syncs"],
        tmp_path,
        GPU_EVIDENCE_FAIL="loss",
    )
    assert p.returncode == 1, p.stderr[-3000:]
    res = read(out)
    s = res["sections"]
    # the script's order, whatever the order asked for
    assert list(s) == ["syncs", "loss", "sampling"]
    assert s["syncs"]["status"] == "ok" and s["sampling"]["status"] == "ok" and res["finished"]
    assert s["loss"]["status"].startswith("error: RuntimeError: forced failure")
    assert "\n" not in s["loss"]["status"] and s["loss"]["traceback"]
    assert "loss" in p.stderr and "Traceback" not in p.stderr


def test_a_killed_section_keeps_the_earlier_ones(tmp_path):
    out = tmp_path / "out"
    p = run(
        ["--smoke", "--out", str(out), "--sections", "syncs,loss"],
        tmp_path,
        GPU_EVIDENCE_FAIL="loss:kill",
    )
    assert p.returncode == 3
    res = read(out)
    assert res["sections"]["syncs"]["status"] == "ok" and "result" in res["sections"]["syncs"]
    assert res["sections"]["loss"]["status"] == "running" and not res["finished"]


def test_a_used_up_budget_skips_sections(tmp_path):
    out = tmp_path / "out"
    p = run(["--smoke", "--out", str(out), "--sections", "syncs,loss", "--budget-s", "0"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert {e["status"] for e in read(out)["sections"].values()} == {"skipped: time cap"}


def test_unknown_section_is_one_line_and_exit_2(tmp_path):
    p = run(["--smoke", "--out", str(tmp_path / "out"), "--sections", "throughput,bogus"], tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    line = p.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error:") and "'bogus'" in line
    assert all(name in line for name in ALL)
    assert not (tmp_path / "out" / "gpu_evidence.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    p = run(["--out", str(tmp_path / "out")], tmp_path)
    assert p.returncode == 2 and "no CUDA device" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_budget_split_and_carry_over():
    ge = load_script()
    shares = ge.split_budget(420, ALL)
    assert sum(shares.values()) == pytest.approx(420)
    assert shares["throughput"] == pytest.approx(126) and shares["syncs"] == pytest.approx(21)
    assert shares["trio"] == pytest.approx(63) and shares["sudoku"] == pytest.approx(63)
    sub = ge.split_budget(100, ["loss", "trio"])  # renormalised over the sections asked for
    assert sub["loss"] == pytest.approx(40) and sub["trio"] == pytest.approx(60)

    b = ge.Budget(100, ["loss", "sampling", "trio"])  # shares 25, 37.5, 37.5
    assert b.cap("loss") == pytest.approx(25)
    b.charge("loss", 5)  # 20 s unused: carried over
    assert b.cap("sampling") == pytest.approx(57.5)
    b.charge("sampling", 100)  # overran by 42.5 s: the next cap shrinks
    assert b.cap("trio") == pytest.approx(-5)  # <= 0: the driver skips it


def test_parse_sections_orders_and_rejects():
    ge = load_script()
    assert ge.parse_sections("sudoku, loss,loss") == ["loss", "sudoku"]
    assert ge.parse_sections(",".join(ALL)) == ALL
    with pytest.raises(ge.ConfigError, match="choose among: throughput, syncs"):
        ge.parse_sections("trhoughput")
    with pytest.raises(ge.ConfigError):
        ge.parse_sections(" , ")
    assert ge.fit_count(10.0, 2.0, 1, 100) == 5 and ge.fit_count(-3.0, 2.0, 2, 100) == 2
    assert ge.fit_count(1e6, 0.001, 1, 64) == 64


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA GH200 480GB", 989),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_peak_table(name, tflops):
    peak = peak_flops_for_name(name)
    assert (peak is None) if tflops is None else peak == pytest.approx(tflops * 1e12)


def test_peak_on_cpu_is_unknown():
    assert peak_flops(torch.device("cpu")) is None and peak_flops("cpu") is None
