"""LoopMDM against the peer a user would pick instead: Hugging Face ``ModernBertForMaskedLM``.

One training step (forward + backward + AdamW) of the non-looped LoopMDM (all layers in the head, S = 1)
and of ModernBERT configured to the same width, depth, heads, vocabulary and sequence length, with the
same masked-token loss (cross-entropy on the masked positions, computed outside both models from full
logits) on the same batches. ModernBERT's GeGLU MLP gets intermediate_size = 2/3 of LoopMDM's MLP width
so that both MLPs cost the same FLOPs, and every ModernBERT layer uses global attention. FLOPs per step
are counted for both with ``torch.utils.flop_counter.FlopCounterMode`` and reported beside the speed.

Speed: the two models' steps alternate in one process (``--rounds`` rounds of ``--steps`` steps each),
so machine noise hits both alike; the best round per model is reported.
Memory: each (model, precision) runs in a fresh subprocess (Linux); the figure is the growth of the peak
resident set (``VmHWM``, reset through /proc/self/clear_refs) over two training steps, i.e. activations +
gradients + AdamW state, measured the same way for both. (tracemalloc does not see PyTorch's C++
allocations, and the CPU allocator has no peak counter, hence the process-level measurement.)

    python benchmarks/bench_peer.py --out benchmarks/results/peer_cpu.json
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import typer

from loopmdm.config import ModelConfig
from loopmdm.runtime import autocast_context
from loopmdm.model import LoopMDM
from loopmdm.runtime import peak_rss_growth

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
MASK_ID = 3  # ids 0..3 are special in both vocabularies (pad, bos, eos, mask)


def loopmdm_model(d: int, layers: int, heads: int, vocab: int, seq: int, time_conditioning: str):
    cfg = ModelConfig(vocab_size=vocab, max_seq_len=seq, d_model=d, n_heads=heads, n_layers=layers,
                      n_h=layers, n_m=0, n_o=0, time_conditioning=time_conditioning, cond_dim=128)
    model = LoopMDM(cfg)
    adaln = time_conditioning == "adaln"
    return model, (lambda x, t: model(x, t if adaln else None, loops=1))


def modernbert_model(d: int, layers: int, heads: int, vocab: int, seq: int):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    cfg = ModernBertConfig(vocab_size=vocab, hidden_size=d, intermediate_size=int(round(4 * d * 2 / 3)),
                           num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=seq,
                           global_attn_every_n_layers=1, local_attention=seq, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, cls_token_id=1, sep_token_id=2, attention_dropout=0.0,
                           embedding_dropout=0.0, mlp_dropout=0.0, tie_word_embeddings=True,
                           attn_implementation="sdpa")
    model = ModernBertForMaskedLM(cfg)
    return model, (lambda x, t: model(input_ids=x).logits)


def build(name: str, args: dict):
    shape = (args["d_model"], args["layers"], args["heads"], args["vocab"], args["seq_len"])
    if name == "modernbert":
        return modernbert_model(*shape)
    return loopmdm_model(*shape, time_conditioning="adaln" if name == "loopmdm-adaln" else "none")


def batches(args: dict, n: int, seed: int = 0):
    """n fixed batches: tokens x0, masked x_t (a fraction t of positions masked) and labels (-100 elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x0 = torch.randint(4, args["vocab"], (args["batch"], args["seq_len"]), generator=g)
        t = torch.rand(args["batch"], generator=g).clamp_min(0.05)
        masked = torch.rand(x0.shape, generator=g) < t[:, None]
        out.append((torch.where(masked, MASK_ID, x0), t, torch.where(masked, x0, -100)))
    return out


def make_step(name: str, args: dict, precision: str) -> tuple[Callable[[int], None], torch.nn.Module]:
    torch.manual_seed(0)
    model, forward = build(name, args)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = batches(args, 4)
    dev = torch.device("cpu")

    def step(i: int) -> None:
        x_t, t, labels = data[i % len(data)]
        with autocast_context(dev, precision):
            logits = forward(x_t, t)  # [B, T, V]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def step_flops(name: str, args: dict) -> float:
    """FLOPs of one forward + backward as counted by FlopCounterMode (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model, forward = build(name, args)
    x_t, t, labels = batches(args, 1)[0]
    with FlopCounterMode(display=False) as counter:
        logits = forward(x_t, t)
        F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100).backward()
    return float(counter.get_total_flops())


def _step_for_memory(name: str, args: dict, precision: str):
    torch.set_num_threads(args["threads"])
    step, _ = make_step(name, args, precision)
    counter = iter(range(1 << 30))
    return lambda: step(next(counter))


def peak_memory(name: str, args: dict, precision: str) -> int:
    """Peak RSS growth over two training steps in a fresh process (see ``loopmdm.runtime.peak_rss_growth``)."""
    return peak_rss_growth(_step_for_memory, name, args, precision)


@app.command()
def main(
    d_model: int = 256, layers: int = 6, heads: int = 4, vocab: int = 8192, seq_len: int = 128, batch: int = 8,
    steps: int = 4, rounds: int = 3, threads: int = 0,
    precisions: str = typer.Option("fp32,bf16", help="Comma-separated: fp32, bf16 (CPU autocast)."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak memory in subprocesses."),
    out: Path = typer.Option(Path("benchmarks/results/peer_cpu.json")),
) -> None:
    """Tokens/s and peak memory of a LoopMDM training step vs ModernBertForMaskedLM at equal shape."""
    if threads:
        torch.set_num_threads(threads)
    args = dict(d_model=d_model, layers=layers, heads=heads, vocab=vocab, seq_len=seq_len, batch=batch,
                threads=torch.get_num_threads())
    names = ["loopmdm", "modernbert", "loopmdm-adaln"]
    tokens = batch * seq_len
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
               "torch": torch.__version__, "args": args, "params": {}, "flops_per_step": {}, "runs": []}
    for name in names:
        _, model = make_step(name, args, "fp32")
        results["params"][name] = sum(p.numel() for p in model.parameters())
        results["flops_per_step"][name] = step_flops(name, args)
    for precision in precisions.split(","):
        fns = {name: make_step(name, args, precision)[0] for name in names}
        for fn in fns.values():
            fn(0)  # warm-up (allocator, AdamW state)
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(rounds):  # alternate the models so that machine noise hits them alike
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for i in range(steps):
                    fn(i)
                times[name].append((time.perf_counter() - t0) / steps)
        for name in names:
            sec = min(times[name])
            mem = peak_memory(name, args, precision) if memory else None
            results["runs"].append({"model": name, "precision": precision, "sec_per_step": sec,
                                    "tokens_per_s": tokens / sec, "peak_mem_bytes": mem,
                                    "flops_per_s": results["flops_per_step"][name] / sec})
    by = {(r["model"], r["precision"]): r for r in results["runs"]}
    results["ratios"] = {}
    for precision in precisions.split(","):
        for name in ("loopmdm", "loopmdm-adaln"):
            a, b = by[(name, precision)], by[("modernbert", precision)]
            entry = {"tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                     "flops": results["flops_per_step"][name] / results["flops_per_step"]["modernbert"]}
            if memory:
                entry["peak_memory"] = a["peak_mem_bytes"] / max(b["peak_mem_bytes"], 1)
            results["ratios"][f"{name}_vs_modernbert_{precision}"] = entry
    print(f"LoopMDM (S=1) vs ModernBertForMaskedLM: d={d_model} L={layers} H={heads} V={vocab} T={seq_len} "
          f"B={batch} ({results['machine']}, torch {torch.__version__})")
    print(f"{'model':<15}{'prec':>6}{'params':>10}{'GFLOP/step':>12}{'s/step':>9}{'tok/s':>9}{'mem MiB':>9}")
    for r in results["runs"]:
        mem = f"{r['peak_mem_bytes'] / 2**20:.0f}" if r["peak_mem_bytes"] is not None else "-"
        print(f"{r['model']:<15}{r['precision']:>6}{results['params'][r['model']] / 1e6:>9.2f}M"
              f"{results['flops_per_step'][r['model']] / 1e9:>12.2f}{r['sec_per_step']:>9.3f}"
              f"{r['tokens_per_s']:>9.0f}{mem:>9}")
    for k, v in results["ratios"].items():
        print(f"  {k}: " + ", ".join(f"{m} x{x:.2f}" for m, x in v.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app()
