"""Training throughput and memory of LoopMDM on this machine, measured side by side in one run.

Prints a table and writes JSON:
  1. the measured matmul peak (fp32, bf16);
  2. training tokens/s and achieved FLOP/s for (a) the non-looped baseline (S = 1), (b) LoopMDM at S = S_max,
     (c) a plain model deep enough to match (b)'s per-step FLOPs, in fp32 and bf16;
  3. peak training memory at S = S_max with full backprop, activation checkpointing of the loops, and
     truncated backprop (k = 2), each in a fresh subprocess (peak RSS growth during the step).

    python benchmarks/bench_train.py --out benchmarks/results/train_cpu.json
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
import typer

from loopmdm.config import ModelConfig
from loopmdm.diffusion import Batch, MaskedDiffusion
from loopmdm.runtime import autocast_context
from loopmdm.model.flops import train_flops_per_token
from loopmdm.model import LoopMDM
from loopmdm.runtime import peak_rss_growth
from loopmdm.diffusion.schedules import get_schedule

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of a square matmul (the ceiling that training can approach)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def make_step(cfg: ModelConfig, loops: int, precision: str, batch: int, seed: int = 0):
    """A closure running one full training step (forward, backward, AdamW) at loop count S = loops."""
    torch.manual_seed(seed)
    model = LoopMDM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=cfg.vocab_size - 1)
    x = torch.randint(0, cfg.vocab_size - 1, (batch, cfg.max_seq_len))
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device("cpu")

    def step():
        noise = obj.draw(batch, cfg.max_seq_len, gen)
        with autocast_context(dev, precision):
            out = obj.loss(model, Batch(x), loops, noise)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_steps(step, n: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def _fp32_step(cfg_dict: dict, loops: int, batch: int):
    return make_step(ModelConfig(**cfg_dict), loops, "fp32", batch)


def peak_memory(cfg: ModelConfig, loops: int, batch: int) -> int:
    """Bytes of peak-RSS growth over two fp32 training steps, measured in a fresh process."""
    return peak_rss_growth(_fp32_step, cfg.__dict__, loops, batch)


@app.command()
def main(
    d_model: int = 512, n_heads: int = 8, seq_len: int = 256, batch: int = 8, vocab: int = 4096,
    s_max: int = 12, steps: int = 3, rounds: int = 2,
    out: Path = typer.Option(Path("benchmarks/results/train_cpu.json")),
) -> None:
    """Run the benchmark with a 4-layer model (n_h=1, n_m=2, n_o=1) looped up to S_max."""
    base = ModelConfig(vocab_size=vocab, max_seq_len=seq_len, d_model=d_model, n_heads=n_heads, n_layers=4,
                       n_h=1, n_m=2, n_o=1)
    target = train_flops_per_token(base, s_max)
    depth = min(range(4, 200), key=lambda L: abs(train_flops_per_token(replace(base, n_layers=L, n_h=L, n_m=0, n_o=0), 1) - target))
    deep = replace(base, n_layers=depth, n_h=depth, n_m=0, n_o=0)
    runs = {"a_baseline_S1": (base, 1), f"b_loopmdm_S{s_max}": (base, s_max), f"c_deeper_{depth}L": (deep, 1)}
    peaks = {p: matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16) for p in ("fp32", "bf16")}
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               "torch": torch.__version__, "matmul_peak_flops": peaks, "config": base.__dict__,
               "deeper_layers": depth, "throughput": [], "memory": {}}
    tokens = batch * seq_len
    for precision in ("fp32", "bf16"):
        steps_fns = {name: make_step(cfg, s, precision, batch) for name, (cfg, s) in runs.items()}
        times = {name: [] for name in runs}
        for _ in range(rounds):  # alternate runs so that machine noise hits all of them alike
            for name, fn in steps_fns.items():
                times[name].append(time_steps(fn, steps))
        for name, (cfg, s) in runs.items():
            sec = min(times[name])
            flops = train_flops_per_token(cfg, s) * tokens
            results["throughput"].append({
                "run": name, "precision": precision, "sec_per_step": sec, "tokens_per_s": tokens / sec,
                "flops_per_s": flops / sec, "frac_of_peak": flops / sec / peaks[precision]})
    thr = {(r["run"], r["precision"]): r for r in results["throughput"]}
    bname, cname = f"b_loopmdm_S{s_max}", f"c_deeper_{depth}L"
    for variant, overrides in {"full_backprop": {}, "checkpoint_loops": {"checkpoint_loops": True},
                               "truncated_k2": {"input_injection": True, "backprop_depth": 2}}.items():
        results["memory"][variant] = peak_memory(replace(base, **overrides), s_max, batch)
    mem = results["memory"]
    results["targets"] = {
        "loop_vs_deeper_flops_per_s_fp32": thr[(bname, "fp32")]["flops_per_s"] / thr[(cname, "fp32")]["flops_per_s"],
        "loop_vs_deeper_flops_per_s_bf16": thr[(bname, "bf16")]["flops_per_s"] / thr[(cname, "bf16")]["flops_per_s"],
        "bf16_over_fp32_tokens_per_s_loop": thr[(bname, "bf16")]["tokens_per_s"] / thr[(bname, "fp32")]["tokens_per_s"],
        "frac_of_peak_loop_fp32": thr[(bname, "fp32")]["frac_of_peak"],
        "frac_of_peak_loop_bf16": thr[(bname, "bf16")]["frac_of_peak"],
        "memory_cut_checkpoint": 1 - mem["checkpoint_loops"] / max(mem["full_backprop"], 1),
        "memory_cut_truncated_k2": 1 - mem["truncated_k2"] / max(mem["full_backprop"], 1),
    }
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s "
          f"({results['machine']})")
    print(f"{'run':<22}{'prec':>6}{'s/step':>9}{'tok/s':>9}{'GFLOP/s':>9}{'of peak':>9}")
    for r in results["throughput"]:
        print(f"{r['run']:<22}{r['precision']:>6}{r['sec_per_step']:>9.3f}{r['tokens_per_s']:>9.0f}"
              f"{r['flops_per_s'] / 1e9:>9.1f}{r['frac_of_peak']:>9.0%}")
    print("peak training memory at S=%d (fp32): " % s_max
          + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in mem.items()))
    for k, v in results["targets"].items():
        print(f"  {k}: {v:.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app()
