"""``loopmdm experiment compute-matched | loop-scaling | ablation | sudoku | attention | loopify``: the paper's
experiments and the studies around them, one command each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError
from ..experiments.ablation import run_ablation
from ..experiments.attention import load_attention_config, run_attention
from ..experiments.compute_matched import plan_compute_matched, run_compute_matched
from ..experiments.compute_matched_config import load_compute_matched_config
from ..experiments.loop_scaling import budget_plans, run_loop_scaling
from ..experiments.loop_scaling_config import load_loop_scaling_config
from ..experiments.loopify import plan_summary, run_loopify_experiment
from ..experiments.loopify_config import load_loopify_config
from ..experiments.reasoning import run_reasoning
from ..experiments.reasoning_config import load_reasoning_config
from ..experiments.sudoku import load_sudoku_config, run_sudoku
from ..model.fields import parse_int_list
from ..outputs import check_output
from .app import app, emit_json, info
from .options import parse_loops, parse_names

experiment_app = typer.Typer(
    help="Reproduce the paper's experiments (laptop or paper scale).", no_args_is_help=True
)
app.add_typer(experiment_app, name="experiment")

CONFIG_HELP = "laptop (2 CPU cores, < 45 min), paper (the GPU-scale run) or a YAML file (`base: laptop` + overrides)."


def _seeds(values: List[str]) -> Optional[list[int]]:
    return parse_int_list(values, "--seeds", 0, "0,1") if values else None


def _floats(values: List[str], name: str) -> Optional[list[float]]:
    if not values:
        return None
    out = []
    for v in values:
        for part in str(v).split(","):
            if part.strip():
                try:
                    out.append(float(part))
                except ValueError:
                    raise ConfigError(
                        f"{name} {part!r} is not a number; pass e.g. {name} 0.1,0.5,0.9"
                    ) from None
    return out


@experiment_app.command("compute-matched")
def compute_matched(
    out: Path = typer.Option(
        ..., "--out", help="Output folder: run folders, results.json, PNGs, summary.md."
    ),
    config: str = typer.Option("laptop", "--config", help=CONFIG_HELP),
    seeds: List[str] = typer.Option(
        [], "--seeds", metavar="0,1,2", help="Seeds, e.g. 0,1 (default: the config's)."
    ),
    plan: bool = typer.Option(
        False, "--plan", help="Print the matched plan (depth of (c), steps, FLOPs) and exit."
    ),
    progress: bool = typer.Option(
        False, "--progress/--no-progress", help="Progress bars while training."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON object on stdout."
    ),
) -> None:
    """(a) same-size MDM vs (b) LoopMDM vs (c) deeper MDM at equal training FLOPs; the FLOPs ratio."""
    cfg = load_compute_matched_config(config)
    if plan:
        summary = plan_compute_matched(cfg).summary()
        emit_json(summary) if json_out else info(json.dumps(summary, indent=2))
        return
    # before any work: never into a data folder, a run or someone's files
    check_output(out, "experiment", experiment="compute-matched")
    res = run_compute_matched(cfg, out, _seeds(seeds), progress=progress, log=info)
    emit_json(res["summary"]) if json_out else info((out / "summary.md").read_text())


@experiment_app.command("loop-scaling")
def loop_scaling(
    out: Path = typer.Option(
        ..., "--out", help="Output folder: run folders, results.json, loop_gain.png, summary.md."
    ),
    config: str = typer.Option(
        "laptop", "--config", help="laptop or a YAML file (`base: laptop` + overrides)."
    ),
    shard: Optional[str] = typer.Option(
        None,
        "--shard",
        help="K/N: train every N-th run from K (one process per "
        "core); then run once without it for the report.",
    ),
    plan: bool = typer.Option(
        False, "--plan", help="Print the steps of every run at every budget and exit."
    ),
    stop_after: Optional[float] = typer.Option(
        None,
        "--stop-after",
        metavar="MINUTES",
        help="Start no run expected to end later than this many minutes into the call (estimated from the "
        "runs this call trained; the first starts while time is left); run again to continue.",
    ),
    progress: bool = typer.Option(
        False, "--progress/--no-progress", help="Progress bars while training."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the rows and the trend as one JSON object."
    ),
) -> None:
    """The compute-matched trio at several training budgets: the loop gain against the budget and its trend."""
    cfg = load_loop_scaling_config(config)
    if plan:
        summary = [p.summary() for p in budget_plans(cfg)]
        emit_json(summary) if json_out else info(json.dumps(summary, indent=2))
        return
    check_output(out, "experiment", experiment="loop-scaling")
    res = run_loop_scaling(cfg, out, shard, progress=progress, log=info, stop_after_min=stop_after)
    if res is not None:
        emit_json({"rows": res["rows"], "trend": res["trend"]}) if json_out else info(
            (out / "summary.md").read_text()
        )


@experiment_app.command("ablation")
def ablation(
    out: Path = typer.Option(
        ..., "--out", help="Output folder: run folders, ablation.json, ablation.png, ablation.md."
    ),
    config: str = typer.Option("laptop", "--config", help=CONFIG_HELP),
    seeds: List[str] = typer.Option(
        [], "--seeds", metavar="0,1,2", help="Seeds, e.g. 0 (default: the config's)."
    ),
    progress: bool = typer.Option(
        False, "--progress/--no-progress", help="Progress bars while training."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the rows as one JSON object on stdout."
    ),
) -> None:
    """Which layers loop (early, early-middle, middle, late, all) and how many (n_m), at equal FLOPs."""
    cfg = load_compute_matched_config(config)
    check_output(out, "experiment", experiment="ablation")
    res = run_ablation(cfg, out, _seeds(seeds), progress=progress, log=info)
    emit_json(res["rows"]) if json_out else info((out / "ablation.md").read_text())


@experiment_app.command("sudoku")
def sudoku(
    out: Path = typer.Option(
        ..., "--out", help="Output folder: run folders, results.json, PNGs, summary.md."
    ),
    config: str = typer.Option(
        "laptop",
        "--config",
        help="laptop (2 CPU cores, about 60 min), gpu (one H100, "
        "about 3 min) or a YAML file (`base: laptop` + overrides).",
    ),
    seeds: List[str] = typer.Option(
        [], "--seeds", metavar="0,1,2", help="Seeds, e.g. 0,1 (default: the config's)."
    ),
    models: Optional[str] = typer.Option(
        None,
        "--models",
        help="Train and score only these, e.g. mdm,deeper (one "
        "process per core); then run once without it.",
    ),
    progress: bool = typer.Option(
        False, "--progress/--no-progress", help="Progress bars while training."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the accuracy table as one JSON object on stdout."
    ),
) -> None:
    """MDM, LoopMDM and the deeper MDM on Sudoku at equal training FLOPs: board accuracy over T x S x order."""
    cfg = load_sudoku_config(config)
    subset = parse_names(models, "--models", "mdm,loopmdm")
    check_output(out, "experiment", experiment="sudoku")
    res = run_sudoku(cfg, out, _seeds(seeds), progress=progress, log=info, models=subset)
    if res is not None:
        emit_json(res["summary"]) if json_out else info((out / "summary.md").read_text())


@experiment_app.command("reasoning")
def reasoning(
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder: task data, calibration, run folders, results.json, PNGs, summary.md.",
    ),
    config: str = typer.Option(
        "laptop",
        "--config",
        help="laptop (2 CPU cores, about 6 hours, resumable), laptop-bell (its amendment 3: the bell "
        "recipe, 5 seeds) or a YAML file (`base: laptop` + overrides).",
    ),
    seeds: List[str] = typer.Option(
        [], "--seeds", metavar="0,1,2", help="Seeds, e.g. 0,1,2 (default: the config's)."
    ),
    tasks: Optional[str] = typer.Option(
        None,
        "--tasks",
        help="Only these tasks, e.g. vars-hops-trace (one process per core); the report covers only "
        "them, so run once without it for the whole study.",
    ),
    models: Optional[str] = typer.Option(
        None,
        "--models",
        help="Only these models (mdm, loopmdm, deeper, loopmdm-ds, mdm-long, loopmdm-ds-matched); then run "
        "once without it.",
    ),
    progress: bool = typer.Option(
        False, "--progress/--no-progress", help="Progress bars while training."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the per-task summaries as one JSON object."
    ),
    interim: bool = typer.Option(
        False,
        "--interim",
        help="Train nothing: report the seeds whose every model is finished (interim_summary.md) while "
        "other processes are still training.",
    ),
) -> None:
    """Pre-registered looped-vs-plain study on depth-bound tasks: plain-MDM calibration on validation data first,
    then MDM / LoopMDM / deeper MDM / LoopMDM with deep supervision at equal FLOPs, exact match over T x S."""
    cfg = load_reasoning_config(config)
    # its task folders, results, figures
    check_output(out, "experiment", experiment="reasoning", dirs=[t.name for t in cfg.tasks])
    res = run_reasoning(
        cfg,
        out,
        _seeds(seeds),
        tasks=parse_names(tasks, "--tasks", "prefix-sum-interleaved"),
        models=parse_names(models, "--models", "mdm,loopmdm"),
        progress=progress,
        log=info,
        interim=interim,
    )
    if res is not None:
        emit_json({k: v.get("summary") for k, v in res["tasks"].items()}) if json_out else info(
            (out / ("interim_summary.md" if interim else "summary.md")).read_text()
        )


@experiment_app.command("attention")
def attention(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="Run / checkpoint folder, or a Sudoku model folder."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder: attention.json, heatmaps, line plots."
    ),
    config: str = typer.Option("laptop", "--config", help=CONFIG_HELP),
    t: List[str] = typer.Option(
        [],
        "--t",
        metavar="0.1,0.5,0.9",
        help="Masking levels, e.g. 0.1,0.5,0.9 (default: the config's).",
    ),
    loops: List[str] = typer.Option(
        [],
        "--loops",
        metavar="1,2,4",
        help="Loop counts S, e.g. 1,2,4,8 (default: 1,2,4..2*S_max).",
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Validation rows / test boards analysed."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the sweep summary as one JSON object on stdout."
    ),
) -> None:
    """Share of attention that masked positions pay to masked vs unmasked keys, per layer and loop."""
    cfg = load_attention_config(config)
    if t:
        cfg.ts = _floats(t, "--t")
    if loops:
        cfg.loops = parse_loops(loops)
    if batch_size is not None:
        cfg.batch_size = batch_size
    check_output(out, "experiment", experiment="attention")
    res = run_attention(checkpoint, cfg.validate(), out, log=info)
    sw = res["sweep"]
    summary = {k: sw[k] for k in ("ts", "loops", "mid_last", "mean_all", "masked_key_fraction")}
    emit_json(summary) if json_out else info((out / "summary.md").read_text())


@experiment_app.command("loopify")
def loopify_experiment(
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output folder: sources, loopified models, fine-tuned runs, "
        "results.json, PNGs, summary.md.",
    ),
    config: str = typer.Option(
        "laptop",
        "--config",
        help="laptop (2 CPU cores, ~25 min per seed) or a YAML file (`base: laptop` + overrides).",
    ),
    seeds: List[str] = typer.Option(
        [], "--seeds", metavar="0,1,2", help="Seeds, e.g. 0,1 (default: the config's)."
    ),
    plan: bool = typer.Option(
        False, "--plan", help="Print the steps and FLOPs of every run and exit."
    ),
    progress: bool = typer.Option(
        False, "--progress/--no-progress", help="Progress bars while training."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON object on stdout."
    ),
) -> None:
    """Loopify a trained MDM and a BERT, fine-tune with random S vs as they are, at equal extra training FLOPs."""
    cfg = load_loopify_config(config)
    if plan:
        summary = plan_summary(cfg)
        emit_json(summary) if json_out else info(json.dumps(summary, indent=2))
        return
    check_output(out, "experiment", experiment="loopify")
    res = run_loopify_experiment(cfg, out, _seeds(seeds), progress=progress, log=info)
    emit_json(res["summary"]) if json_out else info((out / "summary.md").read_text())
