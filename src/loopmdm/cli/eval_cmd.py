"""``loopmdm eval``: likelihood bounds and generative perplexity at one or more loop counts S.

    --metric nelbo      validation NELBO / perplexity bound / bits per token and per byte (the checkpoint's data)
    --metric zero-shot  the same bound on another corpus (--data FILE|FOLDER|X.jsonl|hf:NAME)
    --metric gen-ppl    generative perplexity under --evaluator (loopmdm AR run, GPT-2 name or folder) of samples
                        generated at each S, or of the texts in --samples FILE; plus unigram entropy

A list of S (``--loops 1,2,4,8``) runs a sweep and prints a table; ``--json`` prints one JSON object;
``--plot out.png`` draws metric vs S and metric vs compute.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import typer

from ..errors import ConfigError
from ..registry import Registry
from .app import app, emit_json, info
from .options import parse_loops


@dataclass
class EvalArgs:
    """Every option of ``loopmdm eval``, passed to the metric runners."""

    checkpoint: Optional[Path]
    loops: list[int]
    batches: int
    batch_size: Optional[int]
    repeats: int
    rel_stderr: Optional[float]
    max_repeats: int
    seed: int
    ema: bool
    device: str
    precision: str
    data: Optional[str]
    text_field: str
    max_documents: Optional[int]
    evaluator: Optional[str]
    samples: Optional[Path]
    samples_out: Optional[Path]
    num_samples: int
    steps: int
    length: Optional[int]
    temperature: float
    sampler: str = "ancestral"


METRICS: Registry[Callable[[EvalArgs], dict]] = Registry("eval metric")


def _batch_size(args: EvalArgs, cfg) -> int:
    """--batch-size, else the training batch capped at 32 (the logits of a batch are [B, L, V] floats)."""
    return args.batch_size or min(cfg.train.batch_size, 32)


def _load(args: EvalArgs):
    from ..checkpoint import load_model

    if args.checkpoint is None:
        raise ConfigError("--checkpoint is required for this metric; pass a run folder or checkpoint folder")
    return load_model(args.checkpoint, device=args.device, ema=args.ema)


@METRICS.register("nelbo")
def run_nelbo(args: EvalArgs) -> dict:
    """Validation NELBO of the checkpoint's own validation split at every S."""
    from ..data import prepare_data
    from ..diffusion import make_objective
    from ..errors import DataError
    from ..evaluate import nelbo_sweep
    from ..schedules import get_schedule

    model, tok, cfg = _load(args)
    data = prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len, log=info)
    if data.tokenizer.tok.get_vocab() != tok.tok.get_vocab():
        raise DataError("the prepared validation data uses a different tokenizer than the checkpoint; "
                        "delete the data cache (data.cache_dir / LOOPMDM_CACHE) and run again")
    obj = make_objective(cfg.diffusion.objective, get_schedule(cfg.diffusion.schedule), tok.mask_id, True,
                         cfg.diffusion.t_eps)
    results = nelbo_sweep(model, data.val, obj, args.loops, batch_size=_batch_size(args, cfg),
                          max_batches=args.batches, seed=args.seed, repeats=args.repeats,
                          target_rel_stderr=args.rel_stderr, max_repeats=args.max_repeats,
                          precision=args.precision, tokenizer=tok, log=info)
    return {"primary": "nelbo", "data": cfg.data.source, "objective": cfg.diffusion.objective, "results": results}


@METRICS.register("zero-shot")
def run_zero_shot(args: EvalArgs) -> dict:
    """The NELBO bound on another corpus (--data), packed like training with the checkpoint's tokenizer."""
    from ..zeroshot import zero_shot

    if not args.data:
        raise ConfigError("--metric zero-shot needs --data FILE|FOLDER|X.jsonl|hf:NAME (the corpus to score)")
    model, tok, cfg = _load(args)
    out = zero_shot(model, tok, cfg, args.data, args.loops, text_field=args.text_field,
                    batch_size=_batch_size(args, cfg), max_batches=args.batches, seed=args.seed,
                    repeats=args.repeats, target_rel_stderr=args.rel_stderr, max_repeats=args.max_repeats,
                    precision=args.precision, max_documents=args.max_documents, log=info)
    return {"primary": "nelbo", "data": args.data, "objective": cfg.diffusion.objective, **out}


@METRICS.register("gen-ppl")
def run_gen_ppl(args: EvalArgs) -> dict:
    """Gen-PPL + unigram entropy of given texts (--samples) or of samples generated at each S."""
    from ..genppl import generative_perplexity, load_evaluator, read_samples

    if not args.evaluator:
        raise ConfigError("--metric gen-ppl needs --evaluator: a loopmdm AR run (`loopmdm train --objective ar`), "
                          "a GPT-2 name (gpt2-large) or a local transformers folder")
    if args.samples is not None:
        texts = read_samples(args.samples, args.text_field)
        evaluator = load_evaluator(args.evaluator, args.device)
        res = generative_perplexity(texts, evaluator).to_dict()
        res["loops"] = None
        return {"primary": "gen_ppl", "samples": str(args.samples), "results": [res]}
    model, tok, cfg = _load(args)
    evaluator = load_evaluator(args.evaluator, args.device)
    L = args.length or cfg.model.max_seq_len
    if not 1 <= L <= cfg.model.max_seq_len:
        raise ConfigError(f"--length {L} must be in 1..{cfg.model.max_seq_len} (the model window)")
    results, written = [], []
    for s in args.loops:
        ids, texts, compute = _generate(model, tok, cfg, s, args.num_samples, L, args.steps, args.temperature,
                                        args.seed, args.sampler)
        res = generative_perplexity(texts, evaluator, token_ids=ids).to_dict()
        res.update(loops=s, steps=args.steps, length=L, **compute)
        info(f"S={s}: gen-PPL {res['gen_ppl']:.2f}, entropy {res['entropy']:.3f}")
        results.append(res)
        written += [{"loops": s, "text": t} for t in texts]
    if args.samples_out is not None:
        args.samples_out.write_text("".join(json.dumps(w) + "\n" for w in written), encoding="utf-8")
    return {"primary": "gen_ppl", "evaluator": evaluator.name, "results": results}


def _generate(model, tok, cfg, loops: int, n: int, L: int, steps: int, temperature: float, seed: int,
              sampler: str):
    """n samples of L tokens at S = loops with ``loopmdm.sampling.generate``: (token ids without special
    tokens, texts, compute dict)."""
    from ..sampling import generate

    out = generate(model, tok, num_samples=n, length=L, steps=steps, sampler=sampler, policy="fixed",
                   policy_options={"loops": loops}, temperature=temperature, seed=seed,
                   schedule=cfg.diffusion.schedule)
    rep = out.report.to_dict()
    compute = {"flops_per_sample": rep["flops"] / n, "network_calls": rep["network_calls"],
               "wall_time_s": rep["wall_time_s"]}
    specials = tok.special_ids
    ids = [[i for i in row if i not in specials] for row in out.tokens.tolist()]
    return ids, list(out.texts), compute


# --------------------------------------------------------------------------- table

COLUMNS = {  # (header, result key, width, format spec); FLOP columns are printed in GFLOP
    "nelbo": [("S", "loops", 4, "d"), ("NELBO", "nelbo", 8, ".4f"), ("+-", "stderr", 7, ".4f"),
              ("PPL<=", "ppl", 9, ".2f"), ("dNELBO", "delta", 8, "+.4f"),
              ("+-", "delta_stderr", 7, ".4f"), ("bits/tok", "bits_per_token", 9, ".3f"),
              ("bits/byte", "bits_per_byte", 9, ".3f"), ("passes", "repeats", 6, "d"),
              ("GFLOP/tok", "flops_per_token", 9, ".4f")],
    "gen_ppl": [("S", "loops", 4, "d"), ("gen-PPL", "gen_ppl", 9, ".2f"), ("entropy", "entropy", 8, ".3f"),
                ("samples", "samples", 7, "d"), ("tokens", "tokens", 7, "d"),
                ("GFLOP/sample", "flops_per_sample", 12, ".3f")],
}


def format_table(payload: dict) -> str:
    """A fixed-width table of a sweep (one row per S); missing values print as '-'."""
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


@app.command("eval")
def eval_(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Run folder or checkpoint folder."),
    metric: str = typer.Option("nelbo", "--metric", help="nelbo | zero-shot | gen-ppl."),
    loops: List[str] = typer.Option(["1"], "--loops", help="Loop count S; repeat or comma-separate for a sweep."),
    batches: int = typer.Option(16, "--batches", help="Evaluation batches per S (NELBO metrics).", min=1),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1,
                                             help="Rows per batch (default: training's, at most 32)."),
    repeats: int = typer.Option(1, "--repeats", help="Minimum Monte-Carlo passes over the rows.", min=1),
    rel_stderr: float = typer.Option(0.0025, "--rel-stderr",
                                     help="Add passes until stderr/NELBO <= this (two seeds then agree within "
                                          "~1%); 0 = exactly --repeats passes.", min=0.0),
    max_repeats: int = typer.Option(32, "--max-repeats", help="Cap on passes for --rel-stderr.", min=1),
    seed: int = typer.Option(0, "--seed"),
    ema: bool = typer.Option(False, "--ema", help="Use EMA weights when present."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or bf16 (autocast)."),
    data: Optional[str] = typer.Option(None, "--data", help="zero-shot corpus: file, folder, .jsonl or hf:NAME."),
    text_field: str = typer.Option("text", "--text-field", help="JSON field holding the text (.jsonl inputs)."),
    max_documents: Optional[int] = typer.Option(None, "--max-documents", help="zero-shot: first N documents.",
                                                min=1),
    evaluator: Optional[str] = typer.Option(None, "--evaluator",
                                            help="gen-ppl scorer: loopmdm AR run, GPT-2 name or folder "
                                                 "(prefix loopmdm: / hf: to force)."),
    samples: Optional[Path] = typer.Option(None, "--samples", help="gen-ppl of these texts (.jsonl/.json/.txt) "
                                                                   "instead of generating."),
    samples_out: Optional[Path] = typer.Option(None, "--samples-out", help="Write generated samples (JSONL)."),
    num_samples: int = typer.Option(16, "--num-samples", help="gen-ppl: samples per S.", min=1),
    steps: int = typer.Option(64, "--steps", help="gen-ppl: denoising steps T.", min=1),
    length: Optional[int] = typer.Option(None, "--length", help="gen-ppl: tokens per sample (default window)."),
    temperature: float = typer.Option(1.0, "--temperature", help="gen-ppl: sampling temperature.", min=0.0),
    sampler: str = typer.Option("ancestral", "--sampler", help="gen-ppl: sampler (loopmdm.sampling.SAMPLERS)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (1 is fastest for tiny "
                                                                   "models on a busy machine).", min=1),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the sweep into this PNG."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Likelihood bounds (nelbo, zero-shot) or generative perplexity (gen-ppl) at each S."""
    s_list = parse_loops(loops)
    runner = METRICS.get(metric)
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"--precision {precision!r} is unknown; use fp32 or bf16")
    if plot is not None and plot.suffix.lower() != ".png":
        raise ConfigError(f"--plot {str(plot)!r} must end in .png")
    if threads:
        import torch

        torch.set_num_threads(threads)
    args = EvalArgs(checkpoint, s_list, batches, batch_size, repeats, rel_stderr or None, max_repeats, seed, ema,
                    device, precision, data, text_field, max_documents, evaluator, samples, samples_out,
                    num_samples, steps, length, temperature, sampler)
    payload = {"checkpoint": str(checkpoint) if checkpoint else None, "metric": metric, **runner(args)}
    if plot is not None:
        from ..plots import plot_sweeps

        plot_sweeps([payload], plot)
        info(f"plot written to {plot}")
    if json_out:
        emit_json(payload)
        return
    typer.echo(format_table(payload))
