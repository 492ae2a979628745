"""Sampling benchmark: quality versus inference compute for fixed loop counts S and adaptive loop policies,
and the cached ancestral sampler against the plain one.

    python benchmarks/bench_sampling.py --checkpoint RUN --out benchmarks/results/sampling
    python benchmarks/bench_sampling.py --quick --out /tmp/bench_sampling_quick      # trains a small model

For T in --steps (default 16, 64, 256) it samples N sequences for every fixed S in --loops (default
1, 2, 4, 8, 12, 16, 24) and for each adaptive policy (schedule, converge by hidden-state change,
converge by KL, per-token exit, warm start), all from the same seed, and measures:

* compute, from the sampler's own ComputeReport: mid-block loop iterations (batched calls and
  position-weighted), network calls, FLOPs per sample, wall time;
* quality, with no external scorer: the model's own NELBO (nats / token) of its samples at the training
  S_max (lower = the samples are more likely under the model; stratified quadrature over t with the same
  masks for every configuration), and the mean unigram entropy of each sample's tokens (repetition
  collapse shows up as low entropy, which the NELBO alone would reward). With --evaluator (an AR run or a
  GPT-2 folder) the generative perplexity of ``loopmdm.eval.genppl`` is added.

The quality sweep uses the cached ancestral sampler by default (--sampler; MDLM evaluates with it too):
every configuration shares it, and it roughly halves the network calls at T = 256.

N (--num-samples) defaults to 32: enough that the quality differences claimed exceed two paired standard errors
(the first run used 4 and every error bar overlapped). The full run then takes about 8x the 319 s of that run,
roughly 45 min on the 2-core development CPU with one thread (the cached-vs-plain part is unchanged).

Then at the largest T it runs the plain and the cached ancestral sampler at S = S_max with the same seed and
compares network calls and tokens. Writes OUT/bench_sampling.json and OUT/bench_sampling.png and prints a table.
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
from loopmdm.diffusion import Batch, MaskedDiffusion, Noise
from loopmdm.diffusion.schedules import get_schedule
from loopmdm.sampling import generate

try:
    from loopmdm.eval.genppl import unigram_entropy
except ImportError:  # the evaluation module is optional here
    from collections import Counter

    def unigram_entropy(ids) -> float:
        n = len(ids)
        if n == 0:
            return 0.0
        p = np.array(list(Counter(int(i) for i in ids).values()), dtype=np.float64) / n
        return float(-(p * np.log(p)).sum())


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def get_checkpoint(args) -> Path:
    """The run to sample from: --checkpoint, or a tiny-preset run trained into OUT/tiny_run."""
    if args.checkpoint:
        return Path(args.checkpoint)
    return train_run(
        Path(args.out) / "tiny_run",
        "tiny",
        QUICK_TINY if args.quick else [],
        "a tiny-preset checkpoint",
    )


def policies(s_max: int, thresholds: dict[str, float]) -> list[tuple[str, str, dict]]:
    """(label, policy, options) of the adaptive policies, all bounded by the training S_max."""
    return [
        ("schedule-hump", "schedule", {"s_min": 1, "s_max": s_max, "shape": "hump"}),
        ("schedule-linear", "schedule", {"s_min": 1, "s_max": s_max, "shape": "linear"}),
        ("converge-delta", "converge", {"threshold": thresholds["delta"], "s_max": s_max}),
        (
            "converge-kl",
            "converge",
            {"threshold": thresholds["kl"], "criterion": "kl", "s_max": s_max},
        ),
        ("per-token", "per_token", {"threshold": thresholds["token"], "s_max": s_max}),
        ("warm", "warm", {"threshold": thresholds["delta"], "s_max": s_max}),
    ]


@torch.no_grad()
def calibrate(model, tok, s_max: int, length: int, seed: int) -> dict[str, float]:
    """Exit thresholds from the model itself, on partly masked random canvases (t from 0.1 to 1): the median
    change between the first and the second loop (relative hidden-state change per sample at masked
    positions, the same per token, and the KL between the two loops' predictions). So a convergence policy
    exits once a loop moves the state no more than a typical second loop does: about half the calls stop at
    S = 2, most others soon after (a warm-started state usually moves less at its first loop)."""
    from loopmdm.sampling.policies import mean_kl, relative_change, token_change

    g = torch.Generator().manual_seed(seed)
    N = 8
    x = torch.randint(0, tok.vocab_size, (N, length), generator=g)
    t = torch.linspace(0.1, 1.0, N)
    x = torch.where(
        torch.rand(N, length, generator=g) < t[:, None], torch.full_like(x, tok.mask_id), x
    )
    masked = (x == tok.mask_id).float()
    ctx = model.prelude(x, t)
    h1 = model.loop_step(ctx.h0, ctx, 0)
    h2 = model.loop_step(h1, ctx, 1)
    lp1 = torch.log_softmax(model.coda(h1, ctx).float(), -1)
    lp2 = torch.log_softmax(model.coda(h2, ctx).float(), -1)
    return {
        "delta": float(relative_change(h2, h1, masked).median()),
        "token": float(token_change(h2, h1).median()),
        "kl": float(mean_kl(lp2, lp1, masked).median()),
    }


@torch.no_grad()
def own_nelbo(
    model, tokens: torch.Tensor, objective, s_max: int, grid: int, seed: int
) -> np.ndarray:
    """NELBO (nats / token) of each sample [N] under the model at S = S_max, by stratified quadrature over t:
    t_k = (k + 1/2) / grid, k < grid, with the same masks for every configuration (common random numbers)."""
    gen = torch.Generator().manual_seed(seed)
    N, L = tokens.shape
    total = torch.zeros(N, dtype=torch.float64)
    for k in range(grid):
        t = torch.full((1,), (k + 0.5) / grid)
        for i in range(N):
            noise = Noise(t=t, u=torch.rand((1, L), generator=gen))
            out = objective.loss(model, Batch(tokens[i : i + 1]), s_max, noise)
            total[i] += float(out.nll_sum) / L
    return (total / grid).numpy()


def quality(model, tokens: torch.Tensor, objective, s_max: int, grid: int, seed: int) -> dict:
    """Own NELBO at S_max and unigram entropy: mean and standard error over the N samples."""
    nelbo = own_nelbo(model, tokens, objective, s_max, grid, seed)
    ent = np.array([unigram_entropy(r) for r in tokens.tolist()])
    return {
        "nelbo": float(nelbo.mean()),
        "nelbo_se": stderr(nelbo),
        "entropy": float(ent.mean()),
        "entropy_se": stderr(ent),
        "nelbo_per_sample": nelbo.tolist(),
        "entropy_per_sample": ent.tolist(),
    }


def stderr(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    return float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0


def run_config(
    model, tok, cfg, T: int, label: str, policy: str, opts: dict, args, objective, evaluator
) -> dict:
    out = generate(
        model,
        tok,
        num_samples=args.num_samples,
        length=args.length,
        steps=T,
        sampler=args.sampler,
        policy=policy,
        policy_options=opts,
        seed=args.seed,
        schedule=cfg.diffusion.schedule,
    )
    rep = out.report
    N = out.tokens.shape[0]
    row = {
        "T": T,
        "label": label,
        "policy": policy,
        "options": opts,
        "sampler": args.sampler,
        "loop_iterations": rep.loop_iterations,
        "token_loop_iterations": rep.token_loop_iterations,
        "mean_loops": rep.mean_loops,
        "network_calls": rep.network_calls,
        "network_rows": rep.network_rows,
        "coda_calls": rep.coda_calls,
        "gflops_per_sample": rep.flops / N / 1e9,
        "wall_time_s": rep.wall_time_s,
        **quality(model, out.tokens, objective, cfg.diffusion.s_max, args.grid, args.seed),
        "examples": out.texts[:2],
    }
    if evaluator is not None:
        from loopmdm.eval.genppl import generative_perplexity

        res = generative_perplexity(out.texts, evaluator, token_ids=out.tokens.tolist())
        row["gen_ppl"] = res.gen_ppl
        if not res.empty_samples:  # per-sample log gen-PPL, for paired differences
            row["log_gen_ppl_per_sample"] = [math.log(p) for p in res.per_sample_ppl]
    return row


def cached_vs_plain(
    model, tok, cfg, T: int, num_samples: int, length: int, seed: int, name: str
) -> dict:
    """Plain vs cached ancestral sampling at S = S_max, same seed: network calls (batched), sequence
    evaluations (rows summed over calls: the per-sample cost) and token agreement. Identical tokens are
    guaranteed only for a model whose prediction depends on x_t alone (time_conditioning = none)."""
    L = min(length, cfg.model.max_seq_len)
    kw = dict(
        num_samples=num_samples,
        length=L,
        steps=T,
        policy="fixed",
        policy_options={"loops": cfg.diffusion.s_max},
        seed=seed,
        schedule=cfg.diffusion.schedule,
    )
    plain = generate(model, tok, sampler="ancestral", **kw)
    out = {
        "checkpoint": name,
        "T": T,
        "S": cfg.diffusion.s_max,
        "L": L,
        "num_samples": num_samples,
        "time_conditioning": cfg.model.time_conditioning,
        "plain": {
            "network_calls": plain.report.network_calls,
            "network_rows": plain.report.network_rows,
            "gflops_per_sample": plain.report.flops / num_samples / 1e9,
            "wall_time_s": plain.report.wall_time_s,
        },
    }
    for gran in ("row", "batch"):
        c = generate(model, tok, sampler="cached", sampler_options={"granularity": gran}, **kw)
        same = c.tokens == plain.tokens
        out[f"cached_{gran}"] = {
            "network_calls": c.report.network_calls,
            "network_rows": c.report.network_rows,
            "gflops_per_sample": c.report.flops / num_samples / 1e9,
            "wall_time_s": c.report.wall_time_s,
            "row_eval_reduction": 1 - c.report.network_rows / plain.report.network_rows,
            "call_reduction": 1 - c.report.network_calls / plain.report.network_calls,
            "identical_samples": int(same.all(1).sum()),
            "identical_token_fraction": float(same.float().mean()),
        }
    return out


def summarize(rows: list[dict], s_max: int) -> list[dict]:
    """Every configuration against fixed S = S_max at the same T: loop savings, and quality deltas with paired
    standard errors (sample i of every configuration comes from the same random numbers, so samples are
    coupled and the per-sample differences are less noisy than the means). A configuration reaches S_max
    quality when its NELBO is not higher, nor its entropy lower, by more than two paired standard errors
    (a weak non-inferiority check with few samples: read the deltas, not only the verdict). A difference is
    *significant* (``*`` in the table) when it exceeds two paired standard errors: only those are claims; with
    the default N = 32 (the first version used 4, and every error bar overlapped) the paired standard error of
    the own NELBO is a few hundredths of a nat."""
    out = []
    for T in sorted({r["T"] for r in rows}):
        ref = next(
            r
            for r in rows
            if r["T"] == T and r["policy"] == "fixed" and r["options"]["loops"] == s_max
        )
        for r in rows:
            if r["T"] != T or r is ref:
                continue
            d_n = np.array(r["nelbo_per_sample"]) - np.array(ref["nelbo_per_sample"])
            d_e = np.array(r["entropy_per_sample"]) - np.array(ref["entropy_per_sample"])
            out.append(
                {
                    "T": T,
                    "label": r["label"],
                    "policy": r["policy"],
                    "loop_saving_batched": ref["loop_iterations"] / max(r["loop_iterations"], 1),
                    "loop_saving_per_position": ref["token_loop_iterations"]
                    / max(r["token_loop_iterations"], 1e-9),
                    "flop_saving": ref["gflops_per_sample"] / r["gflops_per_sample"],
                    "nelbo_delta": float(d_n.mean()),
                    "nelbo_delta_se": stderr(d_n),
                    "entropy_delta": float(d_e.mean()),
                    "entropy_delta_se": stderr(d_e),
                    "nelbo_ok": bool(d_n.mean() <= 2 * stderr(d_n)),
                    "entropy_ok": bool(-d_e.mean() <= 2 * stderr(d_e)),
                    "reaches_quality": bool(
                        d_n.mean() <= 2 * stderr(d_n) and -d_e.mean() <= 2 * stderr(d_e)
                    ),
                    "nelbo_significant": bool(abs(d_n.mean()) > 2 * stderr(d_n)),
                    "entropy_significant": bool(abs(d_e.mean()) > 2 * stderr(d_e)),
                }
            )
            if "log_gen_ppl_per_sample" in r and "log_gen_ppl_per_sample" in ref:
                d_g = np.array(r["log_gen_ppl_per_sample"]) - np.array(
                    ref["log_gen_ppl_per_sample"]
                )
                out[-1].update(
                    log_gen_ppl_delta=float(d_g.mean()),
                    log_gen_ppl_delta_se=stderr(d_g),
                    gen_ppl_significant=bool(abs(d_g.mean()) > 2 * stderr(d_g)),
                )
    return out


def plot(rows: list[dict], s_max: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = sorted({r["T"] for r in rows})
    fig, axes = plt.subplots(3, len(Ts), figsize=(4.8 * len(Ts), 11.5), squeeze=False)
    markers = dict(zip(sorted({r["label"] for r in rows if r["policy"] != "fixed"}), "os^vDP*X"))
    for j, T in enumerate(Ts):
        fixed = sorted(
            (r for r in rows if r["T"] == T and r["policy"] == "fixed"),
            key=lambda r: r["mean_loops"],
        )
        for i, (key, name) in enumerate(
            [
                ("nelbo", f"own NELBO of samples at S={s_max} (nats/token)"),
                ("entropy", "unigram entropy of samples (nats)"),
            ]
        ):
            ax = axes[i][j]
            ax.errorbar(
                [r["mean_loops"] for r in fixed],
                [r[key] for r in fixed],
                yerr=[r[f"{key}_se"] for r in fixed],
                fmt="-",
                color="k",
                marker=".",
                label="fixed S",
            )
            for r in fixed:
                ax.annotate(
                    f"S={r['options']['loops']}",
                    (r["mean_loops"], r[key]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
            for r in rows:
                if r["T"] == T and r["policy"] != "fixed":
                    ax.errorbar(
                        r["mean_loops"],
                        r[key],
                        yerr=r[f"{key}_se"],
                        fmt=markers[r["label"]],
                        label=r["label"],
                        alpha=0.8,
                    )
            ax.set_xscale("log", base=2)
            ax.set_xlabel("mid-block loops per position and step (mean S actually run)")
            ax.set_ylabel(name)
            ax.set_title(f"T = {T} steps")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
        ax = axes[2][j]  # the trade-off: more loops lower the NELBO and the entropy together
        ax.plot([r["entropy"] for r in fixed], [r["nelbo"] for r in fixed], "-k.", label="fixed S")
        for r in fixed:
            ax.annotate(
                f"S={r['options']['loops']}",
                (r["entropy"], r["nelbo"]),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
        for r in rows:
            if r["T"] == T and r["policy"] != "fixed":
                ax.plot(r["entropy"], r["nelbo"], markers[r["label"]], label=r["label"], alpha=0.8)
        ax.set_xlabel("unigram entropy (nats)")
        ax.set_ylabel(f"own NELBO at S={s_max}")
        ax.set_title(f"T = {T}: NELBO vs entropy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(rows: list[dict], summary: list[dict], cached: list[dict]) -> None:
    head = (
        f"{'T':>4} {'config':<16} {'mean S':>6} {'loop it':>7} {'pos-loop':>8} {'calls':>5} {'GFLOP/smp':>8} "
        f"{'wall s':>7} {'NELBO':>7} {'+-':>5} {'entropy':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        label = f"S={r['options']['loops']}" if r["policy"] == "fixed" else r["label"]
        print(
            f"{r['T']:>4} {label:<16} {r['mean_loops']:>6.2f} {r['loop_iterations']:>7} "
            f"{r['token_loop_iterations']:>8.1f} {r['network_calls']:>5} {r['gflops_per_sample']:>8.2f} "
            f"{r['wall_time_s']:>7.1f} {r['nelbo']:>7.3f} {r['nelbo_se']:>5.3f} {r['entropy']:>7.3f}"
        )
    print(
        "\nagainst fixed S = S_max at the same T (saving = S_max's loop iterations / this one's; deltas paired)"
    )
    print("(* = the difference exceeds two paired standard errors)")
    for s in summary:
        star = {
            k: "*" if s.get(f"{k}_significant") else " " for k in ("nelbo", "entropy", "gen_ppl")
        }
        gen = (
            f" log gen-PPL {s['log_gen_ppl_delta']:+.3f}{star['gen_ppl']} (se {s['log_gen_ppl_delta_se']:.3f})"
            if "log_gen_ppl_delta" in s
            else ""
        )
        print(
            f"T={s['T']:>3} {s['label']:<16} loops x{s['loop_saving_batched']:.2f} (per position "
            f"x{s['loop_saving_per_position']:.2f}, FLOPs x{s['flop_saving']:.2f}) NELBO {s['nelbo_delta']:+.3f}"
            f"{star['nelbo']} (se {s['nelbo_delta_se']:.3f}) entropy {s['entropy_delta']:+.3f}{star['entropy']} "
            f"(se {s['entropy_delta_se']:.3f}){gen} -> NELBO {'ok' if s['nelbo_ok'] else 'worse'}, entropy "
            f"{'ok' if s['entropy_ok'] else 'lower'}"
        )
    for c in cached:
        p = c["plain"]
        print(
            f"\ncached vs plain ancestral, {c['checkpoint']} (time conditioning {c['time_conditioning']}), "
            f"T={c['T']}, S={c['S']}, L={c['L']}, N={c['num_samples']}: plain {p['network_calls']} calls, "
            f"{p['network_rows']} sequence evaluations"
        )
        for g in ("row", "batch"):
            r = c[f"cached_{g}"]
            print(
                f"  cached/{g:<5}: {r['network_calls']} calls ({r['call_reduction']:.0%} fewer), "
                f"{r['network_rows']} sequence evaluations ({r['row_eval_reduction']:.0%} fewer), identical samples "
                f"{r['identical_samples']}/{c['num_samples']} ({r['identical_token_fraction']:.1%} of tokens)"
            )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--checkpoint", help="run or checkpoint folder (default: train a tiny-preset run into OUT)"
    )
    ap.add_argument("--out", default="benchmarks/results/sampling")
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: small model, T 8,32, S 1,2,4,8, N 2"
    )
    ap.add_argument("--steps", default="16,64,256", help="denoising steps T")
    ap.add_argument("--loops", default="1,2,4,8,12,16,24", help="fixed loop counts S")
    ap.add_argument(
        "--num-samples",
        type=int,
        default=32,
        help="samples per row: enough that the differences claimed exceed 2 paired standard errors",
    )
    ap.add_argument("--length", type=int, default=None, help="window L (default: the model's)")
    ap.add_argument("--sampler", default="cached", help="sampler of the quality sweep")
    ap.add_argument(
        "--grid", type=int, default=8, help="t quadrature points per sample for the own NELBO"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--exact-checkpoint",
        default=None,
        help="a run trained with model.time_conditioning=none, for the exact cached == plain check",
    )
    ap.add_argument(
        "--evaluator", default=None, help="gen-PPL evaluator (AR run or GPT-2 folder), optional"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.loops, args.num_samples, args.grid = "8,32", "1,2,4,8", 4, 4
    torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    run = get_checkpoint(args)
    model, tok, cfg = load_model(run)
    s_max = cfg.diffusion.s_max
    args.length = args.length or cfg.model.max_seq_len
    loops = sorted(set(parse_ints(args.loops)) | {s_max})
    objective = MaskedDiffusion(get_schedule(cfg.diffusion.schedule), tok.mask_id)
    evaluator = None
    if args.evaluator:
        from loopmdm.eval.genppl import load_evaluator

        evaluator = load_evaluator(args.evaluator, "cpu")
    thresholds = calibrate(model, tok, s_max, args.length, args.seed)
    print(
        f"checkpoint {run}: S_max={s_max}, L={args.length}, N={args.num_samples}, thresholds {thresholds}",
        file=sys.stderr,
    )

    rows = []
    for T in parse_ints(args.steps):
        configs = [(f"S={s}", "fixed", {"loops": s}) for s in loops] + policies(s_max, thresholds)
        for label, policy, opts in configs:
            rows.append(
                run_config(model, tok, cfg, T, label, policy, opts, args, objective, evaluator)
            )
            r = rows[-1]
            print(
                f"T={T} {label}: mean S {r['mean_loops']:.2f}, NELBO {r['nelbo']:.3f}, entropy "
                f"{r['entropy']:.3f}, {r['wall_time_s']:.1f}s",
                file=sys.stderr,
            )
    T_max = max(parse_ints(args.steps))
    cached = [
        cached_vs_plain(model, tok, cfg, T_max, args.num_samples, args.length, args.seed, str(run))
    ]
    # a time-independent model: the cached sampler must give identical tokens
    if args.exact_checkpoint:
        m2, tok2, cfg2 = load_model(args.exact_checkpoint)
        for n in (args.num_samples, 1):
            cached.append(
                cached_vs_plain(
                    m2, tok2, cfg2, T_max, n, args.length, args.seed, args.exact_checkpoint
                )
            )
    summary = summarize(rows, s_max)
    result = {
        "checkpoint": str(resolve_checkpoint(run)),
        "command": " ".join(sys.argv),
        "s_max": s_max,
        "length": args.length,
        "num_samples": args.num_samples,
        "grid": args.grid,
        "seed": args.seed,
        "sampler": args.sampler,
        "thresholds": thresholds,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}".strip(),
        "exact_checkpoint": args.exact_checkpoint,
        "rows": rows,
        "summary": summary,
        "cached_vs_plain": cached,
        "total_wall_time_s": time.perf_counter() - t_start,
    }
    (out_dir / "bench_sampling.json").write_text(json.dumps(result, indent=1))
    plot(rows, s_max, out_dir / "bench_sampling.png")
    print_table(rows, summary, cached)
    print(
        f"\nwrote {out_dir / 'bench_sampling.json'} and {out_dir / 'bench_sampling.png'} "
        f"({result['total_wall_time_s']:.0f} s)"
    )


if __name__ == "__main__":
    from loopmdm.cli import one_line_errors

    # e.g. its training run stopped by a signal: one line saying how to resume
    one_line_errors(main)
