"""LoopMDM against the peer a user would pick instead: Hugging Face ``ModernBertForMaskedLM``.

One training step (forward + backward + AdamW) of the non-looped LoopMDM (all layers in the head, S = 1) and of
ModernBERT configured to the same width, depth, heads, vocabulary and sequence length, on the same masked batches,
each with its own best loss path:

* ``loopmdm``, ``loopmdm-adaln``: sparse prediction (the LM head only at the masked positions) and the chunked
  linear cross-entropy of ``loopmdm.model.loss``, through ``LoopMDM.forward(..., predict=, labels=)``;
* ``modernbert-sparse``: ``sparse_prediction=True`` (its head and loss only at the labelled positions), loss
  computed by the model from ``labels``; ``modernbert``: the same without sparse prediction (full logits).

ModernBERT's GeGLU MLP gets intermediate_size = 2/3 of LoopMDM's MLP width so that both MLPs cost the same FLOPs,
and every ModernBERT layer uses global attention. FLOPs per step are counted for every model with
``torch.utils.flop_counter.FlopCounterMode`` and reported beside the speed.

Speed: the models' steps alternate in one process (``--rounds`` rounds of ``--steps`` steps each), so machine
noise hits them alike; the best round per model is reported. Memory: each (model, precision) runs in a fresh
subprocess (Linux); the figure is the growth of the peak resident set over two training steps (activations,
gradients, AdamW state), measured the same way for all.

    python benchmarks/bench_peer.py --out benchmarks/results/peer/peer_cpu.json             # every shape, ~8 min
    python benchmarks/bench_peer.py --shapes 128x6x4 --vocabs 8192 --rounds 2 --no-memory  # a quick look
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import typer

from bench_hardware import peak_rss_growth, slow_bf16_note
from loopmdm.config import ModelConfig
from loopmdm.model import LoopMDM
from loopmdm.runtime import autocast_context

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
MASK_ID = 3  # ids 0..3 are special in both vocabularies (pad, bos, eos, mask)
MODELS = ("loopmdm", "loopmdm-adaln", "modernbert-sparse", "modernbert")


def loopmdm_model(d: int, layers: int, heads: int, vocab: int, seq: int, time_conditioning: str):
    """(model, loss(x_t, t, labels)): the library's own sparse-prediction loss, mean CE over masked positions."""
    cfg = ModelConfig(
        vocab_size=vocab,
        max_seq_len=seq,
        d_model=d,
        n_heads=heads,
        n_layers=layers,
        n_h=layers,
        n_m=0,
        n_o=0,
        time_conditioning=time_conditioning,
        cond_dim=128,
    )
    model = LoopMDM(cfg)

    def loss(x_t, t, labels):
        masked = labels != -100
        n = int(masked.sum())
        total, _ = model(
            x_t,
            t,
            loops=1,
            predict=masked,
            labels=labels[masked],
            label_weights=torch.full((n,), 1.0 / max(n, 1)),
            exclude=MASK_ID,
        )
        return total

    return model, loss


def modernbert_model(d: int, layers: int, heads: int, vocab: int, seq: int, sparse: bool):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    cfg = ModernBertConfig(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=int(round(4 * d * 2 / 3)),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=seq,
        global_attn_every_n_layers=1,
        local_attention=seq,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        attention_dropout=0.0,
        embedding_dropout=0.0,
        mlp_dropout=0.0,
        tie_word_embeddings=True,
        sparse_prediction=sparse,
        sparse_pred_ignore_index=-100,
        attn_implementation="sdpa",
    )
    model = ModernBertForMaskedLM(cfg)
    return model, (lambda x_t, t, labels: model(input_ids=x_t, labels=labels).loss)


def build(name: str, shape: dict):
    args = (shape["d_model"], shape["layers"], shape["heads"], shape["vocab"], shape["seq_len"])
    if name.startswith("modernbert"):
        return modernbert_model(*args, sparse=name == "modernbert-sparse")
    return loopmdm_model(*args, time_conditioning="adaln" if name == "loopmdm-adaln" else "none")


def batches(shape: dict, n: int, seed: int = 0):
    """n fixed batches: masked x_t (a fraction t of positions masked), t, labels (-100 where not masked)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x0 = torch.randint(4, shape["vocab"], (shape["batch"], shape["seq_len"]), generator=g)
        t = torch.rand(shape["batch"], generator=g).clamp_min(0.05)
        masked = torch.rand(x0.shape, generator=g) < t[:, None]
        out.append((torch.where(masked, MASK_ID, x0), t, torch.where(masked, x0, -100)))
    return out


def make_step(
    name: str, shape: dict, precision: str
) -> tuple[Callable[[int], None], torch.nn.Module]:
    torch.manual_seed(0)
    model, loss_fn = build(name, shape)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    data = batches(shape, 4)
    dev = torch.device("cpu")

    def step(i: int) -> None:
        x_t, t, labels = data[i % len(data)]
        with autocast_context(dev, precision):
            loss = loss_fn(x_t, t, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def step_flops(name: str, shape: dict) -> float:
    """FLOPs of one forward + backward as counted by FlopCounterMode (matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    _, loss_fn = build(name, shape)
    x_t, t, labels = batches(shape, 1)[0]
    with FlopCounterMode(display=False) as counter:
        loss_fn(x_t, t, labels).backward()
    return float(counter.get_total_flops())


def _step_for_memory(name: str, shape: dict, precision: str):
    torch.set_num_threads(shape["threads"])
    step, _ = make_step(name, shape, precision)
    counter = iter(range(1 << 30))
    return lambda: step(next(counter))


def measure_shape(
    shape: dict, precisions: list[str], rounds: int, steps: int, memory: bool
) -> dict:
    res = {"shape": shape, "params": {}, "flops_per_step": {}, "runs": []}
    for name in MODELS:
        _, model = make_step(name, shape, "fp32")
        res["params"][name] = sum(p.numel() for p in model.parameters())
        res["flops_per_step"][name] = step_flops(name, shape)
    tokens = shape["batch"] * shape["seq_len"]
    for precision in precisions:
        fns = {name: make_step(name, shape, precision)[0] for name in MODELS}
        for fn in fns.values():
            fn(0)  # warm-up (allocator, AdamW state)
        times: dict[str, list[float]] = {name: [] for name in MODELS}
        for _ in range(rounds):  # alternate the models so that machine noise hits them alike
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for i in range(steps):
                    fn(i)
                times[name].append((time.perf_counter() - t0) / steps)
        for name in MODELS:
            sec = min(times[name])
            mem = peak_rss_growth(_step_for_memory, name, shape, precision) if memory else None
            res["runs"].append(
                {
                    "model": name,
                    "precision": precision,
                    "sec_per_step": sec,
                    "tokens_per_s": tokens / sec,
                    "peak_mem_bytes": mem,
                    "flops_per_s": res["flops_per_step"][name] / sec,
                }
            )
    by = {(r["model"], r["precision"]): r for r in res["runs"]}
    res["ratios"] = {}
    for precision in precisions:
        for name in ("loopmdm", "loopmdm-adaln"):
            for peer in ("modernbert-sparse", "modernbert"):
                a, b = by[(name, precision)], by[(peer, precision)]
                entry = {
                    "tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                    "flops": res["flops_per_step"][name] / res["flops_per_step"][peer],
                }
                if memory:
                    entry["peak_memory"] = a["peak_mem_bytes"] / max(b["peak_mem_bytes"], 1)
                res["ratios"][f"{name}_vs_{peer}_{precision}"] = entry
    return res


def print_shape(res: dict) -> None:
    s = res["shape"]
    print(
        f"\nd={s['d_model']} L={s['layers']} H={s['heads']} V={s['vocab']} T={s['seq_len']} B={s['batch']}"
    )
    print(
        f"{'model':<19}{'prec':>6}{'params':>10}{'GFLOP/step':>12}{'s/step':>9}{'tok/s':>9}{'mem MiB':>9}"
    )
    for r in res["runs"]:
        mem = f"{r['peak_mem_bytes'] / 2**20:.0f}" if r["peak_mem_bytes"] is not None else "-"
        print(
            f"{r['model']:<19}{r['precision']:>6}{res['params'][r['model']] / 1e6:>9.2f}M"
            f"{res['flops_per_step'][r['model']] / 1e9:>12.2f}{r['sec_per_step']:>9.3f}{r['tokens_per_s']:>9.0f}{mem:>9}"
        )
    for k, v in res["ratios"].items():
        print(f"  {k}: " + ", ".join(f"{m} x{x:.2f}" for m, x in v.items()))


@app.command()
def main(
    shapes: str = typer.Option("128x6x4,512x4x8", help="Comma-separated d_model x layers x heads."),
    vocabs: str = typer.Option("8192,32768", help="Comma-separated vocabulary sizes."),
    seq_len: int = 128,
    batch: int = 8,
    steps: int = 3,
    rounds: int = 3,
    threads: int = 0,
    precisions: str = typer.Option("fp32,bf16", help="Comma-separated: fp32, bf16 (CPU autocast)."),
    memory: bool = typer.Option(
        True, "--memory/--no-memory", help="Measure peak memory in subprocesses."
    ),
    out: Path = typer.Option(Path("benchmarks/results/peer/peer_cpu.json")),
) -> None:
    """Tokens/s and peak memory of LoopMDM training steps vs ModernBertForMaskedLM (sparse and dense) at equal shape."""
    if threads:
        torch.set_num_threads(threads)
    wanted = [p.strip() for p in precisions.split(",") if p.strip()]
    bf16_note = slow_bf16_note() if "bf16" in wanted else None
    if bf16_note:
        wanted.remove("bf16")
        print(bf16_note)
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "bf16_skipped": bf16_note,
        "shapes": [],
    }
    print(
        f"LoopMDM (S=1) vs ModernBertForMaskedLM ({results['machine']}, torch {torch.__version__})"
    )
    for spec in shapes.split(","):
        d, layers, heads = (int(x) for x in spec.split("x"))
        for vocab in (int(v) for v in vocabs.split(",")):
            shape = dict(
                d_model=d,
                layers=layers,
                heads=heads,
                vocab=vocab,
                seq_len=seq_len,
                batch=batch,
                threads=torch.get_num_threads(),
            )
            res = measure_shape(shape, wanted, rounds, steps, memory)
            results["shapes"].append(res)
            print_shape(res)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    app()
