"""One-call GPU evidence: throughput / MFU, the compute-matched trio on the built-in corpus, and Sudoku.

    python benchmarks/gpu_evidence.py --out benchmarks/results/gpu_evidence      # one H100 / H200, no network
    python benchmarks/gpu_evidence.py --smoke --out /tmp/gpu_smoke                # the whole script on CPU, < 2 min

Sections (each prints a table; everything lands in OUT/gpu_evidence.json):

1. **Throughput**: training tokens/s and MFU of the ``paper`` preset (d 768, 12 layers, n_h / n_m / n_o = 1 / 2 /
   9, vocabulary 50258, length 1024) at S = 1 and S = 12, bf16, eager and ``torch.compile`` of the blocks, with the
   SDPA backend PyTorch picked; the largest batch of ``--batches`` that fits. MFU = model FLOPs
   (``loopmdm.model.flops``, LM head at the expected masked share) x tokens/s / the card's dense bf16 peak.
2. **Compute-matched trio** (``loopmdm.experiments.compute_matched``): same-size MDM, LoopMDM (S ~ U{1..4}) and
   the deeper MDM at equal training FLOPs on the whole standard-library corpus, a d 512 x 8 model, bf16.
   ``--cm-budget`` FLOPs per run (default 2e16: 1e17 per run, the issue's figure, would take about 15 minutes
   for the three runs on one H100 at the MFU such a small model reaches).
3. **Sudoku**: the ``gpu`` config of ``loopmdm experiment sudoku`` (MDM / LoopMDM / deeper at equal FLOPs, the
   T x S accuracy grid on 1000 test boards).

The sizes aim at about 8 minutes in all on one H100-class GPU (about 1.5 + 4 + 2.5 minutes); the wall time of
each section is printed and saved so the next run can be re-sized. Without CUDA and without ``--smoke`` the
script says so and exits with code 2.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import typer

from loopmdm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig, preset as get_preset
from loopmdm.diffusion import Batch, MaskedDiffusion, get_schedule, predicted_fraction
from loopmdm.experiments.compute_matched import ComputeMatchedConfig, run_compute_matched
from loopmdm.experiments.sudoku import load_sudoku_config, run_sudoku
from loopmdm.model import LoopMDM
from loopmdm.model.flops import train_flops_per_token
from loopmdm.runtime import autocast_context, compile_blocks, peak_flops, sdpa_backend

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


# --------------------------------------------------------------------------- 1. throughput

def make_step(model_cfg, loops: int, batch: int, device: torch.device, precision: str, compiled: bool,
              sdpa: Optional[str]):
    """A closure running one training step at loop count S = loops; raises torch.OutOfMemoryError if too big."""
    torch.manual_seed(0)
    model = LoopMDM(model_cfg).to(device)
    if compiled:
        compile_blocks(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), fused=True)
    mask_id = model_cfg.vocab_size - 1
    objective = MaskedDiffusion(get_schedule("loglinear"), mask_id)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, mask_id, (batch, model_cfg.max_seq_len), generator=gen).to(device)

    def step() -> float:
        noise = objective.draw(batch, model_cfg.max_seq_len, gen)
        with sdpa_backend(sdpa), autocast_context(device, precision):
            out = objective.loss(model, Batch(x0), loops, noise)
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


def sdpa_backend_in_use(device: torch.device) -> str:
    """Which SDPA kernels PyTorch may pick here (flash / memory-efficient / cuDNN / math)."""
    if device.type != "cuda":
        return "cpu (flash attention for CPU or math)"
    b = torch.backends.cuda
    on = [n for n, f in (("flash", b.flash_sdp_enabled), ("efficient", b.mem_efficient_sdp_enabled),
                         ("cudnn", getattr(b, "cudnn_sdp_enabled", lambda: False)), ("math", b.math_sdp_enabled)) if f()]
    return "automatic among " + ", ".join(on)


def throughput_run(model_cfg, loops: int, batches: list[int], device: torch.device, precision: str, compiled: bool,
                   sdpa: Optional[str], warmup: int, steps: int) -> dict:
    """The largest batch that fits, measured; or an entry saying none fitted."""
    pf = predicted_fraction(DiffusionConfig())
    for batch in sorted(batches, reverse=True):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            sec, warm = measure(make_step(model_cfg, loops, batch, device, precision, compiled, sdpa), device,
                                warmup, steps)
        except torch.OutOfMemoryError:
            continue  # try the next smaller batch
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        tokens = batch * model_cfg.max_seq_len
        flops = train_flops_per_token(model_cfg, loops, predicted_fraction=pf) * tokens / sec
        peak = peak_flops(device)
        return {"loops": loops, "compile": compiled, "batch": batch, "sec_per_step": sec, "warmup_s": warm,
                "tokens_per_s": tokens / sec, "model_tflops_per_s": flops / 1e12,
                "mfu": flops / peak if peak else None,
                "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    return {"loops": loops, "compile": compiled, "batch": None, "error": f"out of memory at batch {min(batches)}"}


def throughput_table(runs: list[dict]) -> str:
    lines = [f"{'S':>4}{'compile':>9}{'batch':>7}{'warm-up s':>11}{'s/step':>9}{'tok/s':>10}{'TFLOP/s':>9}{'MFU':>7}"
             f"{'mem GiB':>9}"]
    for r in runs:
        if r.get("batch") is None:
            lines.append(f"{r['loops']:>4}{str(r['compile']):>9}  {r['error']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mem = f"{r['peak_mem_gib']:.1f}" if r["peak_mem_gib"] is not None else "-"
        lines.append(f"{r['loops']:>4}{str(r['compile']):>9}{r['batch']:>7}{r['warmup_s']:>11.1f}"
                     f"{r['sec_per_step']:>9.3f}{r['tokens_per_s']:>10.0f}{r['model_tflops_per_s']:>9.1f}{mfu:>7}{mem:>9}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- 2. and 3.

def compute_matched_config(smoke: bool, budget: float, device: str) -> ComputeMatchedConfig:
    """The trio sized for one GPU (or, with ``smoke``, for a CPU check in seconds)."""
    if smoke:
        model = ModelConfig(vocab_size=512, max_seq_len=32, d_model=32, n_heads=2, n_layers=3, n_h=1, n_m=1, n_o=1,
                            cond_dim=16)
        data = DataConfig(source="stdlib", max_train_bytes=300_000)
        train = TrainConfig(batch_size=8, precision="fp32", device="cpu", eval_batches=1, log_every=5, threads=1)
    else:
        model = ModelConfig(vocab_size=8192, max_seq_len=256, d_model=512, n_heads=8, n_layers=8, n_h=1, n_m=2,
                            n_o=5, cond_dim=128)
        data = DataConfig(source="stdlib")
        train = TrainConfig(batch_size=128, lr=1e-3, precision="bf16", device=device, eval_batches=8, log_every=20)
    run = RunConfig(model=model, diffusion=DiffusionConfig(s_max=3 if smoke else 4), data=data, train=train)
    cfg = ComputeMatchedConfig(name="gpu-smoke" if smoke else "gpu", run=run, seeds=[0], n_evals=4 if smoke else 10,
                               final_eval_batches=2 if smoke else 32, warmup_frac=0.05)
    run.model.vocab_size = model.vocab_size
    tokens = train.batch_size * model.max_seq_len
    f_a = train_flops_per_token(model, 1, predicted_fraction=predicted_fraction(run.diffusion))
    cfg.baseline_steps = 40 if smoke else max(50, round(budget / (tokens * f_a)))
    return cfg.validate()


def sudoku_config(smoke: bool, device: str):
    cfg = load_sudoku_config("gpu")
    if smoke:
        cfg.name, cfg.baseline_steps, cfg.test_boards, cfg.steps = "gpu-smoke", 40, 8, [1, 0]
        r = cfg.run
        r.model.d_model, r.model.n_heads = 32, 2
        r.data.sudoku.n_train, r.data.sudoku.n_val, r.data.sudoku.n_test = 64, 8, 8
        r.train.batch_size, r.train.precision, r.train.device, r.train.threads = 8, "fp32", "cpu", 1
        r.train.eval_batches = 1
    else:
        cfg.run.train.device = device
    return cfg.validate()


@app.command()
def main(
    out: Path = typer.Option(Path("benchmarks/results/gpu_evidence"), help="Output folder."),
    smoke: bool = typer.Option(False, "--smoke", help="Run everything on CPU at toy sizes (< 2 minutes)."),
    sections: str = typer.Option("throughput,compute-matched,sudoku", help="Comma-separated subset to run."),
    batches: str = "64,32,16,8", loops: str = "1,12", compile: str = "off,on", steps: int = 10, warmup: int = 3,
    sdpa: Optional[str] = typer.Option(None, help="Pin one SDPA backend: flash, efficient, cudnn or math."),
    cm_budget: float = typer.Option(2e16, help="Training FLOPs per run of the compute-matched trio."),
) -> None:
    """Tokens/s and MFU, the compute-matched trio and the Sudoku grid, in one call on one GPU."""
    if not smoke and not torch.cuda.is_available():
        print("error: no CUDA device here; gpu_evidence.py needs one GPU (run it where a GPU is lent), or pass "
              "--smoke for the CPU check of the script", file=sys.stderr)
        raise SystemExit(2)
    device = torch.device("cpu" if smoke else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"device": name, "smoke": smoke, "torch": torch.__version__, "sections": {}}
    wanted = sections.split(",")
    if "throughput" in wanted:
        t0 = time.perf_counter()
        model_cfg = get_preset("tiny" if smoke else "paper").model
        if smoke:
            model_cfg.max_seq_len = 32
        runs = [throughput_run(model_cfg, s, [int(b) for b in (("2",) if smoke else batches.split(","))], device,
                               "fp32" if smoke else "bf16", c == "on", sdpa, 1 if smoke else warmup + 2 * (c == "on"),
                               1 if smoke else steps)
                for s in ((1, 2) if smoke else (int(x) for x in loops.split(",")))
                for c in (("off",) if smoke else compile.split(","))]
        results["sections"]["throughput"] = {"preset": "tiny" if smoke else "paper", "sdpa": sdpa or
                                             sdpa_backend_in_use(device), "peak_bf16_flops": peak_flops(device),
                                             "runs": runs, "wall_s": time.perf_counter() - t0}
        print(f"\n1. throughput on {name}\n" + throughput_table(runs), flush=True)
    if "compute-matched" in wanted:
        t0 = time.perf_counter()
        res = run_compute_matched(compute_matched_config(smoke, cm_budget, "cuda"), out / "compute_matched",
                                  progress=False, log=print)
        results["sections"]["compute_matched"] = {"summary": res["summary"], "plan": res["plan"],
                                                  "wall_s": time.perf_counter() - t0}
        print("\n2. compute-matched trio\n" + (out / "compute_matched" / "summary.md").read_text(), flush=True)
    if "sudoku" in wanted:
        t0 = time.perf_counter()
        res = run_sudoku(sudoku_config(smoke, "cuda"), out / "sudoku", log=print)
        results["sections"]["sudoku"] = {"summary": res["summary"], "checks": res["checks"], "plan": res["plan"],
                                         "wall_s": time.perf_counter() - t0}
        print("\n3. Sudoku\n" + (out / "sudoku" / "summary.md").read_text(), flush=True)
    (out / "gpu_evidence.json").write_text(json.dumps(results, indent=2, default=str))
    print("wall time per section: " + ", ".join(f"{k} {v['wall_s']:.0f}s" for k, v in results["sections"].items()))
    print(f"wrote {out / 'gpu_evidence.json'}")


if __name__ == "__main__":
    app()
