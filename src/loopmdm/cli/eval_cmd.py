"""``loopmdm eval``: validation NELBO and perplexity bound at one or more loop counts S."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from .app import app, emit_json, info
from .options import parse_loops


@app.command("eval")
def eval_(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder or checkpoint folder."),
    loops: List[str] = typer.Option(["1"], "--loops", help="Loop count S; repeat or comma-separate for a sweep."),
    batches: int = typer.Option(16, "--batches", help="Validation batches per S.", min=1),
    seed: int = typer.Option(0, "--seed"),
    ema: bool = typer.Option(False, "--ema", help="Use EMA weights when present."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Validation NELBO (nats/token), perplexity bound exp(NELBO) and bits/token at each S."""
    from ..checkpoint import load_model
    from ..data import prepare_data
    from ..diffusion import make_objective
    from ..evaluate import evaluate_nelbo
    from ..schedules import get_schedule

    s_list = parse_loops(loops)
    model, tok, cfg = load_model(checkpoint, ema=ema)
    data = prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len, log=info)
    obj = make_objective(cfg.diffusion.objective, get_schedule(cfg.diffusion.schedule), tok.mask_id,
                         cfg.diffusion.antithetic, cfg.diffusion.t_eps)
    rows = [evaluate_nelbo(model, data.val, obj, s, batch_size=cfg.train.batch_size, max_batches=batches,
                           seed=seed) for s in s_list]
    if json_out:
        emit_json({"checkpoint": str(checkpoint), "results": rows})
        return
    info(f"{'S':>4} {'NELBO':>8} {'+-':>6} {'PPL<=':>9} {'bits/tok':>9}")
    for r in rows:
        info(f"{r['loops']:>4} {r['nelbo']:>8.4f} {r['stderr']:>6.3f} {r['ppl']:>9.2f} {r['bits_per_token']:>9.3f}")
