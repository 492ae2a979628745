"""benchmarks/gpu_evidence.py: the one-call GPU script runs end to end on CPU with --smoke, and refuses to run
without a GPU otherwise (one line, exit code 2)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_evidence.py"


def run(args, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", LOOPMDM_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


def test_smoke_runs_every_section(tmp_path):
    p = run(["--smoke", "--out", str(tmp_path / "out")], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "gpu_evidence.json").read_text())
    assert res["smoke"] and set(res["sections"]) == {"throughput", "compute_matched", "sudoku"}
    tp = res["sections"]["throughput"]["runs"]
    assert [r["loops"] for r in tp] == [1, 2] and all(r["tokens_per_s"] > 0 for r in tp)
    plan = res["sections"]["compute_matched"]["plan"]
    flops = [r["planned_flops"] for r in plan["runs"]]
    assert (max(flops) - min(flops)) / max(flops) < 0.02
    assert (tmp_path / "out" / "sudoku" / "results.json").is_file()
    assert "wall time per section" in p.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_2(tmp_path):
    p = run(["--out", str(tmp_path / "out")], tmp_path)
    assert p.returncode == 2 and "no CUDA device" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
