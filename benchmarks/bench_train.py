"""Training throughput and memory of LoopMDM on this machine, measured side by side in one run.

Prints a table and writes JSON:
  1. the measured matmul peak (fp32, bf16);
  2. training tokens/s and achieved FLOP/s for (a) the non-looped baseline (S = 1), (b) LoopMDM at S = S_max,
     (c) a plain model deep enough to match (b)'s per-step FLOPs, in fp32 and bf16;
  3. peak training memory at S = S_max with full backprop, activation checkpointing of the loops, and
     truncated backprop (k = 2), each in a fresh subprocess (peak RSS growth during the step);
  4. the memory of the loss at the ``paper`` preset's vocabulary and length (V = 50,258, L = 1024): the LM head
     and cross-entropy with their backward alone (given the hidden states), dense (full ``[B, L, V]`` logits in
     fp32, the path before sparse prediction) against sparse (masked positions only, chunked fused linear
     cross-entropy), and a whole training step of the 4-layer model both ways;
  5. the PyTorch profiler's top operators (self CPU time) of the bf16 LoopMDM step.

    python benchmarks/bench_train.py --out benchmarks/results/train/train_cpu.json
    python benchmarks/bench_train.py --sections profile --out before.json   # e.g. against an older checkout

The optimizer is the trainer's (``loopmdm.train.optim.make_optimizer``: fused AdamW where the installed
version has it), so the step is the one ``loopmdm train`` runs.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
import typer

from bench_hardware import peak_rss_growth, slow_bf16_note
from loopmdm.config import ModelConfig, TrainConfig
from loopmdm.diffusion import Batch, MaskedDiffusion
from loopmdm.diffusion.schedules import get_schedule
from loopmdm.model import LoopMDM
from loopmdm.model.flops import train_flops_per_token
from loopmdm.runtime import autocast_context
from loopmdm.train.optim import make_optimizer

SECTIONS = ("throughput", "memory", "loss_memory", "profile")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10, rounds: int = 3) -> float:
    """FLOP/s of a square matmul (the ceiling that training can approach): the best of ``rounds`` timings of
    ``reps`` products, so that one noisy round does not lower the ceiling."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 * reps / best


def make_step(
    cfg: ModelConfig, loops: int, precision: str, batch: int, seed: int = 0, dense: bool = False
):
    """A closure running one full training step (forward, backward, AdamW) at loop count S = loops;
    ``dense``: the loss from full logits at every position (the path of models without sparse prediction)."""
    torch.manual_seed(seed)
    model = LoopMDM(cfg)
    if dense:
        model.sparse_prediction = False
    opt = make_optimizer(model, TrainConfig(lr=1e-4), torch.device("cpu"))
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


def _fp32_step(cfg_dict: dict, loops: int, batch: int, dense: bool = False):
    return make_step(ModelConfig(**cfg_dict), loops, "fp32", batch, dense=dense)


def peak_memory(cfg: ModelConfig, loops: int, batch: int) -> int:
    """Bytes of peak-RSS growth over two fp32 training steps, measured in a fresh process."""
    return peak_rss_growth(_fp32_step, cfg.__dict__, loops, batch)


def _loss_only(vocab: int, d_model: int, batch: int, seq_len: int, sparse: bool):
    """The LM head + masked-token cross-entropy and their backward, given hidden states h [B, L, D] with half the
    positions masked: dense = full fp32 logits [B, L, V] (the pre-sparse path), sparse = the masked rows only
    through the chunked linear cross-entropy."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(batch, seq_len, d_model, generator=gen).requires_grad_()  # [B, L, D]
    w = (0.02 * torch.randn(vocab, d_model, generator=gen)).requires_grad_()  # [V, D]
    target = torch.randint(0, vocab - 1, (batch, seq_len), generator=gen)  # [B, L]
    masked = torch.rand(batch, seq_len, generator=gen) < 0.5  # [B, L]
    if sparse:
        from loopmdm.model.loss import linear_cross_entropy  # absent before sparse prediction

    def step():
        if sparse:
            loss, _ = linear_cross_entropy(h[masked], w, target[masked])  # h[masked]: [N, D]
        else:
            logits = (h @ w.T).float()  # [B, L, V]
            ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # [B, L]
            loss = (ce * masked).sum()
        (loss / masked.sum()).backward()
        h.grad = w.grad = None

    return step


def loss_memory(d_model: int, n_heads: int, vocab: int, seq_len: int, batch: int) -> dict:
    """Peak-RSS growth (bytes) of the loss alone and of a whole fp32 step, dense vs sparse, fresh processes."""
    cfg = ModelConfig(
        vocab_size=vocab,
        max_seq_len=seq_len,
        d_model=d_model,
        n_heads=n_heads,
        n_layers=4,
        n_h=4,
        n_m=0,
        n_o=0,
    )
    out = {
        "vocab": vocab,
        "seq_len": seq_len,
        "batch": batch,
        "d_model": d_model,
        "loss_dense": peak_rss_growth(_loss_only, vocab, d_model, batch, seq_len, False),
        "step_dense": peak_rss_growth(_fp32_step, cfg.__dict__, 1, batch, True),
    }
    try:
        from loopmdm.model.loss import linear_cross_entropy  # noqa: F401  (absent before sparse prediction)
    except ImportError:
        return out
    out["loss_sparse"] = peak_rss_growth(_loss_only, vocab, d_model, batch, seq_len, True)
    out["step_sparse"] = peak_rss_growth(_fp32_step, cfg.__dict__, 1, batch)
    return out


def profile_step(cfg: ModelConfig, loops: int, batch: int, top: int = 12) -> list[dict]:
    """The profiler's top operators by self CPU time over two bf16 training steps at S = loops."""
    step = make_step(cfg, loops, "bf16", batch)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 2e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count // 2,
        }
        for e in events[:top]
    ]


def throughput(
    runs: dict, peaks: dict, batch: int, seq_len: int, steps: int, rounds: int
) -> list[dict]:
    """Seconds per step (best of ``rounds``, runs alternated so machine noise hits all alike) and FLOP/s, in each
    precision of ``peaks``."""
    rows, tokens = [], batch * seq_len
    for precision in peaks:
        step_fns = {name: make_step(cfg, s, precision, batch) for name, (cfg, s) in runs.items()}
        times = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fn in step_fns.items():
                times[name].append(time_steps(fn, steps))
        for name, (cfg, s) in runs.items():
            sec = min(times[name])
            flops = train_flops_per_token(cfg, s) * tokens
            rows.append(
                {
                    "run": name,
                    "precision": precision,
                    "sec_per_step": sec,
                    "tokens_per_s": tokens / sec,
                    "flops_per_s": flops / sec,
                    "frac_of_peak": flops / sec / peaks[precision],
                }
            )
    print(f"{'run':<22}{'prec':>6}{'s/step':>9}{'tok/s':>9}{'GFLOP/s':>9}{'of peak':>9}")
    for r in rows:
        print(
            f"{r['run']:<22}{r['precision']:>6}{r['sec_per_step']:>9.3f}{r['tokens_per_s']:>9.0f}"
            f"{r['flops_per_s'] / 1e9:>9.1f}{r['frac_of_peak']:>9.0%}"
        )
    return rows


@app.command()
def main(
    d_model: int = 512,
    n_heads: int = 8,
    seq_len: int = 256,
    batch: int = 8,
    vocab: int = 4096,
    s_max: int = 12,
    steps: int = 3,
    rounds: int = 2,
    loss_vocab: int = 50258,
    loss_seq_len: int = 1024,
    loss_batch: int = 2,
    sections: str = typer.Option(
        ",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}"
    ),
    out: Path = typer.Option(Path("benchmarks/results/train/train_cpu.json")),
) -> None:
    """Run the benchmark with a 4-layer model (n_h=1, n_m=2, n_o=1) looped up to S_max."""
    todo = [x.strip() for x in sections.split(",") if x.strip()]
    if not todo or any(x not in SECTIONS for x in todo):
        raise typer.BadParameter(f"--sections {sections!r}: choose from {', '.join(SECTIONS)}")
    base = ModelConfig(
        vocab_size=vocab,
        max_seq_len=seq_len,
        d_model=d_model,
        n_heads=n_heads,
        n_layers=4,
        n_h=1,
        n_m=2,
        n_o=1,
    )
    target = train_flops_per_token(base, s_max)
    depth = min(
        range(4, 200),
        key=lambda L: abs(
            train_flops_per_token(replace(base, n_layers=L, n_h=L, n_m=0, n_o=0), 1) - target
        ),
    )
    deep = replace(base, n_layers=depth, n_h=depth, n_m=0, n_o=0)
    runs = {
        "a_baseline_S1": (base, 1),
        f"b_loopmdm_S{s_max}": (base, s_max),
        f"c_deeper_{depth}L": (deep, 1),
    }
    bf16_note = slow_bf16_note()
    precisions = ("fp32",) if bf16_note else ("fp32", "bf16")
    peaks = {p: matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16) for p in precisions}
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "matmul_peak_flops": peaks,
        "config": base.__dict__,
        "deeper_layers": depth,
        "sections": todo,
        "bf16_skipped": bf16_note,
    }
    print(
        "matmul peak: "
        + ", ".join(f"{p} {v / 1e9:.1f} GFLOP/s" for p, v in peaks.items())
        + f" ({results['machine']})"
    )
    if bf16_note:
        print(bf16_note)
    bname, cname = f"b_loopmdm_S{s_max}", f"c_deeper_{depth}L"
    targets = results["targets"] = {}
    if "throughput" in todo:
        results["throughput"] = throughput(runs, peaks, batch, seq_len, steps, rounds)
        thr = {(r["run"], r["precision"]): r for r in results["throughput"]}
        for p in precisions:
            targets[f"loop_vs_deeper_flops_per_s_{p}"] = (
                thr[(bname, p)]["flops_per_s"] / thr[(cname, p)]["flops_per_s"]
            )
            targets[f"frac_of_peak_loop_{p}"] = thr[(bname, p)]["frac_of_peak"]
        if "bf16" in peaks:
            targets["bf16_over_fp32_tokens_per_s_loop"] = (
                thr[(bname, "bf16")]["tokens_per_s"] / thr[(bname, "fp32")]["tokens_per_s"]
            )
    if "memory" in todo:
        mem = results["memory"] = {
            variant: peak_memory(replace(base, **overrides), s_max, batch)
            for variant, overrides in {
                "full_backprop": {},
                "checkpoint_loops": {"checkpoint_loops": True},
                "truncated_k2": {"input_injection": True, "backprop_depth": 2},
            }.items()
        }
        print(
            f"peak training memory at S={s_max} (fp32): "
            + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in mem.items())
        )
        targets["memory_cut_checkpoint"] = 1 - mem["checkpoint_loops"] / max(
            mem["full_backprop"], 1
        )
        targets["memory_cut_truncated_k2"] = 1 - mem["truncated_k2"] / max(mem["full_backprop"], 1)
    if "loss_memory" in todo:
        lm = results["loss_memory"] = loss_memory(
            d_model, n_heads, loss_vocab, loss_seq_len, loss_batch
        )
        print(
            f"loss memory at V={loss_vocab}, L={loss_seq_len}, batch {loss_batch}, d {d_model} (fp32, peak RSS "
            "growth): "
            + ", ".join(
                f"{k} {lm[k] / 2**20:.0f} MiB" for k in lm if k.startswith(("loss", "step"))
            )
        )
        if "loss_sparse" in lm:
            targets["loss_memory_cut_x"] = lm["loss_dense"] / max(lm["loss_sparse"], 1)
            targets["step_memory_cut_x"] = lm["step_dense"] / max(lm["step_sparse"], 1)
    if "profile" in todo and bf16_note:
        print("profile skipped: it profiles the bf16 step")
    elif "profile" in todo:
        prof = results["profile_bf16"] = profile_step(base, s_max, batch)
        print(f"profile of the bf16 LoopMDM step at S={s_max} (top operators by self CPU time):")
        for e in prof:
            print(
                f"  {e['op'][:56]:<58}{e['self_cpu_ms']:>10.1f} ms{e['share']:>7.1%}{e['calls']:>7} calls"
            )
    for k, v in targets.items():
        print(f"  {k}: {v:.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app()
