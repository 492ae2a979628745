"""Fast-sampling benchmark: parallel decoding by confidence threshold, approximate key / value caching
(Fast-dLLM's prefix and dual cache, dKV-Cache's delayed cache) and loop-aware reuse, each against the plain
sampler at the same T and S, on the same prompts and seeds.

Full run (the numbers for the README / docs/sampling.md; trains what it is not given, see below):

    python benchmarks/bench_fast_sampling.py --threads 2 --out benchmarks/results/fast_sampling \
        [--checkpoint RUN_L256] [--evaluator AR_RUN] [--sudoku-checkpoint SUDOKU_RUN]

  It trains what it is not given: the L = 256 text model (tiny preset, window 256, batch 16, 1600 steps), the
  AR evaluator (300 steps) and the Sudoku model (2000 steps). ``--num-samples 64`` halves the text part (paired
  intervals about 1.4x wider). The script prints its FLOP-based time estimate before sampling (``--dry-run``
  prints it and stops); measured wall times are in the JSON it writes.

Smoke run (a small model trained on the spot, lengths 32 / 64, N = 8):

    python benchmarks/bench_fast_sampling.py --quick --threads 1 --out /tmp/bench_fast_quick

What it measures, per window L (default 128 and 256) with P prompt tokens taken from the start of validation
rows (the same prompt for sample i of every configuration, and the same random numbers):

* compute, from the sampler's own ComputeReport: FLOPs, network calls, steps run, mid-block position-loops
  (rows x positions x loops the mid block computed), positions x layers, wall time, tokens/s (generated tokens /
  wall time of the sampling loop);
* quality: generative perplexity of every sample under an autoregressive evaluator (``loopmdm.eval.genppl``)
  and the unigram entropy of its generated tokens.

Every fast configuration is compared with its plain sampler (``confidence`` or ``semi_ar`` with no option, T = L - P
steps: one token per step) by paired differences over the samples: the gen-PPL ratio exp(mean d) with
d = the per-sample difference of log gen-PPL, and the relative entropy change, each with a 95% interval
(mean +- 2 paired standard errors). A claim "within 5% / 2%" is made only when the whole interval is inside
it, so the quality differences claimed exceed two standard errors; the table says which rows meet the targets
(at L = 256: >= 4x fewer FLOPs and >= 3x tokens/s with gen-PPL within +5% and entropy within 2%; loop-aware
reuse: >= 2x fewer mid-block position-loops than fixed S = S_max at equal quality).

Sudoku: board accuracy of the ``confidence`` decoder (greedy, order margin, one cell per step, S = S_max) with and
without the threshold and the delayed cache, on the test boards, with paired per-board differences.

Resumable: each finished configuration is written to OUT/rows/ and read back by a later run with the same
checkpoint, evaluator and settings (rows so read are marked "resumed": their wall times come from another
process), and unfinished training runs are resumed; run the same command again after a stop.

Split across processes, or a subset: ``--configs`` runs only the named text configurations (labels as printed;
``exactness`` names the refresh-every-call check), so two one-thread workers can share the rows, and the same
command with the union of their lists then reads every row back and writes the tables, e.g.

    python benchmarks/bench_fast_sampling.py --lengths 256 --skip-sudoku --out OUT --configs confidence,...
    python benchmarks/bench_fast_sampling.py --lengths 256 --skip-sudoku --out OUT --configs exactness,semi_ar,...

Writes OUT/bench_fast_sampling.json (every row with per-sample values and example texts) and
OUT/bench_fast_sampling.png, and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_common import QUICK_TINY, train_run
from loopmdm.checkpoint import load_model, resolve_checkpoint
from loopmdm.config import load_config
from loopmdm.data import prepare_data
from loopmdm.diffusion import get_schedule
from loopmdm.eval.genppl import generative_perplexity, load_evaluator
from loopmdm.fileio import write_json
from loopmdm.model.flops import coda_flops, loop_flops, prelude_flops
from loopmdm.registry import build
from loopmdm.sampling import SAMPLERS, Canvas, TokenFilter, sample_canvas
from loopmdm.sampling.policies import Fixed

# --------------------------------------------------------------------------- checkpoints

AR = [
    "diffusion.objective=ar",
    "model.causal=true",
    "model.time_conditioning=none",
    "diffusion.loop_dist=fixed",
    "diffusion.s_fixed=1",
    "diffusion.t_sampler=uniform",
]


def text_checkpoint(args) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    if args.quick:
        return train_run(Path(args.out) / "text_run", "tiny", QUICK_TINY, "a smoke text model")
    L = max(args.lengths)
    return train_run(
        Path(args.out) / f"tiny_L{L}_run",
        "tiny",
        [f"model.max_seq_len={L}", "train.batch_size=16"],
        f"a tiny-preset text model with window {L}",
    )


def evaluator_checkpoint(args) -> Path:
    if args.evaluator:
        return Path(args.evaluator)
    if args.quick:
        steps = ["train.max_steps=40", "train.eval_every=40", "train.save_every=40"]
        return train_run(
            Path(args.out) / "ar_run", "tiny", QUICK_TINY + AR + steps, "a smoke AR evaluator"
        )
    return train_run(
        Path(args.out) / "ar_eval_run",
        "tiny",
        AR + ["train.max_steps=300", "train.save_every=300", "train.eval_every=300"],
        "the AR evaluator",
    )


def sudoku_checkpoint(args) -> Path:
    if args.sudoku_checkpoint:
        return Path(args.sudoku_checkpoint)
    if args.quick:
        extra = [
            "train.max_steps=40",
            "train.eval_every=40",
            "train.save_every=40",
            "train.batch_size=16",
            "data.sudoku.n_train=256",
            "data.sudoku.n_val=16",
            f"data.sudoku.n_test={args.boards}",
        ]
    else:
        s = args.sudoku_steps
        extra = [
            f"train.max_steps={s}",
            f"train.eval_every={s}",
            f"train.save_every={s}",
            f"data.sudoku.n_test={args.boards}",
        ]
    return train_run(Path(args.out) / "sudoku_run", "sudoku", extra, "a Sudoku model")


# --------------------------------------------------------------------------- configurations


def text_configs(block: int, thresholds: list[float]) -> list[tuple[str, str, dict, str | None]]:
    """(label, sampler, options, label of the plain configuration it is compared with)."""
    c = [
        ("confidence", "confidence", {}, None),
        ("confidence+delayed", "confidence", {"cache": "delayed"}, "confidence"),
        ("confidence+loops", "confidence", {"cache": "loops"}, "confidence"),
        ("confidence+loops+delay4", "confidence", {"cache": "loops", "delay": 4}, "confidence"),
    ]
    for t in thresholds:
        c += [
            (f"confidence+thr{t:g}", "confidence", {"threshold": t}, "confidence"),
            (
                f"confidence+delayed+thr{t:g}",
                "confidence",
                {"cache": "delayed", "threshold": t},
                "confidence",
            ),
        ]
    sa = {"block_length": block}
    c += [
        ("semi_ar", "semi_ar", sa, None),
        ("semi_ar+prefix", "semi_ar", {**sa, "cache": "prefix"}, "semi_ar"),
        ("semi_ar+dual", "semi_ar", {**sa, "cache": "dual"}, "semi_ar"),
    ]
    for t in thresholds:
        c += [
            (f"semi_ar+thr{t:g}", "semi_ar", {**sa, "threshold": t}, "semi_ar"),
            (
                f"semi_ar+dual+thr{t:g}",
                "semi_ar",
                {**sa, "cache": "dual", "threshold": t},
                "semi_ar",
            ),
        ]
    return c


def prompt_rows(cfg, n: int, P: int) -> torch.Tensor:
    """The first P tokens of n validation rows [n, P] (cycled when the split has fewer rows)."""
    data = prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len, log=lambda s: None)
    val = torch.from_numpy(np.asarray(data.val[:, :P], dtype=np.int64))
    return val[torch.arange(n) % len(val)]


def canvas_for(prompts: torch.Tensor, L: int, mask_id: int) -> Canvas:
    B, P = prompts.shape
    x = torch.full((B, L), mask_id, dtype=torch.long)
    x[:, :P] = prompts
    free = torch.zeros(B, L, dtype=torch.bool)
    free[:, P:] = True
    return Canvas(x, free)


def run_text(
    model, tok, cfg, L: int, label: str, sampler: str, opts: dict, prompts: torch.Tensor, args
) -> dict:
    """Sample every prompt (batches of args.batch, seed per batch) and sum the compute reports."""
    s_max = cfg.diffusion.s_max
    T = L - prompts.shape[1]  # one token per step for the plain sampler
    sched = get_schedule(cfg.diffusion.schedule)
    keys = (
        "flops",
        "wall_time_s",
        "network_calls",
        "steps_run",
        "loop_iterations",
        "mid_positions",
        "head_positions",
        "tail_positions",
        "position_layers",
        "generated_tokens",
        "cached_calls",
        "cache_refreshes",
    )
    tot = dict.fromkeys(keys, 0)
    tokens = []
    notes: list[str] = []
    for b, start in enumerate(range(0, len(prompts), args.batch)):
        canvas = canvas_for(prompts[start : start + args.batch], L, tok.mask_id)
        x, _, rep, _ = sample_canvas(
            model,
            canvas,
            tok.mask_id,
            steps=T,
            sampler=build(SAMPLERS, sampler, opts),
            policy=Fixed(s_max),
            token_filter=TokenFilter(),
            schedule=sched,
            gen=torch.Generator().manual_seed(args.seed + b),
        )
        for k in keys:
            tot[k] += getattr(rep, k)
        notes += [n for n in rep.notes if n not in notes]
        tokens.append(x)
    x = torch.cat(tokens)
    N = len(x)
    return {
        "L": L,
        "T": T,
        "label": label,
        "sampler": sampler,
        "options": opts,
        "S": s_max,
        "num_samples": N,
        **tot,
        "gflops_per_sample": tot["flops"] / N / 1e9,
        "tokens_per_s": tot["generated_tokens"] / max(tot["wall_time_s"], 1e-9),
        "steps_per_batch": tot["steps_run"] / math.ceil(N / args.batch),
        "notes": notes,
        "tokens": x,
    }


def cached_row(path: Path, key: dict, make) -> dict:
    """A configuration's finished row: read back from ``path`` when an earlier, interrupted run of the same
    benchmark wrote it under the same ``key`` (checkpoint, evaluator, length, configuration, samples, seed), else
    ``make()``, written atomically so that a stopped run resumes at the next configuration."""
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return {**saved["row"], "resumed": True}
    row = make()
    write_json(path, {"key": key, "row": row}, indent=None)
    return row


def add_quality(row: dict, tok, evaluator, P: int) -> None:
    x = row.pop("tokens")
    texts = [tok.decode(r) for r in x.tolist()]
    gen_ids = [r[P:] for r in x.tolist()]
    res = generative_perplexity(texts, evaluator, token_ids=gen_ids)
    if res.empty_samples:
        raise RuntimeError("an empty sample cannot be paired; this should not happen with a prompt")
    row.update(
        gen_ppl=res.gen_ppl,
        nll_per_sample=[math.log(p) for p in res.per_sample_ppl],
        entropy=res.entropy,
        entropy_per_sample=res.per_sample_entropy,
        examples=texts[:2],
    )


def se(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("inf")


def compare(row: dict, base: dict) -> dict:
    """A fast row against its plain one: compute savings, and paired quality differences with 95% intervals."""
    d = np.array(row["nll_per_sample"]) - np.array(base["nll_per_sample"])
    e = np.array(row["entropy_per_sample"]) - np.array(base["entropy_per_sample"])
    e_ref = float(np.mean(base["entropy_per_sample"]))
    ppl = [math.exp(d.mean() - 2 * se(d)), math.exp(d.mean()), math.exp(d.mean() + 2 * se(d))]
    ent = [(e.mean() - 2 * se(e)) / e_ref, e.mean() / e_ref, (e.mean() + 2 * se(e)) / e_ref]
    out = {
        "L": row["L"],
        "label": row["label"],
        "baseline": base["label"],
        "flop_saving": base["flops"] / row["flops"],
        "speedup": row["tokens_per_s"] / base["tokens_per_s"],
        "mid_saving": base["mid_positions"] / max(row["mid_positions"], 1),
        "position_layer_saving": base["position_layers"] / max(row["position_layers"], 1),
        "call_saving": base["network_calls"] / row["network_calls"],
        "gen_ppl_ratio": ppl,
        "gen_ppl_ratio_aggregate": row["gen_ppl"] / base["gen_ppl"],
        "entropy_change": ent,
    }
    out["ppl_within_5pct"] = bool(ppl[2] <= 1.05)
    out["entropy_within_2pct"] = bool(ent[0] >= -0.02 and ent[2] <= 0.02)
    out["quality_ok"] = out["ppl_within_5pct"] and out["entropy_within_2pct"]
    out["meets_speed_target"] = bool(
        out["flop_saving"] >= 4 and out["speedup"] >= 3 and out["quality_ok"]
    )
    out["meets_loop_target"] = bool(out["mid_saving"] >= 2 and out["quality_ok"])
    return out


# --------------------------------------------------------------------------- Sudoku


def sudoku_rows(args, log) -> tuple[list[dict], list[dict], str]:
    from loopmdm.data.sudoku import generated_splits
    from loopmdm.eval.sudoku import score_grids, solve_boards, wilson_interval

    run = sudoku_checkpoint(args)
    model, tok, cfg = load_model(run)
    pairs = generated_splits(cfg.data, lambda s: None).test[: args.boards]
    sched = get_schedule(cfg.diffusion.schedule)
    S = cfg.diffusion.s_max
    blanks = [p.puzzle.count("0") for p in pairs]
    configs = [("plain", None, {}), ("delayed", None, {"cache": "delayed"})]
    for t in args.thresholds:
        configs += [(f"thr{t:g}", t, {}), (f"delayed+thr{t:g}", t, {"cache": "delayed"})]
    rows = []
    for label, thr, opts in configs:
        grids, flops, wall, steps_run = solve_boards(
            model,
            pairs,
            mask_id=tok.mask_id,
            loops=S,
            steps=0,
            order="margin",
            schedule=sched,
            threshold=thr,
            sampler_options=opts,
            seed=args.seed,
            batch_size=args.batch,
        )
        sc = score_grids(grids, pairs)
        solved = [int(g == p.solution) for g, p in zip(grids, pairs)]
        rows.append(
            {
                "label": label,
                "threshold": thr,
                "options": opts,
                "boards": len(pairs),
                "S": S,
                "solved": sc["solved"],
                "board_accuracy": sc["solved"] / len(pairs),
                "board_accuracy_ci": wilson_interval(sc["solved"], len(pairs)),
                "cell_accuracy": sc["cell_accuracy"],
                "gflops_per_board": flops / len(pairs) / 1e9,
                "wall_time_s": wall,
                "cells_per_s": sum(blanks) / max(wall, 1e-9),
                "max_steps_run": steps_run,
                "solved_per_board": solved,
            }
        )
        log(
            f"sudoku {label}: {sc['solved']}/{len(pairs)} boards, {flops / len(pairs) / 1e9:.3f} GFLOP/board, "
            f"{wall:.1f} s"
        )
    base = rows[0]
    comps = []
    for r in rows[1:]:
        d = np.array(r["solved_per_board"]) - np.array(base["solved_per_board"])
        comps.append(
            {
                "label": r["label"],
                "flop_saving": base["gflops_per_board"] / r["gflops_per_board"],
                "speedup": r["cells_per_s"] / base["cells_per_s"],
                "accuracy_delta": [
                    float(d.mean() - 2 * se(d)),
                    float(d.mean()),
                    float(d.mean() + 2 * se(d)),
                ]
                if len(d) > 1
                else [float(d.mean())] * 3,
            }
        )
    return rows, comps, str(run)


# --------------------------------------------------------------------------- estimate, plot, table


def estimate_flops(cfg, L: int, P: int, N: int, configs) -> float:
    """FLOPs of the plain configurations (the bulk of the run): T = L - P full calls of N rows at S = S_max."""
    m, S, T = cfg.model, cfg.diffusion.s_max, L - P
    per_call = prelude_flops(m, N, L) + S * loop_flops(m, N, L, L) + coda_flops(m, N, L)
    plain = sum(1 for c in configs if c[3] is None)
    # fast configurations: about a third each
    return T * per_call * (plain + 0.35 * (len(configs) - plain))


def plot(rows: list[dict], comps: list[dict], sudoku: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ls = sorted({r["L"] for r in rows})
    ncol = len(Ls) + (1 if sudoku else 0)
    fig, axes = plt.subplots(2, ncol, figsize=(5.5 * ncol, 9), squeeze=False)
    for j, L in enumerate(Ls):
        cs = [c for c in comps if c["L"] == L]
        ax = axes[0][j]
        for c in cs:
            lo, mid, hi = c["gen_ppl_ratio"]
            ax.errorbar(
                c["flop_saving"],
                mid,
                yerr=[[mid - lo], [hi - mid]],
                fmt="o" if "semi" in c["label"] else "s",
                capsize=3,
                label=c["label"],
            )
        ax.axhline(1.05, color="r", ls="--", lw=0.8)
        ax.axhline(1.0, color="k", lw=0.5)
        ax.axvline(4, color="r", ls=":", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("FLOP saving vs the plain sampler (x)")
        ax.set_ylabel("gen-PPL ratio (95% paired interval)")
        ax.set_title(f"L = {L}: quality vs compute")
        ax.legend(fontsize=6)
        ax = axes[1][j]
        names = [c["label"] for c in cs]
        ax.barh(
            names, [c["speedup"] for c in cs], color="tab:blue", alpha=0.7, label="tokens/s speedup"
        )
        ax.barh(
            names, [c["flop_saving"] for c in cs], color="none", edgecolor="k", label="FLOP saving"
        )
        ax.axvline(3, color="r", ls=":", lw=0.8)
        ax.set_xlabel("x over the plain sampler")
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(fontsize=7)
    if sudoku:
        ax = axes[0][-1]
        for r in sudoku:
            lo, hi = r["board_accuracy_ci"]
            ax.errorbar(
                r["gflops_per_board"],
                r["board_accuracy"],
                yerr=[[r["board_accuracy"] - lo], [hi - r["board_accuracy"]]],
                fmt="o",
                capsize=3,
                label=r["label"],
            )
        ax.set_xlabel("GFLOP per board")
        ax.set_ylabel("board accuracy (95% Wilson)")
        ax.set_title("Sudoku")
        ax.legend(fontsize=7)
        axes[1][-1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_tables(rows, comps, sudoku, sudoku_comps) -> None:
    head = (
        f"{'L':>4} {'config':<26} {'steps':>6} {'calls':>6} {'GFLOP/smp':>9} {'mid pos-loops':>13} "
        f"{'wall s':>7} {'tok/s':>7} {'gen-PPL':>8} {'entropy':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['L']:>4} {r['label']:<26} {r['steps_per_batch']:>6.0f} {r['network_calls']:>6} "
            f"{r['gflops_per_sample']:>9.2f} {r['mid_positions']:>13} {r['wall_time_s']:>7.1f} "
            f"{r['tokens_per_s']:>7.1f} {r['gen_ppl']:>8.1f} {r['entropy']:>7.3f}"
        )
    print(
        "\nagainst the plain sampler at the same T and S (95% paired intervals; ok = the whole interval inside)"
    )
    for c in comps:
        lo, mid, hi = c["gen_ppl_ratio"]
        elo, emid, ehi = c["entropy_change"]
        tags = [
            t
            for t, ok in (
                ("SPEED TARGET MET", c["meets_speed_target"]),
                ("LOOP TARGET MET", c["meets_loop_target"] and "loops" in c["label"]),
            )
            if ok
        ]
        print(
            f"L={c['L']:>3} {c['label']:<26} FLOPs x{c['flop_saving']:.2f} tok/s x{c['speedup']:.2f} "
            f"mid x{c['mid_saving']:.2f} | gen-PPL x{mid:.3f} [{lo:.3f}, {hi:.3f}] "
            f"{'ok' if c['ppl_within_5pct'] else 'not shown <= +5%'} | entropy {emid:+.2%} [{elo:+.2%}, {ehi:+.2%}] "
            f"{'ok' if c['entropy_within_2pct'] else 'not shown within 2%'} {' '.join(tags)}"
        )
    if sudoku:
        print(
            f"\n{'sudoku':<16} {'boards':>6} {'solved':>6} {'acc':>6} {'95% CI':>15} {'GFLOP/brd':>9} "
            f"{'wall s':>7} {'cells/s':>8} {'max steps':>9}"
        )
        for r in sudoku:
            lo, hi = r["board_accuracy_ci"]
            print(
                f"{r['label']:<16} {r['boards']:>6} {r['solved']:>6} {r['board_accuracy']:>6.3f} "
                f"[{lo:.3f}, {hi:.3f}] {r['gflops_per_board']:>9.3f} {r['wall_time_s']:>7.1f} "
                f"{r['cells_per_s']:>8.0f} {r['max_steps_run']:>9}"
            )
        for c in sudoku_comps:
            lo, mid, hi = c["accuracy_delta"]
            print(
                f"  {c['label']:<14} FLOPs x{c['flop_saving']:.2f}, cells/s x{c['speedup']:.2f}, board accuracy "
                f"{mid:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired)"
            )


def exactness_check(model, tok, cfg, L: int, prompts: torch.Tensor, args) -> dict[str, bool]:
    """One batch of up to 8 prompts: the dual cache and the delayed cache refreshed at every call give the plain
    tokens."""
    out = {}
    p = prompts[: min(args.batch, 8)]
    for label, sampler, opts in [
        ("semi_ar+dual", "semi_ar", {"block_length": args.block_length, "cache": "dual"}),
        ("confidence+delayed", "confidence", {"cache": "delayed"}),
    ]:
        base_opts = {k: v for k, v in opts.items() if k != "cache"}
        a = run_text(model, tok, cfg, L, label, sampler, base_opts, p, args)["tokens"]
        b = run_text(model, tok, cfg, L, label, sampler, {**opts, "refresh": 1}, p, args)["tokens"]
        out[label] = bool(torch.equal(a, b))
    return out


def select_configs(configs, names: str | None) -> set[str]:
    """The labels of ``--configs`` (every configuration and the exactness check when none is given)."""
    labels = [c[0] for c in configs] + ["exactness"]
    if not names:
        return set(labels)
    chosen = {n.strip() for n in names.split(",") if n.strip()}
    unknown = sorted(chosen - set(labels))
    if unknown:
        raise SystemExit(
            f"error: --configs {','.join(unknown)} unknown; choose from {','.join(labels)}"
        )
    orphans = sorted(
        c[0] for c in configs if c[0] in chosen and c[3] is not None and c[3] not in chosen
    )
    if orphans:
        raise SystemExit(
            f"error: --configs {','.join(orphans)} need their plain sampler in the list too "
            f"({','.join(sorted({c[3] for c in configs if c[0] in orphans}))})"
        )
    return chosen


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--checkpoint", help="text run with max_seq_len >= the largest length (default: train one)"
    )
    ap.add_argument(
        "--evaluator", help="gen-PPL evaluator: an AR run or a GPT-2 folder (default: train one)"
    )
    ap.add_argument("--sudoku-checkpoint", help="a Sudoku run (default: train one)")
    ap.add_argument("--out", default="benchmarks/results/fast_sampling")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: small models, L 32,64, N 8, 16 boards"
    )
    ap.add_argument("--lengths", default="128,256", help="windows L (prompt included)")
    ap.add_argument(
        "--prompt-tokens", type=int, default=16, help="P: prompt tokens from each validation row"
    )
    ap.add_argument(
        "--num-samples", type=int, default=128, help="samples per configuration and length"
    )
    ap.add_argument(
        "--batch", type=int, default=32, help="samples per sampling batch (and boards per batch)"
    )
    ap.add_argument(
        "--thresholds", default="0.9,0.7", help="confidence thresholds of parallel decoding"
    )
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--boards", type=int, default=200, help="Sudoku test boards")
    ap.add_argument(
        "--sudoku-steps",
        type=int,
        default=2000,
        help="training steps when a Sudoku model is trained",
    )
    ap.add_argument("--skip-sudoku", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--configs",
        help="comma-separated text configurations to run ('exactness' names the "
        "refresh-every-call check; a fast row's plain sampler must be listed too); default: all",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the run-time estimate and stop")
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.prompt_tokens, args.num_samples, args.batch = "32,64", 8, 8, 8
        args.thresholds, args.block_length, args.boards = "0.9", 8, 16
    args.lengths = [int(v) for v in str(args.lengths).split(",") if v.strip()]
    args.thresholds = [float(v) for v in str(args.thresholds).split(",") if v.strip()]
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(s):
        print(s, file=sys.stderr, flush=True)

    configs = text_configs(args.block_length, args.thresholds)
    chosen = select_configs(configs, args.configs)
    configs = [c for c in configs if c[0] in chosen]
    # the model the script would train, without training it
    if args.dry_run and not args.checkpoint:
        cfg = load_config(
            "tiny", None, QUICK_TINY if args.quick else [f"model.max_seq_len={max(args.lengths)}"]
        )
        est = sum(
            estimate_flops(cfg, L, args.prompt_tokens, args.num_samples, configs)
            for L in args.lengths
        )
        log(
            f"about {est / 1e12:.0f} TFLOP of sampling, roughly {est / 50e9 / 60:.0f} min at 50 GFLOP/s, plus "
            "scoring, Sudoku and training the models that are not given"
        )
        return
    run = text_checkpoint(args)
    model, tok, cfg = load_model(run)
    if max(args.lengths) > cfg.model.max_seq_len:
        raise SystemExit(
            f"error: --lengths {max(args.lengths)} exceeds the checkpoint window "
            f"{cfg.model.max_seq_len}; pass a checkpoint trained with model.max_seq_len >= it"
        )
    P = args.prompt_tokens
    est = sum(estimate_flops(cfg, L, P, args.num_samples, configs) for L in args.lengths)
    log(
        f"checkpoint {run}: S_max={cfg.diffusion.s_max}, lengths {args.lengths}, N={args.num_samples}, "
        f"{len(configs)} configurations; about {est / 1e12:.0f} TFLOP of sampling, roughly {est / 50e9 / 60:.0f} "
        "min at 50 GFLOP/s (sampling end to end on the 2-core CPU), plus scoring and Sudoku"
    )
    if args.dry_run:
        return
    evaluator_run = evaluator_checkpoint(args)
    evaluator = load_evaluator(str(evaluator_run), "cpu")
    prompts = prompt_rows(cfg, args.num_samples, P)
    checkpoint = str(resolve_checkpoint(run))
    key0 = {
        "checkpoint": checkpoint,
        "evaluator": str(evaluator_run),
        "num_samples": args.num_samples,
        "batch": args.batch,
        "prompt_tokens": P,
        "seed": args.seed,
        "threads": args.threads,
    }
    L0 = min(args.lengths)
    exact = None
    if "exactness" in chosen:
        exact = cached_row(
            out_dir / "rows" / f"L{L0}_exactness.json",
            {**key0, "L": L0, "block_length": args.block_length},
            lambda: exactness_check(model, tok, cfg, L0, prompts, args),
        )
        exact.pop("resumed", None)
        log(f"exactness (refresh every call == no cache, one batch): {exact}")

    rows, comps = [], []
    for L in args.lengths:
        by_label = {}
        for label, sampler, opts, base in configs:

            def make(label=label, sampler=sampler, opts=opts, L=L):
                r = run_text(model, tok, cfg, L, label, sampler, opts, prompts, args)
                add_quality(r, tok, evaluator, P)
                return r

            key = {**key0, "L": L, "label": label, "options": opts}
            r = cached_row(out_dir / "rows" / f"L{L}_{label}.json", key, make)
            rows.append(r)
            by_label[label] = r
            log(
                f"L={L} {label}: {r['gflops_per_sample']:.2f} GFLOP/sample, {r['wall_time_s']:.1f} s, "
                f"{r['tokens_per_s']:.1f} tok/s, gen-PPL {r['gen_ppl']:.1f}, entropy {r['entropy']:.3f}"
            )
            if base is not None:
                comps.append(compare(r, by_label[base]))
    sudoku, sudoku_comps, sudoku_run = (
        ([], [], None) if args.skip_sudoku else sudoku_rows(args, log)
    )
    result = {
        "checkpoint": checkpoint,
        "command": " ".join(sys.argv),
        "quick": args.quick,
        "lengths": args.lengths,
        "prompt_tokens": P,
        "num_samples": args.num_samples,
        "batch": args.batch,
        "thresholds": args.thresholds,
        "block_length": args.block_length,
        "seed": args.seed,
        "threads": args.threads,
        "S": cfg.diffusion.s_max,
        "exactness_refresh_every_call": exact,
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}".strip(),
        "rows": rows,
        "comparisons": comps,
        "sudoku_checkpoint": sudoku_run,
        "sudoku": sudoku,
        "sudoku_comparisons": sudoku_comps,
        "total_wall_time_s": time.perf_counter() - t_start,
    }
    (out_dir / "bench_fast_sampling.json").write_text(json.dumps(result, indent=1))
    plot(rows, comps, sudoku, out_dir / "bench_fast_sampling.png")
    if exact is not None:
        print(
            f"exactness (refresh every call == no cache, same seed, one batch at L={L0}): {exact}\n"
        )
    print_tables(rows, comps, sudoku, sudoku_comps)
    print(
        f"\nwrote {out_dir / 'bench_fast_sampling.json'} and {out_dir / 'bench_fast_sampling.png'} "
        f"({result['total_wall_time_s']:.0f} s)"
    )


if __name__ == "__main__":
    from loopmdm.cli import one_line_errors

    one_line_errors(main)  # e.g. a training run stopped by a signal: one line saying how to resume
