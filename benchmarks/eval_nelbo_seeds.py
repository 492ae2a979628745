"""Seed-to-seed agreement and cost of the validation NELBO estimate (loopmdm.eval.nelbo.evaluate_nelbo).

    python benchmarks/eval_nelbo_seeds.py --checkpoint RUN_DIR [--loops 2] [--seeds 0,1,2] [--rel-stderr 0.0025]
    python benchmarks/eval_nelbo_seeds.py            # trains the test suite's tiny model (30 steps) first

For each seed: NELBO, its standard error, Monte-Carlo passes used and wall time, first with a single pass, then
with passes added until stderr / NELBO <= --rel-stderr. Prints a table and the largest relative difference
between seeds; writes everything to --out (JSON).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def tiny_fixture_run(root: Path) -> Path:
    """The test suite's `tiny_run` (tests/conftest.py): 40 Python-like files, a ~50k-parameter model, 30 steps."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_cfg, python_like_text
    from loopmdm.train import train

    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        (corpus / f"mod_{i:02d}.py").write_text(python_like_text(i))
    cfg = make_tiny_cfg(corpus, root / "cache")
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.save_every = 30, 30, 30
    train(cfg, root / "run", progress=False, log=lambda s: None)
    return root / "run"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--loops", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rel-stderr", type=float, default=0.0025)
    ap.add_argument("--max-repeats", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-batches", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_nelbo_seeds.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from loopmdm.checkpoint import load_model
    from loopmdm.data import prepare_data
    from loopmdm.diffusion import make_objective
    from loopmdm.diffusion.schedules import get_schedule
    from loopmdm.eval.nelbo import evaluate_nelbo

    tmp = None
    ckpt = a.checkpoint
    if ckpt is None:
        tmp = tempfile.TemporaryDirectory()
        ckpt = tiny_fixture_run(Path(tmp.name))
    model, tok, cfg = load_model(ckpt)
    data = prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len)
    obj = make_objective(
        cfg.diffusion.objective,
        get_schedule(cfg.diffusion.schedule),
        tok.mask_id,
        True,
        cfg.diffusion.t_eps,
    )
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    for mode, kw in (
        ("1 pass", {}),
        (
            f"rel-stderr {a.rel_stderr}",
            {"target_rel_stderr": a.rel_stderr, "max_repeats": a.max_repeats},
        ),
    ):
        for seed in seeds:
            t0 = time.perf_counter()
            r = evaluate_nelbo(
                model,
                data.val,
                obj,
                a.loops,
                batch_size=a.batch_size,
                max_batches=a.max_batches,
                seed=seed,
                details=True,
                **kw,
            )
            rows.append({"mode": mode, "seed": seed, "seconds": time.perf_counter() - t0, **r})
    print(
        f"checkpoint {ckpt}  S={a.loops}  validation rows {len(data.val)} x {data.val.shape[1]}  "
        f"threads {a.threads}"
    )
    print(
        f"{'mode':>20} {'seed':>4} {'NELBO':>8} {'stderr':>8} {'kind':>8} {'passes':>6} {'tokens':>8} {'s':>7}"
    )
    for r in rows:
        print(
            f"{r['mode']:>20} {r['seed']:>4} {r['nelbo']:>8.4f} {r['stderr']:>8.4f} {r['stderr_kind']:>8} "
            f"{r['repeats']:>6} {r['tokens'] * r['repeats']:>8} {r['seconds']:>7.2f}"
        )
    summary = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        vals = [r["nelbo"] for r in rows if r["mode"] == mode]
        worst = (
            max(abs(x - y) / min(x, y) for x, y in itertools.combinations(vals, 2))
            if len(vals) > 1
            else 0.0
        )
        summary[mode] = worst
        print(f"largest relative difference between seeds ({mode}): {100 * worst:.2f}%")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps(
            {"checkpoint": str(ckpt), "loops": a.loops, "rows": rows, "max_rel_diff": summary},
            indent=2,
        )
    )
    print(f"wrote {a.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
