"""GPU throughput and MFU of LoopMDM training steps: the ``paper`` preset at S = 1 and S = 12, eager and compiled.

One training step = bf16 autocast forward at loop count S, the MDLM NELBO, backward, gradient clipping and
fused AdamW, on random token batches of the preset's shape (d_model 768, 12 layers: n_h=1, n_m=2, n_o=9,
vocabulary 50258, length 1024). For each (S, compile) the largest batch in ``--batches`` that fits is used.

    tokens/s = batch * seq_len / seconds per step
    MFU      = train_flops_per_token(model, S) * tokens/s / the card's dense bf16 peak   (loopmdm.model.flops / perf)

Prints a table and writes JSON. Ready to run in one call on an H100-class machine:

    python benchmarks/bench_gpu.py --out benchmarks/results/gpu_h100.json

CPU smoke test of the script itself (no MFU: no peak is known for CPUs):

    python benchmarks/bench_gpu.py --device cpu --preset tiny --loops 1,4 --batches 4 --steps 2 --warmup 1 \
        --compile off --out /tmp/gpu_smoke.json
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Optional

import torch
import typer

from loopmdm.config import preset as get_preset
from loopmdm.diffusion import make_objective
from loopmdm.runtime import autocast_context
from loopmdm.model.flops import train_flops_per_token
from loopmdm.model import LoopMDM
from loopmdm.runtime import compile_blocks, peak_flops, sdpa_backend
from loopmdm.diffusion.schedules import get_schedule

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def make_step(model_cfg, loops: int, batch: int, device: torch.device, precision: str, compiled: bool,
              sdpa: Optional[str]):
    """A closure running one training step at loop count S = loops; raises torch.OutOfMemoryError if too big."""
    torch.manual_seed(0)
    model = LoopMDM(model_cfg).to(device)
    if compiled:
        compile_blocks(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), fused=device.type == "cuda")
    mask_id = model_cfg.vocab_size - 1
    objective = MaskedDiffusion(get_schedule("loglinear"), mask_id)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, mask_id, (batch, model_cfg.max_seq_len), generator=gen).to(device)

    def step() -> float:
        with sdpa_backend(sdpa), autocast_context(device, precision):
            out = objective.loss(model, x0, loops, gen)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per step after ``warmup`` steps, seconds the warm-up took: compilation happens there)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps, warm


def run_one(model_cfg, loops: int, batches: list[int], device: torch.device, precision: str, compiled: bool,
            sdpa: Optional[str], warmup: int, steps: int) -> dict:
    """The largest batch that fits, measured; or an entry saying none fitted."""
    for batch in sorted(batches, reverse=True):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            step = make_step(model_cfg, loops, batch, device, precision, compiled, sdpa)
            sec, warm = measure(step, device, warmup, steps)
        except torch.OutOfMemoryError:
            continue  # try the next smaller batch
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        tokens = batch * model_cfg.max_seq_len
        flops = train_flops_per_token(model_cfg, loops) * tokens / sec
        peak = peak_flops(device)
        return {"loops": loops, "compile": compiled, "batch": batch, "sec_per_step": sec, "warmup_s": warm,
                "tokens_per_s": tokens / sec, "model_tflops_per_s": flops / 1e12,
                "mfu": flops / peak if peak else None,
                "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    return {"loops": loops, "compile": compiled, "batch": None, "error": f"out of memory at batch {min(batches)}"}


@app.command()
def main(
    preset: str = "paper", loops: str = "1,12", batches: str = "64,32,16,8",
    compile: str = typer.Option("off,on", "--compile", help="Comma-separated: off, on (torch.compile of blocks)."),
    precision: str = "bf16", sdpa: Optional[str] = typer.Option(None, help="flash, efficient, cudnn or math."),
    device: str = "cuda", steps: int = 10, warmup: int = 3,
    out: Path = typer.Option(Path("benchmarks/results/gpu.json")),
) -> None:
    """Tokens/s and MFU of training steps for a preset at each S, with and without torch.compile."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device; this benchmark needs a GPU (or pass --device cpu for a smoke test)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model_cfg = get_preset(preset).model
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    peak = peak_flops(dev)
    results = {"device": name, "peak_bf16_flops": peak, "torch": torch.__version__, "preset": preset,
               "model": model_cfg.__dict__, "precision": precision, "sdpa": sdpa, "runs": []}
    for s in (int(x) for x in loops.split(",")):
        for c in compile.split(","):
            r = run_one(model_cfg, s, [int(b) for b in batches.split(",")], dev, precision, c == "on", sdpa,
                        warmup + (2 if c == "on" else 0), steps)
            results["runs"].append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{preset} preset on {name} ({precision}, torch {torch.__version__}); peak "
          + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown"))
    print(f"{'S':>4}{'compile':>9}{'batch':>7}{'warm-up s':>11}{'s/step':>9}{'tok/s':>10}{'TFLOP/s':>9}{'MFU':>7}"
          f"{'mem GiB':>9}")
    for r in results["runs"]:
        if r.get("batch") is None:
            print(f"{r['loops']:>4}{str(r['compile']):>9}  {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{r['loops']:>4}{str(r['compile']):>9}{r['batch']:>7}{r['warmup_s']:>11.1f}{r['sec_per_step']:>9.3f}"
              f"{r['tokens_per_s']:>10.0f}{r['model_tflops_per_s']:>9.1f}{mfu:>7}{mem:>9}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app()
