"""``loopmdm train``: preset (or ``--init DIR``'s / ``--resume DIR``'s config) -> YAML -> --set overrides, then
train into --out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from ..checkpoint import load_config_file, resolve_checkpoint
from ..config import PRESETS, load_config
from ..errors import ConfigError
from ..train import SecondSignal, init_run_config, signal_exit_code
from ..train import train as run_train
from .app import app, emit_json, info


@app.command()
def train(
    out: Path = typer.Option(
        ..., "--out", help="Run folder: checkpoints/, metrics.jsonl, config.json."
    ),
    preset: Optional[str] = typer.Option(
        None,
        help=f"Base configuration: {', '.join(PRESETS.names())} (default tiny; with "
        "--resume and no --preset / --config: the checkpoint's).",
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML file overriding the preset."
    ),
    set_: List[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="Override one field, e.g. --set model.d_model=512."
    ),
    max_steps: Optional[int] = typer.Option(
        None, "--max-steps", help="Shortcut for --set train.max_steps=N."
    ),
    objective: Optional[str] = typer.Option(
        None, "--objective", help="mdm (masked diffusion) or ar (causal evaluator)."
    ),
    data: Optional[str] = typer.Option(None, "--data", help="Shortcut for --set data.source=PATH."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue exactly from a run or checkpoint folder."
    ),
    init: Optional[Path] = typer.Option(
        None,
        "--init",
        help="Start a new run from this run / checkpoint's weights "
        "(EMA when present; fine-tuning: new optimizer, LR "
        "schedule and step count; its config is the base).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout."),
) -> None:
    """Train a LoopMDM (or its plain / AR twin) on the built-in corpus or your data."""
    # --set values are YAML; the shortcuts are taken verbatim (a path such as "corpus #v2", "2024" or "on" stays
    # the string typed, never a YAML comment, number or boolean)
    overrides: list = list(set_)
    if max_steps is not None:
        overrides.append({"train": {"max_steps": max_steps}})
    if data is not None:
        overrides.append({"data": {"source": data}})
    if objective is not None:
        overrides.append({"diffusion": {"objective": objective}})
        if objective == "ar":
            overrides += [
                {"model": {"causal": True, "time_conditioning": "none"}},
                # no diffusion time: the preset's time sampler goes back to the (unused) default
                {
                    "diffusion": {
                        "loop_dist": "fixed",
                        "s_fixed": 1,
                        "t_sampler": "uniform",
                        "t_weighting": "exact",
                        "t_sampler_params": {},
                    }
                },
            ]
    if init is not None:
        if resume is not None:
            raise ConfigError(
                "--init and --resume exclude each other: --resume continues a run exactly, --init "
                "starts a new run from a checkpoint's weights"
            )
        if preset is not None:
            raise ConfigError(
                "--init takes the model and the other settings from its checkpoint; drop --preset and "
                "change settings with --config / --set"
            )
        cfg = init_run_config(init, config, overrides)
    else:
        base = None
        if resume is not None and preset is None and config is None:
            # continue the run as it was configured
            base = load_config_file(resolve_checkpoint(resume))
        cfg = load_config(preset or "tiny", config, overrides, base=base)
    try:
        result = run_train(cfg, out, resume=resume, progress=progress, log=info)
    # the message is on stderr already; nothing was saved after the last checkpoint
    except SecondSignal as e:
        raise typer.Exit(e.exit_code) from None
    summary = {
        "run_dir": str(result.run_dir),
        "step": result.step,
        "final_loss": result.final_loss,
        "train_flops": result.flops,
        "val": result.val,
        "stopped_early": result.stopped_early,
        "signal": result.signal,
    }
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        if json_out:
            emit_json(summary)
        elif result.stopped_early:
            info(
                f"stopped by {result.signal or 'a stop request'} at step {result.step} of {cfg.train.max_steps}; "
                f"checkpoint saved in {out}/checkpoints: continue with --resume {out}"
            )
        else:
            val = (
                f", val NELBO {result.val['nelbo']:.3f} (ppl <= {result.val['ppl']:.1f})"
                if result.val
                else ""
            )
            info(
                f"done: step {result.step}, loss {result.final_loss:.3f}{val}; checkpoints in {out}/checkpoints"
            )
    # not finished: a non-zero exit code (130 SIGINT, 143 SIGTERM) stops `train && ...`
    if result.stopped_early:
        raise typer.Exit(signal_exit_code(result.signal))
