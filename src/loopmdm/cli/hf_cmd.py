"""``loopmdm export`` / ``loopmdm import``: library checkpoints <-> Hugging Face transformers folders.

loopmdm export --checkpoint RUN_DIR --out HF_DIR [--ema]   # then AutoModel.from_pretrained(HF_DIR, trust_remote_code=True)
loopmdm import --hf HF_DIR --out RUN_DIR                   # back to a run folder for sample / eval / --init
"""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, emit_json, info


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="Run folder or checkpoint folder to export."
    ),
    out: Path = typer.Option(..., "--out", help="New folder for the transformers checkpoint."),
    ema: bool = typer.Option(
        False, "--ema", help="Export the EMA weights when the checkpoint has them."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout."),
) -> None:
    """Write a checkpoint as a transformers folder (safetensors, config with auto_map, tokenizer, model code)."""
    from ..hf.export import export_hf  # imports transformers: only when the command runs

    folder = export_hf(checkpoint, out, ema=ema)
    files = sorted(p.name for p in folder.iterdir())
    if json_out:
        emit_json({"out": str(folder), "files": files})
    else:
        info(
            f"exported to {folder}: {', '.join(files)}\n"
            f"load with AutoModelForMaskedLM.from_pretrained({str(folder)!r}, trust_remote_code=True)"
        )


@app.command("import")
def import_cmd(
    hf: Path = typer.Option(
        ..., "--hf", help="Folder written by `loopmdm export` (or save_pretrained)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Run folder to create (checkpoint under OUT/checkpoints)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout."),
) -> None:
    """Turn a transformers LoopMDM folder back into a library run folder."""
    from ..hf.export import import_hf

    run = import_hf(hf, out)
    if json_out:
        emit_json({"run_dir": str(run)})
    else:
        info(f"imported into {run}; use it with --checkpoint {run}")
