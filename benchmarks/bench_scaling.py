"""Data-parallel scaling on CPU with torchrun + Gloo: training tokens/s with 1 and 2 processes.

This shows that the distributed path works end to end (torchrun -> DDP -> rank-0 metrics) and what it costs
on this machine; it does not claim CPU speed-ups. Each configuration runs

    torchrun --standalone --nproc_per_node N -m loopmdm.train --out DIR --preset tiny ... --max-steps K

with OMP threads per process set so that N x threads stays within the cores, and reads the global-batch
tokens/s that rank 0 logs in metrics.jsonl (median over the steps after the first ``--skip``).

    python benchmarks/bench_scaling.py --out benchmarks/results/scaling_cpu.json
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def run(nproc: int, threads: int, steps: int, sets: dict, workdir: Path, tag: str = "") -> dict:
    out = workdir / f"run_n{nproc}_t{threads}{tag}"
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "loopmdm.train",
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--max-steps",
        str(steps),
        "--no-progress",
        "--set",
        f"train.threads={threads}",
        *args,
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"torchrun failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"nproc": nproc, "threads_per_proc": threads, "rows": rows, "wall_s": wall}


@app.command()
def main(
    steps: int = 12,
    skip: int = 2,
    batch: int = 16,
    seq_len: int = 128,
    d_model: int = 256,
    vocab: int = 2048,
    cores: int = typer.Option(0, help="CPU cores to use in total (0 = os.cpu_count())."),
    out: Path = typer.Option(Path("benchmarks/results/scaling_cpu.json")),
) -> None:
    """Tokens/s of the tiny preset's training with 1 and 2 torchrun processes (Gloo, CPU)."""
    cores = cores or os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="loopmdm-scaling-"))
    sets = {
        "train.device": "cpu",
        "train.precision": "fp32",
        "train.batch_size": batch,
        "model.max_seq_len": seq_len,
        "model.d_model": d_model,
        "model.vocab_size": vocab,
        "train.eval_every": 10**6,
        "train.save_every": 10**6,
        "data.max_train_bytes": 3_000_000,
        "data.cache_dir": str(workdir / "cache"),
    }
    configs = [(1, 1), (1, max(1, cores)), (2, max(1, cores // 2))]
    results = {"cores": cores, "sets": sets, "steps": steps, "runs": []}
    # tokenise once; every measured run then reads the cache
    run(1, 1, 1, sets, workdir, tag="_warmup")
    for nproc, threads in configs:
        r = run(nproc, threads, steps, sets, workdir)
        measured = [row["tokens_per_s"] for row in r.pop("rows")[skip:] if "tokens_per_s" in row]
        r["tokens_per_s"] = statistics.median(measured)
        results["runs"].append(r)
    base = results["runs"][0]["tokens_per_s"]
    print(f"tiny preset (d={d_model}, T={seq_len}, global batch {batch}), CPU, {cores} cores, Gloo")
    print(f"{'procs':>6}{'threads/proc':>14}{'tok/s':>10}{'vs 1x1':>9}{'wall s':>9}")
    for r in results["runs"]:
        r["speedup_vs_1x1"] = r["tokens_per_s"] / base
        print(
            f"{r['nproc']:>6}{r['threads_per_proc']:>14}{r['tokens_per_s']:>10.0f}{r['speedup_vs_1x1']:>9.2f}"
            f"{r['wall_s']:>9.1f}"
        )
    shutil.rmtree(workdir, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app()
