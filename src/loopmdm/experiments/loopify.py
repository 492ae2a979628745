"""Does loopifying a trained model and briefly fine-tuning it with random S beat fine-tuning it further, at equal
training FLOPs? (``loopmdm experiment loopify``)

Two sources, each trained here on the built-in corpus, then fine-tuned two ways at the SAME extra training FLOPs:

- sources: ``mdm``, a plain MDM of the library (the ``tiny-baseline`` model: 4 x 96, adaLN, S = 1) and
  ``bert``, a transformers ``BertForMaskedLM`` of the same size pretrained with the MDM objective, exported to
  a plain BERT folder (``loopmdm export``) and read back from it as a transformers model;
- every source is loopified (``loopmdm loopify``, layers ``loop_layers`` = 1:3 as the mid block, exact at S = 1:
  the check is recorded in ``loopify.json``), then
  (a) ``finetune``: fine-tuned as it is (S = 1, ``finetune_steps`` steps);
  (b) ``loopify``: fine-tuned with S ~ U{1..S_max} (balanced), for the steps that cost (a)'s FLOPs;
  (c) ``curriculum`` (when ``curriculum_frac`` is set): as (b), with S_max ramping up from 1 over the first
  ``curriculum_frac`` of its steps (``diffusion.loop_curriculum_steps``).
  Both start from the loopified checkpoint (``train --init``), with the same learning rate, warmup + cosine
  schedule, data order and seed; the FLOPs come from ``loopmdm.model.flops`` as the trainer counts them.

Reported: validation NELBO at S = 1, S_max and 2 S_max of the source and of every fine-tuned model (2 seeds; the
seed drives the sources' training too), validation NELBO against extra training FLOPs (one PNG per source), and
the answer (does (b) at S_max beat (a) at S = 1 on every seed?) in ``summary.md`` / ``results.json``.

Run it (the ``laptop`` config: 2 seeds as two one-thread processes on 2 CPU cores)::

    loopmdm experiment loopify --out runs/loopify --seeds 0 &
    loopmdm experiment loopify --out runs/loopify --seeds 1; wait
    loopmdm experiment loopify --out runs/loopify        # both seeds done: reuses every run, writes the summary

``--plan`` prints the steps and FLOPs of every run without training; the report call reuses every run. Wall
times are in the results file and docs/results.md section 5.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

from ..backbones import get_backbone
from ..checkpoint import load_config_file, load_model, resolve_checkpoint
from ..config import ModelConfig, RunConfig
from ..data import PreparedData, prepare_data
from ..diffusion import make_loop_distribution, predicted_fraction
from ..errors import ConfigError
from ..fileio import write_json
from ..hf.export import export_hf
from ..loopify import loopify
from ..model.flops import train_flops_per_token
from ..runtime import set_threads
from ..viz.experiment_plots import plot_loss_vs_flops
from .common import clone, train_or_reuse
from .compute_matched import final_nelbo
from .curves import read_curve
from .loopify_config import LoopifyExperimentConfig
from .loopify_report import LABELS, summarize, summary_markdown

Log = Callable[[str], None]
# The plot reuses the compute-matched colours: (a) is drawn as the plain MDM, (b) as LoopMDM.
PLOT_NAMES = {"finetune": "mdm", "loopify": "loopmdm", "curriculum": "curriculum"}


# --------------------------------------------------------------------------- the plan (pure arithmetic)


def finetune_config(
    loopified: RunConfig, cfg: LoopifyExperimentConfig, arm: str, steps: int, seed: int, init: str
) -> RunConfig:
    """The run config of fine-tuning arm ``arm`` from the loopified checkpoint ``init``."""
    rc = clone(loopified)
    d = rc.diffusion
    if arm == "finetune":
        d.loop_dist, d.s_fixed, d.loop_curriculum_steps = "fixed", 1, 0
    else:
        d.loop_dist, d.s_max = ("balanced" if arm == "loopify" else "uniform"), cfg.s_max
        d.loop_curriculum_steps = round(cfg.curriculum_frac * steps) if arm == "curriculum" else 0
    t = rc.train
    t.init, t.init_weights, t.seed, t.max_steps, t.lr = init, "auto", seed, steps, cfg.finetune_lr
    t.warmup_steps = max(1, round(cfg.warmup_frac * steps)) if cfg.warmup_frac > 0 else 0
    t.eval_every, t.save_every = max(1, steps // cfg.n_evals), max(1, steps // 2)
    for name in (
        "batch_size",
        "eval_batches",
        "precision",
        "device",
        "log_every",
        "keep_last",
        "threads",
    ):
        setattr(t, name, getattr(cfg.run.train, name))
    rc.data = clone(cfg.run.data)  # the experiment's corpus, with the loopified model's tokenizer
    rc.data.tokenizer = loopified.data.tokenizer
    return rc.validate()


def run_flops(rc: RunConfig, steps: int) -> float:
    """Expected training FLOPs of ``steps`` steps of ``rc`` (the LM head at the expected masked share), the
    same count the trainer logs (the curriculum's ramp included)."""
    m = rc.model
    pf = predicted_fraction(rc.diffusion)
    dist = make_loop_distribution(rc.diffusion, total_steps=steps, seed=rc.train.seed)
    per_token = dist.expect_over(lambda s: train_flops_per_token(m, s, m.max_seq_len, pf), steps)
    return per_token * rc.train.batch_size * m.max_seq_len


def plan_arms(
    loopified: RunConfig, cfg: LoopifyExperimentConfig, seed: int = 0, init: str = "INIT"
) -> dict:
    """{arm: (steps, planned FLOPs)}: (a) gets ``finetune_steps``, the others the step count whose FLOPs are
    closest to (a)'s (a curriculum's cost grows with the ramp, so it is found by bisection)."""
    budget = run_flops(
        finetune_config(loopified, cfg, "finetune", cfg.finetune_steps, seed, init),
        cfg.finetune_steps,
    )
    plan = {"finetune": (cfg.finetune_steps, budget)}
    for arm in cfg.arms()[1:]:
        lo, hi = 1, cfg.finetune_steps
        while run_flops(finetune_config(loopified, cfg, arm, hi, seed, init), hi) < budget:
            lo, hi = hi, 2 * hi
        while hi - lo > 1:  # smallest step count whose FLOPs reach the budget
            mid = (lo + hi) // 2
            if run_flops(finetune_config(loopified, cfg, arm, mid, seed, init), mid) < budget:
                lo = mid
            else:
                hi = mid
        steps = min(
            (lo, hi),
            key=lambda n: abs(
                run_flops(finetune_config(loopified, cfg, arm, n, seed, init), n) - budget
            ),
        )
        plan[arm] = (
            steps,
            run_flops(finetune_config(loopified, cfg, arm, steps, seed, init), steps),
        )
    worst = max(abs(f - budget) / budget for _, f in plan.values())
    if worst > cfg.flops_tolerance:
        raise ConfigError(
            f"with finetune_steps={cfg.finetune_steps} the step counts "
            f"{[s for s, _ in plan.values()]} miss (a)'s FLOPs by up to {worst:.1%} (flops_tolerance "
            f"{cfg.flops_tolerance:.0%}); raise finetune_steps"
        )
    return plan


def source_config(
    cfg: LoopifyExperimentConfig, source: str, seed: int, vocab_size: int, pad_id: Optional[int]
) -> RunConfig:
    """The run that trains source ``source`` from scratch: the base MDM, or a BertForMaskedLM of ``cfg.bert``
    (all layers in the head, S = 1: a plain BERT) trained with the same objective and data."""
    rc = clone(cfg.run)
    rc.train.seed = seed
    rc.diffusion.loop_dist, rc.diffusion.s_fixed = "fixed", 1
    if source == "mdm":
        rc.train.max_steps = cfg.mdm_steps
        return rc.validate()
    from transformers import BertConfig  # the [hf] extra

    L = rc.model.max_seq_len
    hf = BertConfig(
        **{
            **cfg.bert,
            "vocab_size": vocab_size,
            "max_position_embeddings": L,
            "pad_token_id": pad_id,
        }
    )
    fam = get_backbone("bert")
    rc.model = fam.model_config(hf, fam.stored_config(hf), hf.num_hidden_layers, 0, seq_len=L)
    rc.train.max_steps, rc.train.lr = cfg.bert_steps, cfg.bert_lr
    return rc.validate()


# --------------------------------------------------------------------------- running


def _prepare(cfg: LoopifyExperimentConfig, log: Log) -> PreparedData:
    data = prepare_data(cfg.run.data, cfg.run.model.vocab_size, cfg.run.model.max_seq_len, log=log)
    cfg.run.model.vocab_size = data.tokenizer.vocab_size
    return data


def _train(rc: RunConfig, run_dir: Path, data: PreparedData, progress: bool, log: Log) -> dict:
    t0 = time.perf_counter()
    _, reused = train_or_reuse(rc, run_dir, data, progress, log)
    record = run_dir / "experiment_run.json"
    if reused and record.is_file():
        wall = json.loads(record.read_text()).get("train_wall_s")
    else:
        wall = time.perf_counter() - t0
        record.write_text(json.dumps({"train_wall_s": wall}))
    curve = read_curve(run_dir / "metrics.jsonl")
    return {
        "steps": rc.train.max_steps,
        "flops": curve.flops[-1] if curve.flops else 0.0,
        "reused": reused,
        "train_wall_s": wall,
        "curve": curve.to_dict(),
    }


def _loopified(cfg: LoopifyExperimentConfig, source_path: Path, out: Path, log: Log) -> Path:
    """Loopify ``source_path`` into ``out`` once (a finished folder with the same loop range is reused)."""
    if (out / "loopify.json").is_file():
        done = json.loads((out / "loopify.json").read_text())
        if done.get("loop_layers") != list(cfg.loop_layers) or done.get("s_max") != cfg.s_max:
            raise ConfigError(
                f"{str(out)!r} holds a model loopified at layers {done.get('loop_layers')} with S_max "
                f"{done.get('s_max')}, not {list(cfg.loop_layers)} / {cfg.s_max}; delete it or choose "
                "another --out"
            )
        return out
    if out.exists():  # an interrupted conversion: start it again
        import shutil

        shutil.rmtree(out)
    a, b = cfg.loop_layers
    loopify(str(source_path), (a, b), out, cfg.s_max, log=log)
    return out


def run_source(
    cfg: LoopifyExperimentConfig,
    source: str,
    seed: int,
    out: Path,
    data: PreparedData,
    progress: bool,
    log: Log,
) -> dict:
    """Train (or reuse) one source, loopify it, fine-tune it every way, evaluate everything."""
    root = out / f"seed_{seed}" / source
    tok = data.tokenizer
    src_rc = source_config(cfg, source, seed, tok.vocab_size, tok.pad_id)
    log(f"seed {seed}, {source}: training the source ({src_rc.train.max_steps} steps)")
    src_info = _train(src_rc, root / "source", data, progress, log)
    from_path = root / "source"
    # read it back the way a user's transformers model arrives: a plain BERT folder
    if source == "bert":
        from_path = root / "hf"
        if not (from_path / "config.json").is_file():
            export_hf(root / "source", from_path)
    loop_dir = _loopified(cfg, from_path, root / "loopified", log)
    init = str(resolve_checkpoint(loop_dir))
    loopified = load_config_file(resolve_checkpoint(loop_dir))
    plan = plan_arms(loopified, cfg, seed, init)
    grid = cfg.loops_grid()
    # batch / precision
    evals = finetune_config(loopified, cfg, "finetune", cfg.finetune_steps, seed, init)
    src_info.update(
        loopify=json.loads((loop_dir / "loopify.json").read_text()),
        final=final_nelbo(load_model(loop_dir)[0], data, evals, grid, cfg),
    )
    runs = {"source": src_info}
    for arm in cfg.arms():
        steps, planned = plan[arm]
        rc = finetune_config(loopified, cfg, arm, steps, seed, init)
        log(f"seed {seed}, {source}: {LABELS[arm]} for {steps} steps (planned {planned:.3e} FLOPs)")
        info = _train(rc, root / arm, data, progress, log)
        model = load_model(root / arm, ema=None)[0]
        info.update(planned_flops=planned, final=final_nelbo(model, data, rc, grid, cfg))
        runs[arm] = info
        log(
            "  final NELBO "
            + ", ".join(f"S={s}: {v['nelbo']:.4f}" for s, v in info["final"].items())
        )
    return runs


def run_seed(
    cfg: LoopifyExperimentConfig, seed: int, out: Path, data: PreparedData, progress: bool, log: Log
) -> dict:
    """Every source of one seed; kept in ``results_seed_N.json`` so that a later call with all seeds (the
    summary) reuses it instead of evaluating again."""
    path = out / f"results_seed_{seed}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("config") == json.loads(json.dumps(asdict(cfg))):
            log(f"seed {seed}: reusing {path}")
            return _int_keys(saved["sources"])
    sources = {s: run_source(cfg, s, seed, out, data, progress, log) for s in cfg.sources}
    write_json(path, {"config": asdict(cfg), "sources": sources})
    return sources


def _int_keys(sources: dict) -> dict:
    """JSON turns the S of ``final`` into strings; give them back as ints."""
    for runs in sources.values():
        for run in runs.values():
            run["final"] = {int(s): v for s, v in run["final"].items()}
    return sources


def run_loopify_experiment(
    cfg: LoopifyExperimentConfig,
    out: str | Path,
    seeds: Optional[list[int]] = None,
    progress: bool = False,
    log: Log = print,
) -> dict:
    """Every source and arm for every seed; results.json, one loss-vs-FLOPs PNG per source and summary.md."""
    cfg.validate()
    set_threads(cfg.run.train.threads)
    out = Path(out)
    seeds = list(seeds if seeds is not None else cfg.seeds)
    data = _prepare(cfg, log)
    t0 = time.perf_counter()
    per_seed = {seed: run_seed(cfg, seed, out, data, progress, log) for seed in seeds}
    results = summarize(cfg, per_seed, time.perf_counter() - t0)
    figures = []
    for source in cfg.sources:
        curves = {
            seed: {"runs": {PLOT_NAMES[a]: per_seed[seed][source][a] for a in cfg.arms()}}
            for seed in seeds
        }
        name = f"loss_vs_flops_{source}.png"
        plot_loss_vs_flops(
            curves,
            {PLOT_NAMES[a]: LABELS[a] for a in cfg.arms()},
            out / name,
            title=f"Fine-tuning the {source} source: validation NELBO vs extra training FLOPs "
            f"((a) at S=1, (b) at S={cfg.s_max})",
        )
        figures.append(name)
    results["figures"] = figures
    write_json(out / "results.json", results)
    (out / "summary.md").write_text(summary_markdown(results))
    return results


def plan_summary(cfg: LoopifyExperimentConfig) -> dict:
    """The planned steps and FLOPs of (a), (b), (c) for the mdm source (the bert source has the same shape)."""
    cfg.validate()
    rc = clone(cfg.run)
    a, b = cfg.loop_layers
    m = rc.model
    rc.model = ModelConfig(
        **{**asdict(m), "n_h": a, "n_m": b - a, "n_o": m.n_layers - b}
    ).validate()
    rc.diffusion.loop_dist, rc.diffusion.s_max = "uniform", cfg.s_max
    plan = plan_arms(rc, cfg)
    return {
        "sources": {"mdm": cfg.mdm_steps, "bert": cfg.bert_steps},
        "finetune": {arm: {"steps": s, "planned_flops": f} for arm, (s, f) in plan.items()},
    }
