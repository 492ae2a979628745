"""Sudoku as a reasoning task: MDM, LoopMDM and the deeper MDM at equal training FLOPs, solved over a grid of
(T denoising steps) x (S loops) x (unmasking order).

Everything trains through the library's one training path: the ``sudoku`` data format (boards with frozen
givens, symmetries per batch), the MDM objective conditional on the givens, the shared Trainer (checkpoints,
resume, EMA, bf16, DDP). The plan is the compute-matched one (``plan_compute_matched``): (a) the same-size MDM
gets ``baseline_steps`` steps, (b) LoopMDM (S ~ U{1..S_max}, balanced) and (c) a deeper non-looped MDM of (b)'s
expected per-step FLOPs get fewer steps for the same total FLOPs. The test boards are solved with
``loopmdm.eval.sudoku`` (the library's confidence sampler); the board accuracy is plotted as a T x S heatmap and
against inference FLOPs per board.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ..config import RunConfig, preset
from ..data import prepare_data
from ..data.sudoku import GENERATE, generated_splits, read_puzzles
from ..diffusion import get_schedule
from ..errors import ConfigError
from ..eval.sudoku import sudoku_grid
from ..fileio import write_json
from ..model.fields import check_int, check_int_list
from ..runtime import machine_info, set_threads
from ..sampling import ORDERS
from ..viz.experiment_plots import plot_sudoku_heatmap, plot_sudoku_vs_flops
from .common import default_loop_grid, load_experiment_config, pool_over_seeds, read_scores
from .compute_matched import RUN_NAMES, plan_compute_matched, train_one
from .curves import spread

Log = Callable[[str], None]


@dataclass
class SudokuExpConfig:
    """The Sudoku experiment. ``run`` is LoopMDM's configuration (model, S_max, data, optimisation); the MDM and
    the deeper MDM are derived from it as in the compute-matched comparison."""

    name: str = "laptop"
    run: RunConfig = field(default_factory=lambda: preset("sudoku"))
    baseline_steps: int = 5000  # steps of the same-size MDM; the budget of every model
    seeds: list[int] = field(default_factory=lambda: [0])
    models: list[str] = field(default_factory=lambda: list(RUN_NAMES))
    warmup_frac: float = 0.03
    n_evals: int = 8  # validation points per run
    balanced_loops: bool = True
    depth_tolerance: float = 0.05
    flops_tolerance: float = 0.02
    orders: list[str] = field(default_factory=lambda: ["margin"])
    steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 0])  # T; 0 = one cell per step
    loops: Optional[list[int]] = None  # LoopMDM's S grid; null: {1, 2, 4, .., 2 S_max}
    baseline_loops: list[int] = field(default_factory=lambda: [1])  # S of the non-looped models
    test_boards: int = 200
    # puzzles to test on (CSV / JSONL / hf:); null: the generator's test split
    test_file: Optional[str] = None
    eval_batch_size: int = 256
    expected_minutes: Optional[float] = None
    description: str = ""

    def validate(self) -> "SudokuExpConfig":
        self.run.validate()
        if self.run.data.format != "sudoku":
            raise ConfigError(
                f"run.data.format={self.run.data.format!r}; the Sudoku experiment needs 'sudoku'"
            )
        if (
            self.run.model.n_m < 1
            or self.run.diffusion.s_max < 2
            or self.run.diffusion.loop_dist != "uniform"
        ):
            raise ConfigError(
                "run must be a LoopMDM: model.n_m >= 1, diffusion.loop_dist=uniform, s_max >= 2"
            )
        check_int(self.baseline_steps, "baseline_steps")
        check_int(self.test_boards, "test_boards")
        check_int_list(self.seeds, "seeds", 0)
        check_int_list(self.steps, "steps", 0)
        check_int_list(self.loops_grid(), "loops")
        check_int_list(self.baseline_loops, "baseline_loops")
        for o in self.orders:
            ORDERS.get(o)
        unknown = [m for m in self.models if m not in RUN_NAMES]
        if unknown or not self.models:
            raise ConfigError(
                f"models={self.models} must be a non-empty subset of {', '.join(RUN_NAMES)}"
            )
        return self

    def loops_grid(self) -> list[int]:
        return list(self.loops) if self.loops else default_loop_grid(self.run.diffusion.s_max)


def _laptop() -> SudokuExpConfig:
    cfg = SudokuExpConfig(
        name="laptop",
        expected_minutes=60.0,
        description="4-layer d=128 denoiser with learned positions on 10k generated puzzles with 30-42 givens, "
        "every symmetry as augmentation; LoopMDM loops layers 1-2 with S_max=4 (the deeper MDM has 7 "
        "layers); the MDM gets 5000 steps of batch 32, LoopMDM and the deeper MDM the same training "
        "FLOPs; 200 test boards solved with top-margin order at T in {1, 2, 4, 8, one cell per step}. "
        "Two one-thread processes: --models mdm,deeper and --models loopmdm, then one call for the "
        "report.",
    )
    cfg.run.train.threads = 1
    return cfg


def _gpu() -> SudokuExpConfig:
    cfg = SudokuExpConfig(
        name="gpu",
        baseline_steps=12000,
        expected_minutes=8.0,
        test_boards=1000,
        description="The laptop model at 6x the width budget on one H100-class GPU: d=256, "
        "8 heads, batch 256, 12k MDM steps, bf16.",
    )
    r = cfg.run
    r.model.d_model, r.model.n_heads = 256, 8
    r.data.sudoku.n_train, r.data.sudoku.n_test = 50000, 1000
    r.train.batch_size, r.train.lr, r.train.precision, r.train.device = 256, 1e-3, "bf16", "auto"
    r.train.eval_every, r.train.save_every = 2000, 4000
    return cfg


PRESETS = {"laptop": _laptop, "gpu": _gpu}


def load_sudoku_config(spec: str | Path = "laptop") -> SudokuExpConfig:
    """``laptop``, ``gpu`` or a YAML file (``base: laptop`` plus overrides)."""
    return load_experiment_config(spec, PRESETS, "sudoku").validate()


def test_pairs(cfg: SudokuExpConfig, log: Log = print) -> list:
    """The boards to test on: ``test_file`` when set, else the generator's test split (disjoint from training)."""
    if cfg.test_file:
        report = read_puzzles(cfg.test_file)
        if report.bad:
            log(f"test puzzles {cfg.test_file}: {report.summary()}")
        return report.pairs[: cfg.test_boards]
    if cfg.run.data.source != GENERATE:
        raise ConfigError(
            "run.data.source is a puzzle file: set test_file to the puzzles to test on"
        )
    return generated_splits(cfg.run.data, log).test[: cfg.test_boards]


def run_sudoku(
    cfg: SudokuExpConfig,
    out: str | Path,
    seeds: Optional[list[int]] = None,
    progress: bool = False,
    log: Log = print,
    models: Optional[list[str]] = None,
) -> Optional[dict]:
    """Train the models at equal FLOPs for every seed (reusing / resuming finished runs with the same config),
    solve the test boards over orders x T x S (the scores are kept in each run folder and reused while the
    evaluation settings are the same), write results.json, summary.md and the figures. ``models``: train and
    score only these (one process per core); the report is written by a call for all of them."""
    cfg.validate()
    out = Path(out)
    seeds = list(seeds if seeds is not None else cfg.seeds)
    subset = list(models or cfg.models)
    if not set(subset) <= set(cfg.models):
        raise ConfigError(
            f"--models {','.join(subset)}: choose among the config's models {', '.join(cfg.models)}"
        )
    set_threads(cfg.run.train.threads)
    data = prepare_data(cfg.run.data, cfg.run.model.vocab_size, cfg.run.model.max_seq_len, log=log)
    cfg.run.model.vocab_size = data.tokenizer.vocab_size
    pairs = test_pairs(cfg, log)
    plan = plan_compute_matched(cfg, free_fraction=data.free_fraction)
    schedule = get_schedule(cfg.run.diffusion.schedule)
    t_start = time.perf_counter()
    per_seed: dict = {}
    for seed in seeds:
        per_seed[seed] = {}
        for rp in (r for r in plan.runs if r.name in subset):
            log(f"seed {seed}: {rp.label}, {rp.steps} steps")
            run_dir = out / f"seed_{seed}" / rp.name
            model, info = train_one(rp, seed, run_dir, data, cfg, progress, log)
            grid = cfg.loops_grid() if rp.name == "loopmdm" else cfg.baseline_loops
            key = {
                "orders": cfg.orders,
                "steps": cfg.steps,
                "loops": grid,
                "boards": len(pairs),
                "test_file": cfg.test_file,
                "seed": seed,
            }
            cached = read_scores(run_dir / "sudoku_scores.json", key)
            if cached is None:
                t0 = time.perf_counter()
                scores = sudoku_grid(
                    model,
                    data.tokenizer,
                    pairs,
                    orders=cfg.orders,
                    steps=cfg.steps,
                    loops=grid,
                    schedule=schedule,
                    seed=seed,
                    batch_size=cfg.eval_batch_size,
                    log=log,
                )
                cached = {
                    "key": key,
                    "eval_wall_s": time.perf_counter() - t0,
                    "scores": [s.to_dict() for s in scores],
                }
                write_json(run_dir / "sudoku_scores.json", cached)
            info.update(eval_wall_s=cached["eval_wall_s"], scores=cached["scores"])
            per_seed[seed][rp.name] = info
    if set(subset) != set(cfg.models):
        log(f"trained and scored {', '.join(subset)}; run again without --models for the report")
        return None
    results = {
        "experiment": "sudoku",
        "config_name": cfg.name,
        "config": asdict(cfg),
        "machine": machine_info(),
        "plan": plan.summary(),
        "seeds": seeds,
        "boards": len(pairs),
        "data_free_fraction": data.free_fraction,
        "wall_s": time.perf_counter() - t_start,
        "per_seed": per_seed,
        "summary": summarise(per_seed, seeds),
    }
    results["checks"] = checks(results["summary"], cfg)
    figures = []
    for order in cfg.orders:
        name = f"sudoku_heatmap_{order}.png"
        plot_sudoku_heatmap(results["summary"], order, out / name)
        figures.append(name)
    plot_sudoku_vs_flops(results["summary"], out / "sudoku_vs_flops.png")
    results["figures"] = figures + ["sudoku_vs_flops.png"]
    write_json(out / "results.json", results)
    (out / "summary.md").write_text(sudoku_markdown(results))
    return results


def summarise(per_seed: dict, seeds: list[int]) -> dict:
    """``{model: {"order|T|S": {board_accuracy, cell_accuracy, valid_grids, flops_per_board: spread over seeds}}}``."""
    return {
        model: {
            key: {
                m: spread([s[m] for s in rows])
                for m in ("board_accuracy", "cell_accuracy", "valid_grids", "flops_per_board")
            }
            for key, rows in cells.items()
        }
        for model, cells in pool_over_seeds(per_seed, seeds, ("order", "steps", "loops")).items()
    }


def _mean(summary: dict, model: str, order: str, T: int, S: int) -> Optional[float]:
    cell = summary.get(model, {}).get(f"{order}|{T}|{S}")
    return None if cell is None else cell["board_accuracy"]["mean"]


def checks(summary: dict, cfg: SudokuExpConfig) -> dict:
    """The issue's targets, per order and T <= 4: LoopMDM at S_max solves at least twice the MDM's boards; its
    accuracy rises from S = 1 to S_max and does not fall at 2 S_max."""
    s_max = cfg.run.diffusion.s_max
    out = {}
    for order in cfg.orders:
        for T in (t for t in cfg.steps if 0 < t <= 4):
            loop = {S: _mean(summary, "loopmdm", order, T, S) for S in (1, s_max, 2 * s_max)}
            base = _mean(summary, "mdm", order, T, 1)
            if None in loop.values() or base is None:
                continue
            out[f"{order}|T={T}"] = {
                "loopmdm_smax_at_least_2x_mdm": loop[s_max] >= 2 * base and loop[s_max] > 0,
                "rises_from_S1_to_smax": loop[s_max] > loop[1],
                "no_fall_at_2smax": loop[2 * s_max] >= loop[s_max],
            }
    return out


def sudoku_markdown(results: dict) -> str:
    """Board accuracy tables (one per order: rows = model and S, columns = T) and the run facts."""
    summary, cfg = results["summary"], results["config"]
    steps = cfg["steps"]
    head = "| model | S | " + " | ".join(f"T={t}" if t else "one cell/step" for t in steps) + " |"
    lines = []
    for order in cfg["orders"]:
        lines += [
            f"**order: {order}** (board accuracy, mean over seeds; {results['boards']} boards)",
            "",
            head,
            "|---|---|" + "---|" * len(steps),
        ]
        for model, cells in summary.items():
            for S in sorted({int(k.split("|")[2]) for k in cells}):
                vals = [cells.get(f"{order}|{t}|{S}") for t in steps]
                lines.append(
                    f"| {model} | {S} | "
                    + " | ".join(
                        "-" if v is None else f"{v['board_accuracy']['mean']:.3f}" for v in vals
                    )
                    + " |"
                )
        lines.append("")
    plan = results["plan"]
    lines += [
        "- steps at equal training FLOPs: "
        + ", ".join(f"{r['name']} {r['steps']}" for r in plan["runs"]),
        f"- checks: {json.dumps(results['checks'])}",
        f"- wall time {results['wall_s'] / 60:.1f} min",
    ]
    return "\n".join(lines) + "\n"
