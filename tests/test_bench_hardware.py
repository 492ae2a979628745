"""benchmarks/bench_hardware.py: the CPU bf16 guard that keeps bench_train / bench_peer from hanging on machines
that emulate bf16 (and from writing bf16 figures that would not compare)."""

import json
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
from bench_hardware import SLOW_BF16_SHARE, slow_bf16_note  # noqa: E402


def timings(fp32: float, bf16: float):
    return lambda dtype: {torch.float32: fp32, torch.bfloat16: bf16}[dtype]


def test_bf16_is_skipped_only_when_it_runs_far_below_the_fp32_rate():
    # an AVX2-only CPU: bf16 about 1% of fp32
    note = slow_bf16_note(seconds=timings(0.001, 0.1))
    assert note is not None and "bf16 skipped" in note and "1.0% of the fp32 rate" in note
    # AVX-512 BF16 / AMX: bf16 as fast as fp32 or faster
    assert slow_bf16_note(seconds=timings(0.001, 0.0005)) is None
    assert slow_bf16_note(seconds=timings(0.001, 0.001 / SLOW_BF16_SHARE)) is None


def test_bench_train_runs_fp32_only_where_bf16_is_emulated(tmp_path):
    """The whole script at a toy size: on a machine without bf16 instructions it writes fp32 rows and the note;
    elsewhere both precisions."""
    out = tmp_path / "train.json"
    code = (
        "import sys; sys.argv = ['bench_train.py', '--d-model', '32', '--n-heads', '2', "
        "'--seq-len', '16', '--batch', '2', '--vocab', '64', '--s-max', '2', '--steps', '1', '--rounds', '1', "
        f"'--sections', 'throughput,profile', '--out', r'{out}']; "
        "import bench_train; bench_train.matmul_peak.__defaults__ = (128, 2, 1); "
        "bench_train.app()"
    )
    subprocess.run([sys.executable, "-c", code], cwd=BENCH, check=True, capture_output=True)
    res = json.loads(out.read_text())
    precisions = {r["precision"] for r in res["throughput"]}
    if res["bf16_skipped"]:
        assert precisions == {"fp32"} and "profile_bf16" not in res
    else:
        assert precisions == {"fp32", "bf16"} and "profile_bf16" in res
