"""The loop gain against the training budget: the compute-matched trio at several budgets, and where the trend goes.

At each budget B (training FLOPs per run) the three runs of the compute-matched comparison are trained at equal
FLOPs (``compute_matched.plan_compute_matched``): (a) the same-size MDM, (b) LoopMDM (S ~ U{1..S_max}), (c) the
deeper MDM of (b)'s per-step FLOPs; and a fourth run, (a') ``mdm_at_b_steps``: the plain MDM trained for exactly
(b)'s number of steps, with its own warmup and cosine decay over those steps; with ``flop_proportional_arm`` a
fifth, (b') LoopMDM with p(S) proportional to 1 / F(S) (F(S) the training FLOPs of a step at S) at the same
budget. Per budget and seed the study reports

* the final validation NELBO of each model (LoopMDM at S = 1, S_max and 2 S_max) and its standard error;
* the loop gain at equal FLOPs, NELBO(a) - NELBO(b at S_max) (> 0: looping wins), and the FLOPs ratio (the same
  for (b'));
* the loop gain at equal steps, NELBO(a') - NELBO(b at S_max) (> 0: looping wins): does a LoopMDM step beat an
  MDM step at all (it costs more FLOPs)? Both runs have a full schedule over the same number of steps, so the
  comparison holds the learning-rate schedule fixed. (Reading (a)'s curve at (b)'s step count compares a run
  still at a high learning rate with one that has decayed; that reading is kept only as a diagnostic,
  ``schedule_bias_curve_read`` = (a)'s curve at (b)'s steps - (a')'s final curve point.)
* the gain over the deeper MDM, NELBO(c) - NELBO(b at S_max);
* the standard error of every such paired difference (per validation batch: the two models see the same rows,
  t and masks), the validation curve of every run, and the step at which each run left the unigram plateau.

**One validation set.** Every curve point and every final NELBO is evaluated on the same rows (the first batches
of the validation split) with the same t and masks: batch k draws its noise from a generator seeded with
``SeedSequence([eval_seed, k])``, whatever the run, its training seed or S. Curves use the first
``run.train.eval_batches`` batches, final numbers the first ``final_eval_batches`` (the curve rows are a prefix
of them). Standard errors are between batches (they hold the Monte-Carlo and the row-to-row variation).

**The plateau.** H is the unigram cross-entropy of the curve's validation tokens under the training tokens'
frequencies (``curves.unigram_cross_entropy``): the NELBO of a model that ignores its context. A run has left the
plateau at the first validation point at least ``plateau_margin`` (0.25) nats below H.

**The trend.** A least-squares line of a gain against log10(B), fitted only over the budgets where every seed's
two runs of that gain left the plateau (for the equal-FLOPs gain (a) and (b); for the equal-steps gain (a') and
(b)); fewer than two such budgets give no trend. Its 95% interval (slope, and the zero crossing when the line
heads there) is a bootstrap that resamples the seeds within each budget (``bootstrap`` resamples, RNG seed
``bootstrap_seed``).

Runs are checkpointed; a study that stopped resumes where it did (runs whose saved config or validation set differs
are refused, and finished runs on other data). A finished run's numbers live in its folder's
``experiment_run.json`` and ``metrics.jsonl`` (its config, data digests, final evaluation and curve): with its
checkpoints deleted (to save disk, or to carry a study's progress to another machine in a few kB per run) the run
is still reported, not retrained; only an evaluation its record lacks (another S grid or number of batches) needs
the weights. ``--shard K/N`` trains the runs of shard K of N (runs are spread over the shards by planned FLOPs,
largest first, each to the least-loaded shard), so two processes (one per core) can share a study; a final call
without ``--shard`` reuses every finished run and writes the report. ``--stop-after MINUTES`` starts no run
expected to end past the limit (a time-limited job), so that no run is cut halfway.

    loopmdm experiment loop-scaling --config laptop --out runs/scaling --shard 0/2 &
    loopmdm experiment loop-scaling --config laptop --out runs/scaling --shard 1/2 &
    wait; loopmdm experiment loop-scaling --config laptop --out runs/scaling
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..data import PreparedData
from ..diffusion import make_loop_distribution, predicted_fraction
from ..errors import ConfigError
from ..fileio import write_json
from ..model.flops import train_flops_per_token
from ..runtime import machine_info
from ..viz.experiment_plots import plot_loop_gain
from .common import clone
from .compute_matched import MatchedPlan, RunPlan, plan_compute_matched, start
from .curves import unigram_cross_entropy
from .fixed_validation import FixedValidation, batch_seed, paired_gain  # noqa: F401  (re-exported)
from .loop_scaling_config import LoopScalingConfig
from .loop_scaling_report import (
    EQUAL_STEPS,
    EQUAL_STEPS_LABEL,
    EVAL_METHOD,
    FLOP_PROPORTIONAL,
    FLOP_PROPORTIONAL_LABEL,
    LOOPED,
    TREND_RULE,
    budget_rows,
    fit_trend,
    loop_scaling_markdown,
    margin_sensitivity,
)
from .loop_scaling_run import run_is_done, train_run
from .provenance import (  # noqa: F401
    corpus_description,
    data_digests,
    data_fingerprint,
    provenance_line,
    software_versions,
)

Log = Callable[[str], None]
# the plateau margins the equal-FLOPs trend is refitted with, beside the config's (``trend_margin_sensitivity``)
SENSITIVITY_MARGINS = (0.15, 0.35)


# --------------------------------------------------------------------------- the plan


def equal_steps_run(plan: MatchedPlan) -> RunPlan:
    """(a'): (a)'s model and config trained for (b)'s number of steps (its own warmup and cosine decay over them),
    the baseline of the gain at equal steps."""
    a, b = plan.run("mdm"), plan.run("loopmdm")
    return RunPlan(
        EQUAL_STEPS,
        EQUAL_STEPS_LABEL,
        clone(a.cfg),
        b.steps,
        a.train_flops_per_token,
        a.flops_per_step,
        b.steps * a.flops_per_step,
    )


def flop_proportional_run(plan: MatchedPlan, tokens: int, pf: float) -> RunPlan:
    """(b'): (b) with p(S) proportional to 1 / F(S) and the steps that spend the plan's budget at its expected
    training FLOPs per token E[F] = S_max / sum_S 1 / F(S) (``tokens`` per step, ``pf`` the share of positions
    the LM head runs on, as the trainer counts them)."""
    b = clone(plan.run("loopmdm"))
    b.cfg.diffusion.loop_dist = "flop_proportional"
    model = b.cfg.model

    def flops(s: int) -> float:  # F(S), as the trainer passes it to the distribution
        return train_flops_per_token(model, s, predicted_fraction=pf)

    f = make_loop_distribution(b.cfg.diffusion, flops_fn=flops).expect(flops)
    steps = max(1, round(plan.total_flops / (tokens * f)))
    return RunPlan(
        FLOP_PROPORTIONAL, FLOP_PROPORTIONAL_LABEL, b.cfg, steps, f, f * tokens, steps * f * tokens
    )


def budget_plans(cfg: LoopScalingConfig, free_fraction: float = 1.0) -> list[MatchedPlan]:
    """One compute-matched plan per budget: (a) gets round(B / (tokens per step x F_train(a))) steps, (b) and
    (c) the steps that give them the same total, (a') (``mdm_at_b_steps``, not compute-matched) (b)'s steps, and
    with ``flop_proportional_arm`` (b') (LoopMDM, p(S) proportional to 1 / F(S)) the steps of the same total.
    A budget that cannot be matched within ``flops_tolerance`` (too few steps to round) is a one-line error."""
    run = cfg.run
    tokens = run.train.batch_size * run.model.max_seq_len
    pf = predicted_fraction(run.diffusion) * free_fraction
    f_a = train_flops_per_token(run.model, 1, predicted_fraction=pf)
    plans = []
    for budget in cfg.budgets:
        steps_a = max(1, round(budget / (tokens * f_a)))
        try:
            plan = plan_compute_matched(cfg, steps_a, free_fraction)
        except ConfigError as e:
            raise ConfigError(f"budget {budget:.3g} FLOPs cannot be matched: {e}") from None
        plan.runs.append(equal_steps_run(plan))
        if cfg.flop_proportional_arm:
            plan.runs.append(flop_proportional_run(plan, tokens, pf))
        plans.append(plan)
    return plans


def run_list(cfg: LoopScalingConfig, plans: list[MatchedPlan]) -> list[tuple[int, int, RunPlan]]:
    """(budget index, seed, RunPlan) of every run of the study, in training order."""
    return [
        (i, seed, rp)
        for i, plan in enumerate(plans)
        for seed in cfg.budget_seeds(i)
        for rp in plan.runs
    ]


def shard_assignment(runs: Sequence[tuple[int, int, RunPlan]], n: int) -> list[int]:
    """The shard of every run: largest planned FLOPs first, each to the shard with the fewest planned FLOPs so
    far (ties: list order, lowest shard), so that N processes finish at about the same time."""
    load, out = [0.0] * n, [0] * len(runs)
    for j in sorted(range(len(runs)), key=lambda j: (-runs[j][2].planned_flops, j)):
        k = min(range(n), key=lambda k: (load[k], k))
        out[j] = k
        load[k] += runs[j][2].planned_flops
    return out


def parse_shard(spec: Optional[str]) -> Optional[tuple[int, int]]:
    """``"K/N"`` -> (K, N) with 0 <= K < N; None stays None."""
    if spec is None:
        return None
    try:
        k, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {spec!r} must look like K/N, e.g. --shard 0/2") from None
    if not 0 <= k < n:
        raise ConfigError(f"--shard {spec!r} needs 0 <= K < N")
    return k, n


# --------------------------------------------------------------------------- the study


def run_fits(
    elapsed_s: float, limit_s: float, planned_flops: float, s_per_flop: Optional[float]
) -> bool:
    """Whether a run of ``planned_flops`` is expected to end within ``limit_s`` seconds of the call, ``elapsed_s``
    into it: at ``s_per_flop``, the wall seconds per planned FLOP of the runs this call trained (evaluation
    included, so smaller runs overstate it: the estimate errs towards stopping early); before the first such
    run (None) a run starts while time is left."""
    if elapsed_s >= limit_s:
        return False
    return s_per_flop is None or elapsed_s + planned_flops * s_per_flop <= limit_s


def run_loop_scaling(
    cfg: LoopScalingConfig,
    out: str | Path,
    shard: Optional[str] = None,
    progress: bool = False,
    log: Log = print,
    stop_after_min: Optional[float] = None,
) -> Optional[dict]:
    """Train (and evaluate) the study's runs (all, or this shard's), then, without a shard, write results.json,
    summary.md and loop_gain.png. ``stop_after_min``: start no run expected to end later than that many minutes
    into the call (``run_fits``), and return None without a report when a run was left for later (a time-limited
    job, a machine that will be returned: no run is cut halfway, and finished runs move as records)."""
    t0 = time.perf_counter()  # --stop-after counts from here, data preparation included
    if stop_after_min is not None and not stop_after_min >= 0:
        raise ConfigError(f"--stop-after {stop_after_min:g} must be >= 0 minutes")
    out, _, data = start(cfg, out, cfg.seeds, log)
    plans = budget_plans(cfg, data.free_fraction)
    runs = run_list(cfg, plans)
    part = parse_shard(shard)
    owner = shard_assignment(runs, part[1]) if part is not None else None
    validation = FixedValidation.of(cfg, data)
    identity = data_digests(data)
    s_max = cfg.run.diffusion.s_max
    trained: dict = {}
    spent_flops = spent_s = 0.0  # the planned FLOPs this call trained, and their wall seconds
    for j, (i, seed, rp) in enumerate(runs):
        if owner is not None and owner[j] != part[0]:
            continue
        name = f"budget {cfg.budgets[i]:.3g}, seed {seed}: {rp.label}"
        run_dir = out / f"budget_{i}" / f"seed_{seed}" / rp.name
        rate = spent_s / spent_flops if spent_flops else None
        if (
            stop_after_min is not None
            and not run_is_done(run_dir, rp)
            and not run_fits(time.perf_counter() - t0, 60 * stop_after_min, rp.planned_flops, rate)
        ):
            log(
                f"--stop-after {stop_after_min:g}: stopping before {name} (expected to end past the limit); "
                f"{len(trained)} runs done, run the same command again to continue"
            )
            return None
        log(f"{name}, {rp.steps} steps")
        r0 = time.perf_counter()
        grid = sorted({1, s_max, 2 * s_max}) if rp.name in LOOPED else [1]
        info = train_run(
            rp, seed, run_dir, data, cfg, validation, progress, log, identity, loops=grid
        )
        trained[(i, seed, rp.name)] = info
        if info["trained_steps"]:
            spent_flops += rp.planned_flops * info["trained_steps"] / rp.steps
            spent_s += time.perf_counter() - r0
    if part is not None:
        log(
            f"shard {shard}: {len(trained)} runs trained and evaluated in {time.perf_counter() - t0:.0f}s; run "
            "again without --shard to write the report"
        )
        return None
    results = study_results(cfg, plans, trained, data, time.perf_counter() - t0)
    plot_loop_gain(
        results["rows"],
        results["trend"],
        out / "loop_gain.png",
        provenance=results["provenance"],
        equal_steps_trend=results["trend_equal_steps"],
        flop_proportional_trend=results.get("trend_flop_proportional"),
    )
    results["figures"] = ["loop_gain.png"]
    write_json(out / "results.json", results)
    (out / "summary.md").write_text(loop_scaling_markdown(results))
    return results


def study_results(
    cfg: LoopScalingConfig,
    plans: list[MatchedPlan],
    trained: dict,
    data: PreparedData,
    wall_s: float,
) -> dict:
    validation = FixedValidation.of(cfg, data)
    curve_rows, curve_frozen = validation.rows(cfg.run.train.eval_batches)
    final_rows, final_frozen = validation.rows(cfg.final_eval_batches)
    vocab = data.tokenizer.vocab_size
    h = unigram_cross_entropy(data.train, curve_rows, vocab, 1.0, data.train_frozen, curve_frozen)
    h_final = unigram_cross_entropy(
        data.train, final_rows, vocab, 1.0, data.train_frozen, final_frozen
    )
    rows = budget_rows(cfg, plans, trained, h)
    corpus, software = corpus_description(cfg.run.data), software_versions()
    fingerprint = data_fingerprint(cfg.run.data, data)
    any_final = next(iter(trained.values()))["final"][1]
    seq_len = data.val.shape[1]
    return {
        "experiment": "loop-scaling",
        "config_name": cfg.name,
        "config": asdict(cfg),
        "machine": machine_info(),
        "software": software,
        "corpus": corpus,
        "data_fingerprint": fingerprint,
        "provenance": provenance_line(corpus, fingerprint, software),
        "validation": {
            "method": EVAL_METHOD,
            "eval_seed": cfg.eval_seed,
            "batch_size": validation.batch_size,
            "seq_len": seq_len,
            "val_rows_available": int(len(data.val)),
            "curve": {
                "batches": validation.n_batches(cfg.run.train.eval_batches),
                "rows": int(len(curve_rows)),
                "tokens": int(curve_rows.size if curve_frozen is None else (~curve_frozen).sum()),
            },
            "final": {
                "batches": any_final["batches"],
                "rows": any_final["rows"],
                "tokens": any_final["tokens"],
                "requested_batches": cfg.final_eval_batches,
            },
            "description": "every curve point and final NELBO of every run on the same validation rows (a fixed "
            "random sample of the split's rows, drawn from eval_seed) with the same t and masks (batch k seeded by "
            "SeedSequence([eval_seed, k]), independent of the training seed); the curve rows are a "
            "prefix of the final rows; standard errors are between batches, paired differences "
            "use per-batch differences",
        },
        "plateau": {
            "H": h,
            "H_final_rows": h_final,
            "margin": cfg.plateau_margin,
            "definition": "H = unigram cross-entropy of the curve's validation tokens under the training "
            "tokens' frequencies (add-one smoothing); a run left the plateau at its first "
            "validation point <= H - margin",
        },
        "plans": [p.summary() for p in plans],
        "rows": rows,
        "trend": fit_trend(rows, cfg.bootstrap, cfg.bootstrap_seed, "gain_equal_flops"),
        "trend_equal_steps": fit_trend(rows, cfg.bootstrap, cfg.bootstrap_seed, "gain_equal_steps"),
        **(
            {
                "trend_flop_proportional": fit_trend(
                    rows, cfg.bootstrap, cfg.bootstrap_seed, "gain_equal_flops_flop_proportional"
                )
            }
            if cfg.flop_proportional_arm
            else {}
        ),
        # the same fit with other plateau margins: which budgets count as past the plateau decides the trend
        "trend_margin_sensitivity": margin_sensitivity(
            rows, h, SENSITIVITY_MARGINS, cfg.bootstrap, cfg.bootstrap_seed
        ),
        "trend_rule": TREND_RULE,
        "wall_s": wall_s,
    }
