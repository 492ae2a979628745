"""``loopmdm loopify``: a trained MDM or masked LM -> a run folder whose layers A..B-1 are the looped mid block.

loopmdm loopify --from runs/tiny-baseline --loop-layers 1:3 --s-max 4 --out runs/tiny-loopified
loopmdm loopify --from answerdotai/ModernBERT-base --loop-layers 4:8 --out runs/modernbert-loop
loopmdm train --init runs/tiny-loopified --set train.lr=3e-4 --max-steps 300 --out runs/tiny-finetuned
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, emit_json, info


@app.command("loopify")
def loopify_cmd(
    source: str = typer.Option(
        ...,
        "--from",
        help="A library run / checkpoint folder, a transformers folder or a "
        "Hugging Face Hub id (bert, roberta, modernbert, Dream).",
    ),
    loop_layers: str = typer.Option(
        ...,
        "--loop-layers",
        help="A:B, zero-indexed, B exclusive: layers A..B-1 become "
        "the looped mid block (head = layers before A, tail = "
        "layers from B on).",
    ),
    out: Path = typer.Option(
        ..., "--out", help="New run folder (checkpoint, tokenizer, config, loopify.json)."
    ),
    s_max: Optional[int] = typer.Option(
        None, "--s-max", help="Training S ~ U{1..S_max} (default: the run's own, else 4)."
    ),
    curriculum_steps: int = typer.Option(
        0,
        "--curriculum-steps",
        help="Ramp S_max up from 1 over this many fine-tuning steps (0 = off).",
    ),
    family: Optional[str] = typer.Option(
        None, "--family", help="Force the adapter (default: config.json model_type)."
    ),
    tokenizer: Optional[str] = typer.Option(
        None,
        "--tokenizer",
        help="Use this tokenizer (path or Hub id) instead "
        "of the source's; it must have a mask token.",
    ),
    seq_len: Optional[int] = typer.Option(
        None,
        "--seq-len",
        help="Training window of a transformers source (default: min(its positions, 1024)).",
        min=1,
    ),
    input_injection: bool = typer.Option(
        False, "--input-injection", help="Add input injection (identity at start)."
    ),
    loop_embedding: bool = typer.Option(
        False, "--loop-embedding", help="Add a loop-index embedding (zero at start)."
    ),
    ema: Optional[bool] = typer.Option(
        None,
        "--ema/--no-ema",
        help="A library run's EMA or raw weights (default: EMA when present).",
    ),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Check that S = 1 reproduces the source's logits."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON object on stdout."
    ),
) -> None:
    """Re-apply layers A..B-1 of a trained model S times (exact at S = 1); fine-tune with `train --init OUT`."""
    from ..loopify import loopify

    summary = loopify(
        source,
        loop_layers,
        out,
        s_max,
        family=family,
        tokenizer=tokenizer,
        seq_len=seq_len,
        input_injection=input_injection,
        loop_embedding=loop_embedding,
        curriculum_steps=curriculum_steps,
        ema=ema,
        verify=verify,
        log=info,
    )
    if json_out:
        emit_json({"out": str(out), **summary})
    else:
        info(
            f"wrote {out}; fine-tune it with: loopmdm train --init {out} --out RUN_DIR --set train.lr=... "
            "--max-steps N"
        )
