"""``loopmdm eval``: likelihood bounds, generative perplexity and Sudoku accuracy at one or more loop counts S.

    --metric nelbo      validation NELBO / perplexity bound / bits per token and per byte (the checkpoint's data)
    --metric zero-shot  the same bound on another corpus (--data FILE|FOLDER|X.jsonl|hf:NAME)
    --metric gen-ppl    generative perplexity under --evaluator (loopmdm AR run, GPT-2 name or folder) of samples
                        generated at each S, or of the texts in --samples FILE; plus unigram entropy
    --metric sudoku     board accuracy over --orders x --steps T (0 = one cell per step) x --loops S on test
                        puzzles (--data FILE, or the built-in test split)
    --metric exact-match  exact-match accuracy of the answers of --data FILE.jsonl (prompt / answer or infill
                        rows) over --orders x --steps x --loops, per --group-by level, with baselines

A list of S (``--loops 1,2,4,8``) runs a sweep and prints a table; ``--json`` prints one JSON object;
``--plot out.png`` draws metric vs S and metric vs compute. The runners live in ``eval_metrics``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import ConfigError
from ..runtime import set_threads
from ..viz.reasoning import plot_exact_match
from ..viz.sweeps import plot_sweeps
from .app import app, emit_json, info
from .eval_metrics import METRICS, EvalArgs, format_table
from .options import check_sampling_precision, parse_loops


@app.command("eval")
def eval_(
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", help="Run folder or checkpoint folder."
    ),
    metric: str = typer.Option(
        "nelbo", "--metric", help="nelbo | zero-shot | gen-ppl | sudoku | exact-match."
    ),
    loops: List[str] = typer.Option(
        [],
        "--loops",
        metavar="1,2,4",
        help="Loop count S; repeat or comma-separate for a sweep "
        "(default: the checkpoint's training S_max).",
    ),
    batches: int = typer.Option(
        16, "--batches", help="Evaluation batches per S (NELBO metrics).", min=1
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1, help="Rows per batch (default: training's, at most 32)."
    ),
    repeats: int = typer.Option(
        1, "--repeats", help="Minimum Monte-Carlo passes over the rows.", min=1
    ),
    rel_stderr: float = typer.Option(
        0.0025,
        "--rel-stderr",
        help="Add passes until stderr/NELBO <= this (two seeds then agree within "
        "~1%); 0 = exactly --repeats passes.",
        min=0.0,
    ),
    max_repeats: int = typer.Option(
        32, "--max-repeats", help="Cap on passes for --rel-stderr.", min=1
    ),
    seed: int = typer.Option(0, "--seed"),
    ema: Optional[bool] = typer.Option(
        None,
        "--ema/--no-ema",
        help="EMA or raw weights (default: EMA when the checkpoint has them).",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or bf16 (autocast)."),
    data: Optional[str] = typer.Option(
        None,
        "--data",
        help="zero-shot corpus (file, folder, .jsonl, hf:NAME), "
        "sudoku test puzzles (CSV, JSONL, hf:NAME) or exact-match rows (.jsonl, hf:NAME).",
    ),
    text_field: str = typer.Option(
        "text", "--text-field", help="JSON field holding the text (.jsonl inputs)."
    ),
    max_documents: Optional[int] = typer.Option(
        None, "--max-documents", help="zero-shot: first N documents.", min=1
    ),
    evaluator: Optional[str] = typer.Option(
        None,
        "--evaluator",
        help="gen-ppl scorer: loopmdm AR run, GPT-2 name or folder "
        "(prefix loopmdm: / hf: to force).",
    ),
    samples: Optional[Path] = typer.Option(
        None, "--samples", help="gen-ppl of these texts (.jsonl/.json/.txt) instead of generating."
    ),
    samples_out: Optional[Path] = typer.Option(
        None, "--samples-out", help="Write generated samples (JSONL)."
    ),
    num_samples: int = typer.Option(16, "--num-samples", help="gen-ppl: samples per S.", min=1),
    steps: List[str] = typer.Option(
        [],
        "--steps",
        metavar="64|0,8,16",
        help="Denoising steps T: gen-ppl one value (default 64); sudoku "
        "a list, 0 = one cell per step (default 0).",
    ),
    length: Optional[int] = typer.Option(
        None, "--length", help="gen-ppl: tokens per sample (default window)."
    ),
    temperature: float = typer.Option(
        1.0, "--temperature", help="gen-ppl: sampling temperature.", min=0.0
    ),
    sampler: str = typer.Option(
        "ancestral", "--sampler", help="gen-ppl: sampler (loopmdm.sampling.SAMPLERS)."
    ),
    orders: str = typer.Option(
        "margin",
        "--orders",
        help="sudoku / exact-match: unmasking orders, e.g. margin,probability,random.",
    ),
    max_boards: Optional[int] = typer.Option(
        None,
        "--max-boards",
        "--max-rows",
        help="sudoku / exact-match: the first N boards or rows.",
        min=1,
    ),
    group_by: Optional[str] = typer.Option(
        None,
        "--group-by",
        help="exact-match: an integer field of the rows (e.g. depth) to report per level.",
    ),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        help="CPU threads for torch (1 is fastest for tiny models on a busy machine).",
        min=1,
    ),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the sweep into this PNG."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Likelihood bounds (nelbo, zero-shot), generative perplexity (gen-ppl), Sudoku or exact-match accuracy."""
    s_list = parse_loops(loops) if loops else None
    runner = METRICS.get(metric)
    check_sampling_precision(precision)
    if plot is not None and plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot {str(plot)!r} must end in .png")
    set_threads(threads)
    args = EvalArgs(
        checkpoint,
        s_list,
        batches,
        batch_size,
        repeats,
        rel_stderr or None,
        max_repeats,
        seed,
        ema,
        device,
        precision,
        data,
        text_field,
        max_documents,
        evaluator,
        samples,
        samples_out,
        num_samples,
        steps,
        length,
        temperature,
        sampler,
        orders,
        max_boards,
        group_by,
    )
    payload = {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "metric": metric,
        **runner(args),
    }
    note = precision_note(payload, batches)
    if note:
        info(note)
    if plot is not None:
        if metric == "exact-match":
            plot_exact_match(payload["results"], plot)
        else:
            plot_sweeps([payload], plot)
        info(f"plot written to {plot}")
    if json_out:
        emit_json(payload)
        return
    typer.echo(format_table(payload))


def precision_note(
    payload: dict, batches: int, max_rel: float = 0.01, min_batches: int = 8
) -> Optional[str]:
    """A one-line note when a NELBO estimate is noisy: its relative standard error is above ``max_rel`` at some S,
    or fewer than ``min_batches`` batches were scored (a NELBO from 2 batches can sit far from the default's)."""
    if payload.get("primary") != "nelbo":
        return None
    rels = [
        r["stderr"] / abs(r["nelbo"])
        for r in payload.get("results") or []
        if isinstance(r, dict) and r.get("stderr") is not None and r.get("nelbo")
    ]
    worst = max(rels, default=0.0)
    if worst <= max_rel and batches >= min_batches:
        return None
    why = (
        f"relative standard error up to {worst:.1%}"
        if worst > max_rel
        else f"only --batches {batches} (relative standard error {worst:.1%})"
    )
    return (
        f"note: this NELBO is a noisy estimate ({why}); use more --batches (default 16) or a smaller "
        "--rel-stderr for a number that matches other runs"
    )
