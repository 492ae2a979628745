"""``loopmdm sample``: generate from a checkpoint at one or more loop counts S."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError
from .app import app, emit_json, info
from .options import parse_loops


@app.command()
def sample(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder or checkpoint folder."),
    loops: List[str] = typer.Option(["1"], "--loops", help="Loop count S (repeat or comma-separate for several)."),
    steps: int = typer.Option(64, "--steps", help="Denoising steps T."),
    num_samples: int = typer.Option(2, "--num-samples", help="Samples per S."),
    length: Optional[int] = typer.Option(None, "--length", help="Tokens to generate (default: the model window)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prefix kept fixed while the rest is generated."),
    temperature: float = typer.Option(1.0, "--temperature"),
    seed: int = typer.Option(0, "--seed"),
    ema: bool = typer.Option(False, "--ema", help="Use EMA weights when present."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """MDLM ancestral sampling from an all-mask sequence."""
    import torch

    from ..checkpoint import load_model
    from ..sampling import ancestral_sample
    from ..schedules import get_schedule

    if steps < 1:
        raise ConfigError(f"--steps {steps} must be >= 1")
    if num_samples < 1:
        raise ConfigError(f"--num-samples {num_samples} must be >= 1")
    if temperature < 0:
        raise ConfigError(f"--temperature {temperature} must be >= 0")
    s_list = parse_loops(loops)
    model, tok, cfg = load_model(checkpoint, ema=ema)
    L = length or cfg.model.max_seq_len
    if not 1 <= L <= cfg.model.max_seq_len:
        raise ConfigError(f"--length {L} must be in 1..{cfg.model.max_seq_len} (the model window)")
    prefix = None
    if prompt:
        ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(prompt)
        if len(ids) >= L:
            raise ConfigError(f"--prompt is {len(ids)} tokens, not shorter than --length {L}; shorten it")
        prefix = torch.tensor(ids)
    results = []
    for s in s_list:
        gen = torch.Generator().manual_seed(seed)
        x = ancestral_sample(model, tok.mask_id, num_samples, L, steps, s, get_schedule(cfg.diffusion.schedule),
                             gen, temperature=temperature, prefix=prefix)
        results.append({"loops": s, "samples": [tok.decode(row.tolist()) for row in x]})
    if json_out:
        emit_json({"checkpoint": str(checkpoint), "steps": steps, "results": results})
        return
    for r in results:
        for i, text in enumerate(r["samples"]):
            typer.echo(f"===== S={r['loops']} sample {i} (T={steps}) =====")
            typer.echo(text)
