"""The laptop recipe sweep: which settings make the quickstart model leave the unigram plateau early.

Every variant is ``SWEEP_BASE`` (the `tiny` preset as it was when the sweep ran: 6 layers x 128, n_h / n_m /
n_o = 1 / 2 / 3, AdamW 1e-3, 800 steps; the preset has since become the ``d96x4`` variant) with a few
``--set`` overrides, trained by ``loopmdm train`` in its own process (one thread each, ``--parallel`` at a
time) with validation every ``--eval-every`` steps on 2 batches. Phase 1 stops each run (SIGTERM: the trainer
saves and exits) after ``--stop-at`` steps. ``--full NAME ...`` trains the ``FULL`` runs (the candidates at
their whole length, validation on 4 batches every 100 steps) to the end. The plateau is the validation NELBO of
a model that predicts the training unigram distribution at every masked position (for the log-linear schedule
that NELBO is the unigram cross-entropy H); a run has "left the plateau" at the first evaluation whose NELBO
is at least ``--margin`` nats below H. ``--report`` only summarises the runs already in OUT.

    python benchmarks/recipe_sweep.py --out runs/recipe                       # phase 1, all variants
    python benchmarks/recipe_sweep.py --out runs/recipe --full full_d96x4 full_d64x4
    python benchmarks/recipe_sweep.py --out runs/recipe --accelerators         # round 5, 10 runs

For the round-5 runs (``acc_<option>_s<seed>``) the report adds the step at which each run first reaches the
final validation NELBO of the uniform recipe of the same seed (``reaches uniform``).

Prints a table and writes ``OUT/recipe_sweep.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SWEEP_BASE = [
    "model.d_model=128",
    "model.n_heads=4",
    "model.n_layers=6",
    "model.n_o=3",
    "train.lr=1e-3",
    "train.max_steps=800",
    "train.save_every=200",
    # the sampler of t every round before 5 used (the `tiny` preset has since adopted round 5's bell)
    "diffusion.t_sampler=uniform",
    "diffusion.t_weighting=exact",
]
RECIPE = ["model.d_model=96", "model.n_heads=3", "model.n_layers=4", "model.n_o=1", "train.lr=2e-3"]
SMALL = ["model.d_model=64", "model.n_heads=2", "model.n_layers=4", "model.n_o=1", "train.lr=2e-3"]

VARIANTS: dict[str, list[str]] = {
    "base": [],
    "lr2e-3": ["train.lr=2e-3"],
    "lr2e-3_wu200": ["train.lr=2e-3", "train.warmup_steps=200"],
    "lr4e-3_wu200": ["train.lr=4e-3", "train.warmup_steps=200"],
    "no_adaln": ["model.time_conditioning=none"],
    "no_adaln_lr2e-3": ["model.time_conditioning=none", "train.lr=2e-3"],
    "vocab1024": ["model.vocab_size=1024"],
    "vocab4096": ["model.vocab_size=4096"],
    "batch64_lr2e-3": ["train.batch_size=64", "train.lr=2e-3"],
    "betas95": ["train.betas=[0.9,0.95]"],
    "d192": ["model.d_model=192", "model.n_heads=6"],
    "depth4": ["model.n_layers=4", "model.n_o=1"],
    # round 2: initialisation scale, QK-norm, learned positions
    "init05": ["model.init_std=0.05"],
    "init10": ["model.init_std=0.1"],
    "qknorm": ["model.qk_norm=true"],
    "qknorm_lr3e-3": ["model.qk_norm=true", "train.lr=3e-3"],
    "qknorm_init05": ["model.qk_norm=true", "model.init_std=0.05"],
    "init05_lr3e-3": ["model.init_std=0.05", "train.lr=3e-3"],
    "learned_pos": ["model.learned_positions=true"],
    # round 3: diagnostics (is the plateau the loops' or the objective's?)
    "no_loops": ["diffusion.loop_dist=fixed", "diffusion.s_fixed=1"],
    "ar": [
        "diffusion.objective=ar",
        "model.causal=true",
        "model.time_conditioning=none",
        "diffusion.loop_dist=fixed",
        "diffusion.s_fixed=1",
    ],
    # round 4: smaller models run more optimizer steps in the same time
    "d96x4": RECIPE + ["train.max_steps=2000"],
    "d64x4": SMALL + ["train.max_steps=3000"],
}
FULL_EVAL = ["train.eval_every=100", "train.eval_batches=4"]
FULL: dict[str, list[str]] = {
    "full_d96x4": RECIPE + ["train.max_steps=2000"] + FULL_EVAL,
    "full_d64x4": SMALL + ["train.max_steps=2800"] + FULL_EVAL,
}
# Round 5 (issue 25): the field's MDM accelerators on today's `tiny` preset (RECIPE at 1600 steps) as a plain MDM
# (S = 1, so the recipe is chosen before any loop comparison), two seeds each, trained to the end. P-POTS
# (``--ppots``) needs per-bin weights w measured on a trained model, so it runs after the uniform runs: see
# ``ppots_overrides``.
TINY_PLAIN = RECIPE + [
    "train.max_steps=1600",
    "train.save_every=400",
    "diffusion.loop_dist=fixed",
    "diffusion.s_fixed=1",
]
ACCELERATORS: dict[str, list[str]] = {
    "uniform": [],
    "bell": ["diffusion.t_sampler=bell"],
    "bellpaper": ["diffusion.t_sampler=bell", "diffusion.t_weighting=paper"],
    "mirror": ["diffusion.complementary_masks=true"],
    "puma": ["diffusion.progressive_stages=8"],
}
# validation every 50 steps on 8 batches, the same rows, t and masks for both seeds (train.eval_seed)
ACC_EVAL = ["train.eval_every=50", "train.eval_batches=8", "train.eval_seed=0"]
for _seed in (0, 1):  # every option at seed 0 first, so a cut-short sweep still compares them
    for _acc, _extra in ACCELERATORS.items():
        FULL[f"acc_{_acc}_s{_seed}"] = TINY_PLAIN + _extra + [f"train.seed={_seed}"] + ACC_EVAL


PPOTS_BINS = 16
PPOTS_RUNS = ("acc_ppots_s0", "acc_ppots_s1")


def ppots_overrides(out: Path, seed: int, bins: int = PPOTS_BINS) -> list[str]:
    """P-POTS (arXiv 2511.18159): t drawn from a piecewise-constant density proportional to w(t) = sqrt(E[L_t^2]),
    the per-bin root mean square of one row's loss, mixed with 5% uniform, with exact importance weights (the
    NELBO stays unbiased). The paper re-estimates w as training goes; here w is measured once, on training rows,
    with the finished uniform run of the same seed (``acc_uniform_s<seed>``) and kept fixed for the whole run:
    the variance-minimising density of a trained model of this recipe (and resume stays exact)."""
    from loopmdm.checkpoint import load_model
    from loopmdm.data import prepare_data
    from loopmdm.diffusion import estimate_ppots_weights, make_objective

    source = out / f"acc_uniform_s{seed}"
    if not (source / "checkpoints").is_dir():
        sys.exit(
            f"error: P-POTS measures w on {source}, which has no checkpoint; run --accelerators first"
        )
    model, _, cfg = load_model(source)
    data = prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len)
    objective = make_objective(cfg.diffusion, data.tokenizer.mask_id)
    w = estimate_ppots_weights(
        model, data.train, objective, loops=1, bins=bins, batch_size=32, max_batches=8, seed=seed
    )
    print(f"P-POTS w for seed {seed} (from {source.name}): " + " ".join(f"{x:.3f}" for x in w))
    return [
        "diffusion.t_sampler=ppots",
        "diffusion.t_sampler_params={w: [" + ", ".join(f"{x:.6g}" for x in w) + "]}",
    ]


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def launch(name: str, overrides: list[str], out: Path, eval_every: int) -> subprocess.Popen:
    run = out / name
    cmd = [sys.executable, "-m", "loopmdm.cli", "train", "--out", str(run), "--no-progress"]
    if (run / "checkpoints").is_dir():
        cmd += ["--resume", str(run)]
    else:
        sets = (
            SWEEP_BASE
            + ["train.threads=1", f"train.eval_every={eval_every}", "train.eval_batches=2"]
            + overrides
        )
        cmd += ["--preset", "tiny"] + [a for o in sets for a in ("--set", o)]
    log = open(out / f"{name}.log", "a")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def unigram_plateau(run: Path) -> float:
    """H = cross-entropy of the validation tokens under the training unigram distribution (add-one smoothed),
    on the packed arrays of the run's data (a cache hit: the run built them)."""
    from loopmdm.config import RunConfig
    from loopmdm.data import prepare_data

    cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    data = prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len)
    V = data.tokenizer.vocab_size
    counts = np.bincount(data.train.ravel(), minlength=V).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[data.val.ravel()].mean())


def summarise(name: str, run: Path, margin: float) -> dict:
    recs = [r for r in read_metrics(run / "metrics.jsonl") if "val_nelbo" in r]
    plateau = unigram_plateau(run) if (run / "config.json").is_file() else None
    left = next(
        (r["step"] for r in recs if plateau is not None and r["val_nelbo"] <= plateau - margin),
        None,
    )
    tok_s = [r["tokens_per_s"] for r in read_metrics(run / "metrics.jsonl") if "tokens_per_s" in r]
    stderr = [r["val_stderr"] for r in recs if "val_stderr" in r]
    return {
        "name": name,
        "overrides": {**VARIANTS, **FULL}.get(name, []),
        "plateau_nelbo": plateau,
        "left_plateau_at": left,
        "val_nelbo": {r["step"]: r["val_nelbo"] for r in recs},
        "last_step": recs[-1]["step"] if recs else 0,
        "median_val_stderr": float(np.median(stderr)) if stderr else None,
        "median_tokens_per_s": float(np.median(tok_s)) if tok_s else None,
    }


def reach_uniform(rows: list[dict]) -> None:
    """Round 5: add ``reaches_uniform_at`` to every ``acc_*_s<seed>`` row (the first validation step at or below
    the final NELBO of ``acc_uniform_s<seed>``) and print them."""
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        if not r["name"].startswith("acc_") or not r["val_nelbo"]:
            continue
        ref = by_name.get("acc_uniform_" + r["name"].rsplit("_", 1)[1])
        if ref is None or not ref["val_nelbo"]:
            continue
        target = ref["val_nelbo"][ref["last_step"]]
        r["reaches_uniform_at"] = next(
            (s for s, v in sorted(r["val_nelbo"].items()) if v <= target), None
        )
        print(
            f"{r['name']:<18} reaches uniform's final {target:.3f} at step {r['reaches_uniform_at']}"
        )


def run_all(
    runs: dict[str, list[str]], out: Path, stop_at: int | None, parallel: int, eval_every: int
):
    queue, active = list(runs), {}
    while queue or active:
        while queue and len(active) < parallel:
            name = queue.pop(0)
            active[name] = launch(name, runs[name], out, eval_every)
        time.sleep(5)
        for name, proc in list(active.items()):
            steps = [r.get("step", 0) for r in read_metrics(out / name / "metrics.jsonl")]
            if stop_at is not None and steps and max(steps) >= stop_at and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the trainer saves this step and exits
            if proc.poll() is not None:
                del active[name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/recipe"))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--stop-at", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--margin", type=float, default=0.25)
    ap.add_argument(
        "--full",
        nargs="*",
        default=None,
        choices=list(FULL),
        help="train these FULL runs to the end",
    )
    ap.add_argument(
        "--accelerators",
        action="store_true",
        help="train the round-5 runs (time samplers, complementary masks, PUMA; 2 seeds) to the end",
    )
    ap.add_argument(
        "--ppots",
        action="store_true",
        help="train acc_ppots_s0 / _s1 (P-POTS, w measured on the finished acc_uniform run of each seed)",
    )
    ap.add_argument(
        "--report", action="store_true", help="summarise the runs in OUT, train nothing"
    )
    args = ap.parse_args()
    unknown = [n for n in args.variants if n not in VARIANTS]
    if unknown:
        sys.exit(
            f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.accelerators:
        args.full = [n for n in FULL if n.startswith("acc_")]
    if args.ppots:
        for seed, name in enumerate(PPOTS_RUNS):
            resumed = (args.out / name / "checkpoints").is_dir()  # its config is saved
            w = [] if resumed else ppots_overrides(args.out, seed)
            FULL[name] = TINY_PLAIN + w + [f"train.seed={seed}"] + ACC_EVAL
        args.full = list(PPOTS_RUNS)
    if args.full:
        run_all({n: FULL[n] for n in args.full}, args.out, None, args.parallel, 100)
    elif not args.report:
        todo = {
            n: VARIANTS[n] for n in args.variants if not (args.out / n / "checkpoints").is_dir()
        }
        run_all(todo, args.out, args.stop_at, args.parallel, args.eval_every)
    names = list(args.variants) + list(FULL) + [n for n in PPOTS_RUNS if n not in FULL]
    rows = [
        summarise(n, args.out / n, args.margin)
        for n in names
        if (args.out / n / "metrics.jsonl").is_file()
    ]
    cols = [
        s
        for s in (40, 50, 80, 100, 120, 150, 200, 400, 800, 1600)
        if any(s in r["val_nelbo"] for r in rows)
    ]
    print(
        f"{'variant':<18} {'plateau':>7} {'left at':>7} "
        + " ".join(f"{s:>6}" for s in cols)
        + f" {'last':>11} {'tok/s':>6}"
    )
    for r in rows:
        v = r["val_nelbo"]
        cells = " ".join(f"{v[s]:6.3f}" if s in v else f"{'-':>6}" for s in cols)
        cells += f" {v[r['last_step']]:6.3f}@{r['last_step']:<4}" if v else f" {'-':>11}"
        left = "-" if r["left_plateau_at"] is None else str(r["left_plateau_at"])
        plat = "-" if r["plateau_nelbo"] is None else f"{r['plateau_nelbo']:.3f}"
        tps = "-" if r["median_tokens_per_s"] is None else f"{r['median_tokens_per_s']:.0f}"
        print(f"{r['name']:<18} {plat:>7} {left:>7} {cells} {tps:>6}")
    reach_uniform(rows)
    result = {
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
        "margin": args.margin,
        "stop_at": args.stop_at,
    }
    prev = args.out / "recipe_sweep.json"
    if prev.is_file():
        result["wall_s"] += json.loads(prev.read_text()).get("wall_s", 0.0)
    prev.write_text(json.dumps(result, indent=1))
    if any(math.isnan(x) for r in rows for x in r["val_nelbo"].values()):
        print("warning: a run logged a NaN validation NELBO", file=sys.stderr)


if __name__ == "__main__":
    main()
