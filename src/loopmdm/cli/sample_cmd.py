"""``loopmdm sample``: generate from a checkpoint with any sampler and loop policy, and report the compute.

loopmdm sample --checkpoint RUN --sampler cached --policy converge --policy-opt threshold=0.05 --steps 64
loopmdm sample --checkpoint RUN --loops 1,4,12            # fixed S, one run per S
loopmdm sample --checkpoint RUN --template "def f(x):\\n    [MASK:8]\\n    return y" --json
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..checkpoint import load_model
from ..errors import ConfigError
from ..sampling import build_canvas, generate
from ..sampling.api import MAX_STEPS
from ..sampling.conditioning import check_text
from .app import app, emit_json, info
from .options import check_sampling_precision, parse_loops, parse_options


def format_report(rep: dict) -> str:
    cached = (
        f" ({rep['cached_calls']} through the key / value cache, {rep['cache_refreshes']} refreshes)"
        if rep.get("cached_calls") or rep.get("cache_refreshes")
        else ""
    )
    tps = f" | {rep['tokens_per_s']:.0f} tokens/s" if rep.get("tokens_per_s") else ""
    return (
        f"network calls {rep['network_calls']}{cached} | loop iterations {rep['loop_iterations']} "
        f"(per position {rep['token_loop_iterations']:.1f}, mean S {rep['mean_loops']:.2f}) | "
        f"{rep['flops'] / 1e9:.2f} GFLOPs | {rep['wall_time_s']:.2f} s{tps}"
    )


@app.command()
def sample(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Run folder or checkpoint folder."),
    sampler: str = typer.Option(
        "ancestral", "--sampler", help="ancestral | cached | confidence | semi_ar."
    ),
    sampler_opt: List[str] = typer.Option(
        [],
        "--sampler-opt",
        metavar="KEY=VALUE",
        help="Sampler option name=value (repeat), e.g. order=margin; fast "
        "sampling (confidence, semi_ar): threshold=0.9, cache=dual | "
        "prefix | delayed | loops, refresh=N, delay=N.",
    ),
    policy: str = typer.Option(
        "fixed", "--policy", help="Loop policy: fixed | schedule | converge | per_token | warm."
    ),
    policy_opt: List[str] = typer.Option(
        [],
        "--policy-opt",
        metavar="KEY=VALUE",
        help="Loop-policy option name=value (repeat), e.g. threshold=0.05. "
        "s_max defaults to the checkpoint's training S_max.",
    ),
    loops: Optional[List[str]] = typer.Option(
        None,
        "--loops",
        metavar="1,2,4",
        help="Fixed policy: loop count S (repeat or comma-separate for a "
        "run per S; default: the training S_max).",
    ),
    steps: int = typer.Option(64, "--steps", help="Denoising steps T."),
    num_samples: int = typer.Option(2, "--num-samples", help="Samples N (per S)."),
    length: Optional[int] = typer.Option(
        None, "--length", help="Window L in tokens, prompt included (default: the model window)."
    ),
    prompt: Optional[str] = typer.Option(
        None, "--prompt", help="Prefix kept fixed while the rest is generated."
    ),
    template: Optional[str] = typer.Option(
        None, "--template", help="Infill template; spans to fill are marked [MASK:n] or [MASK]."
    ),
    temperature: float = typer.Option(1.0, "--temperature", help="0 = greedy."),
    top_k: Optional[int] = typer.Option(None, "--top-k"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    seed: int = typer.Option(0, "--seed"),
    stop_at_eos: bool = typer.Option(
        False, "--stop-at-eos", help="Variable length: end each sample at its first EOS."
    ),
    ema: bool = typer.Option(False, "--ema", help="Use EMA weights when present."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N, mps or auto."),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32 or bf16 (autocast of the network)."
    ),
    trajectory: Optional[Path] = typer.Option(
        None,
        "--trajectory",
        help="Write the denoising trajectory: .html (interactive replay), "
        ".png/.svg/.pdf (frame strip) or .gif; one file per S.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Sample from a checkpoint and print the samples with the compute report (network calls, loop
    iterations, FLOPs, wall time)."""
    _check_inputs(num_samples, steps, prompt, template, precision)
    s_opts = parse_options(sampler_opt, "--sampler-opt")
    p_opts = parse_options(policy_opt, "--policy-opt")
    if loops and policy != "fixed":
        raise ConfigError(
            f"--loops applies to --policy fixed; for --policy {policy} use --policy-opt s_max=N"
        )
    if loops and "loops" in p_opts:
        raise ConfigError("--loops and --policy-opt loops=... both set S; pass one of them")
    if trajectory is not None:  # before generating: a bad path never throws samples away
        from ..viz.trajectory_html import check_trajectory_path

        check_trajectory_path(trajectory)
    model, tok, cfg = load_model(checkpoint, ema=ema, device=device)
    # T above the number of positions to generate only adds network calls: clamp it (a note says so)
    free = int(
        build_canvas(
            tok, 1, length, cfg.model.max_seq_len, prompt=prompt, template=template
        ).free.sum()
    )
    notes = []
    if steps > free:
        notes.append(
            f"--steps {steps} is more than the {free} positions to generate; using --steps {free}"
        )
        steps = free
    runs = _loop_runs(policy, p_opts, loops, cfg.diffusion.max_loops)
    results = []
    for s, opts in runs:
        out = generate(
            model,
            tok,
            num_samples=num_samples,
            length=length,
            steps=steps,
            sampler=sampler,
            sampler_options=s_opts,
            policy=policy,
            policy_options=opts,
            prompt=prompt,
            template=template,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_at_eos=stop_at_eos,
            schedule=cfg.diffusion.schedule,
            record_trajectory=trajectory is not None,
            precision=precision,
        )
        result = {
            "loops": s,
            "policy_options": opts,
            "samples": out.texts,
            "lengths": out.lengths.tolist(),
            "report": out.report.to_dict(),
        }
        if trajectory is not None:
            meta = {"checkpoint": str(checkpoint), "sampler": sampler, "policy": policy}
            tag = f"S{s}" if len(runs) > 1 else None
            result["trajectory"] = _write_trajectory(
                out, tok, trajectory, {**meta, "steps": steps, **opts}, tag
            )
        results.append(result)
        for note in notes:  # after the first generation ran: errors stay one line
            info(f"note: {note}")
        notes = []
        if not json_out:
            info(f"[{sampler} / {policy} {opts}] {format_report(result['report'])}")
            for note in out.report.notes:
                info(f"note: {note}")
    if json_out:
        emit_json(
            {
                "checkpoint": str(checkpoint),
                "steps": steps,
                "sampler": sampler,
                "sampler_options": s_opts,
                "policy": policy,
                "results": results,
            }
        )
    else:
        _print_samples(results, steps, policy)


def _check_inputs(
    num_samples: int, steps: int, prompt: Optional[str], template: Optional[str], precision: str
) -> None:
    """Refuse bad options before the checkpoint is loaded (one-line errors)."""
    if num_samples < 1:
        raise ConfigError(f"--num-samples {num_samples} must be >= 1")
    if steps > MAX_STEPS:
        raise ConfigError(
            f"--steps {steps} exceeds the supported maximum of {MAX_STEPS:,}; more steps than positions "
            "to generate add nothing (T = L reveals one token per step)"
        )
    for text, what in ((prompt, "--prompt"), (template, "--template")):
        if text is not None:
            check_text(text, what)
    check_sampling_precision(precision)


def _loop_runs(
    policy: str, p_opts: dict, loops: Optional[List[str]], s_max: int
) -> list[tuple[Optional[int], dict]]:
    """One (S, policy options) pair per generation: a run per fixed S, or one run of an adaptive
    policy (whose s_max defaults to the checkpoint's training S_max)."""
    if policy == "fixed" and "loops" not in p_opts:
        return [(s, {**p_opts, "loops": s}) for s in parse_loops(loops or [str(s_max)])]
    if policy != "fixed":
        p_opts = {"s_max": s_max, **p_opts}
    return [(p_opts.get("loops"), p_opts)]


def _write_trajectory(out, tok, path: Path, meta: dict, tag: Optional[str]) -> str:
    from ..viz.trajectory_html import write_trajectory  # matplotlib: only when one is written

    return str(write_trajectory(out, tok, path, meta=meta, tag=tag))


def _print_samples(results: list[dict], steps: int, policy: str) -> None:
    for r in results:
        label = f"S={r['loops']}" if r["loops"] is not None else policy
        for i, text in enumerate(r["samples"]):
            typer.echo(f"===== {label} sample {i} (T={steps}) =====")
            typer.echo(text)
        typer.echo(f"----- compute: {format_report(r['report'])}")
