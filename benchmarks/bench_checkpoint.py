"""Cost of safe checkpoints: atomic save (serialise, SHA-256, fsync, rename), verification and loading.

    python benchmarks/bench_checkpoint.py                      # tiny preset
    python benchmarks/bench_checkpoint.py --preset paper       # the 170M-parameter paper model (needs ~4 GB RAM)

Prints a table and writes benchmarks/results/checkpoint_<preset>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from loopmdm.checkpoint import load_model, resolve_checkpoint, save_checkpoint, verify_checkpoint
from loopmdm.config import preset
from loopmdm.data.tokenizer import train_bpe
from loopmdm.model import LoopMDM


def timed(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = preset(args.preset)
    tok = train_bpe(["def f(x):\n    return x + 1\n" * 200], 512)
    cfg.model.vocab_size = max(cfg.model.vocab_size, tok.vocab_size)
    model = LoopMDM(cfg.model)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long), torch.rand(1), loops=1).float().sum().backward()
    opt.step()  # optimizer moments exist, as in a real checkpoint
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as d:
        step = iter(range(1, 10**6))
        t_save = timed(
            lambda: save_checkpoint(d, next(step), model, cfg, tok, {"step": 0}, opt, keep_last=2),
            args.repeats,
        )
        folder = resolve_checkpoint(d)
        size = sum(f.stat().st_size for f in folder.iterdir())
        t_verify = timed(lambda: verify_checkpoint(folder), args.repeats)
        t_load = timed(lambda: load_model(d), args.repeats)
    row = {
        "preset": args.preset,
        "params_m": params / 1e6,
        "checkpoint_mb": size / 1e6,
        "save_s": t_save,
        "verify_s": t_verify,
        "load_model_s": t_load,
        "save_mb_per_s": size / 1e6 / t_save,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, python {platform.python_version()}",
    }
    print(
        f"{'preset':<8} {'params':>8} {'ckpt MB':>8} {'save s':>7} {'MB/s':>6} {'verify s':>9} {'load s':>7}"
    )
    print(
        f"{args.preset:<8} {params / 1e6:>7.2f}M {size / 1e6:>8.1f} {t_save:>7.3f} {row['save_mb_per_s']:>6.0f} "
        f"{t_verify:>9.3f} {t_load:>7.3f}"
    )
    out = args.out or Path(__file__).parent / "results" / f"checkpoint_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
