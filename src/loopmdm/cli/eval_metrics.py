"""The metrics of ``loopmdm eval``, one runner each in the ``METRICS`` registry, and their result tables.

Every runner takes the parsed options (``EvalArgs``) and returns the JSON payload: ``primary`` (the metric the
table and plot show) and ``results`` (one record per S, or per (order, T, S) for Sudoku). Without ``--loops``
the checkpoint's training S_max is used, and without ``--ema / --no-ema`` the EMA weights when the checkpoint
has them (as training validates); both choices are printed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..checkpoint import load_model, uses_ema
from ..data import prepare_data
from ..data.answers import rows_of, source_files
from ..data.sudoku import GENERATE, generated_splits, read_puzzles
from ..diffusion import get_schedule, make_objective
from ..errors import ConfigError, DataError
from ..eval.exact_match import exact_match_grid, overlap_count
from ..eval.genppl import generative_perplexity, load_evaluator, read_samples
from ..eval.nelbo import nelbo_sweep
from ..eval.sudoku import check_sudoku_model, sudoku_grid
from ..eval.zeroshot import zero_shot
from ..model.fields import parse_int_list
from ..registry import Registry
from ..sampling import generate
from ..tasks import heuristic_for
from .app import info
from .options import parse_names


@dataclass
class EvalArgs:
    """Every option of ``loopmdm eval``, passed to the metric runners (``loops`` / ``ema`` None: the checkpoint's
    training S_max / EMA when present)."""

    checkpoint: Optional[Path]
    loops: Optional[list[int]]
    batches: int
    batch_size: Optional[int]
    repeats: int
    rel_stderr: Optional[float]
    max_repeats: int
    seed: int
    ema: Optional[bool]
    device: str
    precision: str
    data: Optional[str]
    text_field: str
    max_documents: Optional[int]
    evaluator: Optional[str]
    samples: Optional[Path]
    samples_out: Optional[Path]
    num_samples: int
    steps: list[str]
    length: Optional[int]
    temperature: float
    sampler: str = "ancestral"
    orders: str = "margin"
    max_boards: Optional[int] = None
    group_by: Optional[str] = None


METRICS: Registry[Callable[[EvalArgs], dict]] = Registry("eval metric")


def _batch_size(args: EvalArgs, cfg) -> int:
    """--batch-size, else the training batch capped at 32 (the logits of a batch are [B, L, V] floats)."""
    return args.batch_size or min(cfg.train.batch_size, 32)


def _load(args: EvalArgs):
    """(model, tokenizer, config, loops) with the defaults filled in and announced."""
    if args.checkpoint is None:
        raise ConfigError(
            "--checkpoint is required for this metric; pass a run folder or checkpoint folder"
        )
    model, tok, cfg = load_model(args.checkpoint, device=args.device, ema=args.ema)
    loops = args.loops or [cfg.diffusion.max_loops]
    weights = (
        "EMA"
        if uses_ema(args.checkpoint, args.ema)
        else "raw (no EMA in the checkpoint)"
        if args.ema is None
        else "raw"
    )
    info(
        f"evaluating {args.checkpoint}: {weights} weights, S = {','.join(map(str, loops))}"
        + ("" if args.loops else " (the training S_max; pass --loops to choose)")
    )
    return model, tok, cfg, loops


def _single_steps(args: EvalArgs, default: int = 64) -> int:
    steps = parse_int_list(args.steps, "--steps") if args.steps else [default]
    if len(steps) != 1:
        raise ConfigError(f"--steps {','.join(args.steps)}: this metric takes one step count T")
    return steps[0]


@METRICS.register("nelbo")
def run_nelbo(args: EvalArgs) -> dict:
    """Validation NELBO of the checkpoint's own validation split at every S."""
    model, tok, cfg, loops = _load(args)
    data = prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len, log=info)
    if data.tokenizer.tok.get_vocab() != tok.tok.get_vocab():
        raise DataError(
            "the prepared validation data uses a different tokenizer than the checkpoint; "
            "delete the data cache (data.cache_dir / LOOPMDM_CACHE) and run again"
        )
    obj = make_objective(cfg.diffusion, tok.mask_id, antithetic=True)
    results = nelbo_sweep(
        model,
        data.val,
        obj,
        loops,
        batch_size=_batch_size(args, cfg),
        max_batches=args.batches,
        seed=args.seed,
        repeats=args.repeats,
        target_rel_stderr=args.rel_stderr,
        max_repeats=args.max_repeats,
        precision=args.precision,
        tokenizer=None if data.conditional else tok,
        log=info,
        frozen=data.val_frozen,
    )
    return {
        "primary": "nelbo",
        "data": cfg.data.source,
        "objective": cfg.diffusion.objective,
        "results": results,
    }


@METRICS.register("zero-shot")
def run_zero_shot(args: EvalArgs) -> dict:
    """The NELBO bound on another corpus (--data), packed like training with the checkpoint's tokenizer."""
    if not args.data:
        raise ConfigError(
            "--metric zero-shot needs --data FILE|FOLDER|X.jsonl|hf:NAME (the corpus to score)"
        )
    model, tok, cfg, loops = _load(args)
    out = zero_shot(
        model,
        tok,
        cfg,
        args.data,
        loops,
        text_field=args.text_field,
        batch_size=_batch_size(args, cfg),
        max_batches=args.batches,
        seed=args.seed,
        repeats=args.repeats,
        target_rel_stderr=args.rel_stderr,
        max_repeats=args.max_repeats,
        precision=args.precision,
        max_documents=args.max_documents,
        log=info,
    )
    return {"primary": "nelbo", "data": args.data, "objective": cfg.diffusion.objective, **out}


@METRICS.register("gen-ppl")
def run_gen_ppl(args: EvalArgs) -> dict:
    """Gen-PPL + unigram entropy of given texts (--samples) or of samples generated at each S."""
    if not args.evaluator:
        raise ConfigError(
            "--metric gen-ppl needs --evaluator: a loopmdm AR run (`loopmdm train --objective ar`), "
            "a GPT-2 name (gpt2-large) or a local transformers folder"
        )
    if args.samples is not None:
        texts = read_samples(args.samples, args.text_field)
        res = generative_perplexity(texts, load_evaluator(args.evaluator, args.device)).to_dict()
        res["loops"] = None
        return {"primary": "gen_ppl", "samples": str(args.samples), "results": [res]}
    model, tok, cfg, loops = _load(args)
    evaluator = load_evaluator(args.evaluator, args.device)
    steps = _single_steps(args)
    L = args.length or cfg.model.max_seq_len
    if not 1 <= L <= cfg.model.max_seq_len:
        raise ConfigError(f"--length {L} must be in 1..{cfg.model.max_seq_len} (the model window)")
    results, written = [], []
    for s in loops:
        out = generate(
            model,
            tok,
            num_samples=args.num_samples,
            length=L,
            steps=steps,
            sampler=args.sampler,
            policy="fixed",
            policy_options={"loops": s},
            temperature=args.temperature,
            seed=args.seed,
            schedule=cfg.diffusion.schedule,
        )
        rep = out.report.to_dict()
        ids = [[i for i in row if i not in tok.special_ids] for row in out.tokens.tolist()]
        res = generative_perplexity(list(out.texts), evaluator, token_ids=ids).to_dict()
        res.update(
            loops=s,
            steps=steps,
            length=L,
            flops_per_sample=rep["flops"] / args.num_samples,
            network_calls=rep["network_calls"],
            wall_time_s=rep["wall_time_s"],
        )
        info(f"S={s}: gen-PPL {res['gen_ppl']:.2f}, entropy {res['entropy']:.3f}")
        results.append(res)
        written += [{"loops": s, "text": t} for t in out.texts]
    if args.samples_out is not None:
        args.samples_out.write_text(
            "".join(json.dumps(w) + "\n" for w in written), encoding="utf-8"
        )
    return {"primary": "gen_ppl", "evaluator": evaluator.name, "results": results}


@METRICS.register("sudoku")
def run_sudoku(args: EvalArgs) -> dict:
    """Board accuracy over --orders x --steps (T; 0 = one cell per step) x --loops on test puzzles (--data, or the
    built-in test split of a model trained on generated puzzles)."""
    model, tok, cfg, loops = _load(args)
    check_sudoku_model(tok)
    steps = parse_int_list(args.steps, "--steps", 0, "1,2,4,8,0") if args.steps else [0]
    if args.data:
        report = read_puzzles(args.data, args.max_boards)
        if report.bad:
            info(f"{args.data}: {report.summary()}")
        pairs, source = report.pairs, args.data
    elif cfg.data.source == GENERATE:
        pairs, source = generated_splits(cfg.data, info).test, "the built-in test split"
    else:
        raise ConfigError(
            "--metric sudoku: the checkpoint was trained on a puzzle file; pass the test puzzles "
            "with --data FILE"
        )
    pairs = pairs[: args.max_boards] if args.max_boards else pairs
    orders = parse_names(args.orders, "--orders", "margin,probability")
    scores = sudoku_grid(
        model,
        tok,
        pairs,
        orders=orders,
        steps=steps,
        loops=loops,
        schedule=get_schedule(cfg.diffusion.schedule),
        seed=args.seed,
        log=info,
    )
    return {
        "primary": "board_accuracy",
        "data": source,
        "boards": len(pairs),
        "results": [s.to_dict() for s in scores],
    }


def _train_overlap(test_rows, cfg) -> Optional[int]:
    """Test rows whose given text also occurs in the checkpoint's training file (None when it cannot be read)."""
    try:
        train_rows = rows_of(str(source_files(cfg.data.source, cfg.data.answers)[0]), cfg.data)
    except DataError:
        return None
    return overlap_count(test_rows, train_rows)


@METRICS.register("exact-match")
def run_exact_match(args: EvalArgs) -> dict:
    """Exact-match accuracy of the answers of --data (JSONL prompt / answer or infill rows) over --orders x --steps
    (T; 0 = one token per step) x --loops, per --group-by level, with the majority and task baselines."""
    if not args.data:
        raise ConfigError(
            "--metric exact-match needs --data FILE.jsonl or hf:... (prompt / answer or text / targets rows)"
        )
    model, tok, cfg, loops = _load(args)
    if cfg.data.format != "answers":
        raise ConfigError(
            f"--metric exact-match needs a model trained on prompt / answer data "
            f"(data.format='answers'); this checkpoint was trained with data.format="
            f"{cfg.data.format!r}"
            + (" (use --metric sudoku)" if cfg.data.format == "sudoku" else "")
        )
    rows = rows_of(str(args.data), cfg.data, limit=args.max_boards)
    overlap = _train_overlap(rows, cfg)
    info(
        f"{len(rows)} test rows from {args.data}; "
        + (
            "training file not found: overlap unknown"
            if overlap is None
            else f"{overlap} of them share their prompt with a training row"
        )
    )
    heuristic, heuristic_name = heuristic_for([r.raw for r in rows])
    steps = parse_int_list(args.steps, "--steps", 0, "1,2,4,0") if args.steps else [0]
    orders = parse_names(args.orders, "--orders", "margin,probability")
    records = exact_match_grid(
        model,
        tok,
        rows,
        length=cfg.model.max_seq_len,
        orders=orders,
        steps=steps,
        loops=loops,
        schedule=get_schedule(cfg.diffusion.schedule),
        group_by=args.group_by,
        heuristic=heuristic,
        seed=args.seed,
        batch_size=args.batch_size or 256,
        log=info,
        precision=args.precision,
    )
    return {
        "primary": "accuracy",
        "data": args.data,
        "rows": len(rows),
        "train_overlap": overlap,
        "group_by": args.group_by,
        "heuristic": heuristic_name,
        "results": records,
    }


# --------------------------------------------------------------------------- tables

COLUMNS = {  # (header, result key, width, format spec); FLOP columns are printed in GFLOP
    "nelbo": [
        ("S", "loops", 4, "d"),
        ("NELBO", "nelbo", 8, ".4f"),
        ("+-", "stderr", 7, ".4f"),
        ("PPL<=", "ppl", 9, ".2f"),
        ("dNELBO", "delta", 8, "+.4f"),
        ("+-", "delta_stderr", 7, ".4f"),
        ("bits/tok", "bits_per_token", 9, ".3f"),
        ("bits/byte", "bits_per_byte", 9, ".3f"),
        ("passes", "repeats", 6, "d"),
        ("GFLOP/tok", "flops_per_token", 9, ".4f"),
    ],
    "gen_ppl": [
        ("S", "loops", 4, "d"),
        ("gen-PPL", "gen_ppl", 9, ".2f"),
        ("entropy", "entropy", 8, ".3f"),
        ("samples", "samples", 7, "d"),
        ("tokens", "tokens", 7, "d"),
        ("GFLOP/sample", "flops_per_sample", 12, ".3f"),
    ],
    "board_accuracy": [
        ("order", "order", 11, "s"),
        ("T", "steps", 4, "d"),
        ("S", "loops", 4, "d"),
        ("boards", "boards", 6, "d"),
        ("solved", "solved", 6, "d"),
        ("board acc", "board_accuracy", 9, ".3f"),
        ("cell acc", "cell_accuracy", 8, ".3f"),
        ("valid", "valid_grids", 6, ".3f"),
        ("GFLOP/board", "flops_per_board", 11, ".3f"),
    ],
    "accuracy": [
        ("order", "order", 11, "s"),
        ("T", "steps", 4, "d"),
        ("S", "loops", 4, "d"),
        ("group", "group", 6, ""),
        ("n", "n", 5, "d"),
        ("exact", "accuracy", 6, ".3f"),
        ("token", "token_accuracy", 6, ".3f"),
        ("major.", "majority_baseline", 6, ".3f"),
        ("heur.", "heuristic_baseline", 6, ".3f"),
        ("GFLOP/row", "flops_per_problem", 10, ".4f"),
    ],
}


def format_table(payload: dict) -> str:
    """A fixed-width table of a sweep (one row per record); missing values print as '-'."""
    cols = COLUMNS[payload["primary"]]
    lines = [" ".join(f"{h:>{w}}" for h, _, w, _ in cols)]
    for r in payload["results"]:
        cells = []
        for _, key, w, spec in cols:
            v = r.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append(f"{'-':>{w}}")
            else:
                sign, spec = ("+", spec[1:]) if spec.startswith("+") else ("", spec)
                cells.append(format(v / 1e9 if "flops" in key else v, f">{sign}{w}{spec}"))
        lines.append(" ".join(cells))
    return "\n".join(lines)
