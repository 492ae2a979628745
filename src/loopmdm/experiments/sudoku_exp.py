"""Sudoku as a reasoning task: MDM vs LoopMDM at equal training FLOPs, solved by iterative unmasking.

A board is 81 tokens (``loopmdm.tasks.sudoku``): the givens are the prompt, the blanks are mask tokens.
Training is conditional masked diffusion: the givens are never masked, every blank is masked with
probability t ~ U(eps, 1) (so t = 1 is the test-time start, all blanks masked), and the loss is the
cross-entropy of the masked blanks (``loss_weight="uniform"``; ``"elbo"`` adds MDLM's 1/t weight).
Digits are relabelled by a random permutation per board (a Sudoku symmetry) for augmentation.

The solver (``solve_boards``) starts from the puzzle and, over ``steps`` network calls at loop count S,
commits the argmax digit of k still-masked cells per call, chosen by an unmasking order from
``UNMASK_ORDERS`` (``random``: uniformly; ``confidence``: the cells whose top digit is most probable;
``margin``: the largest top-1 minus top-2 gap). Committed cells never change (MDLM-style).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..checkpoint import load_safetensors
from ..config import ModelConfig, apply_dict
from ..diffusion import q_sample, sample_t, subs_log_probs
from ..errors import CheckpointError, ConfigError
from ..flops import expected_train_flops_per_token, train_flops_per_token
from ..loops import FixedLoops, get_loop_distribution
from ..model import LoopMDM
from ..registry import Registry
from ..tasks import sudoku as sd
from ..train import lr_lambda
from ..config import DiffusionConfig
from .common import BalancedUniformLoops, default_loop_grid, load_experiment_config, machine_info, write_json
from .curves import fmt_spread, spread

Log = Callable[[str], None]
MODELS = ("mdm", "loopmdm")


# --------------------------------------------------------------------------- configuration

@dataclass
class SudokuExpConfig:
    """The Sudoku experiment: data (count, difficulty = number of givens), model, training at equal FLOPs,
    and the evaluation grid (loop counts S, unmasking orders)."""

    name: str = "laptop"
    n_train: int = 4000
    n_test: int = 200
    givens: list[int] = field(default_factory=lambda: [46, 54])  # difficulty: (min, max) givens, 17..80
    data_seed: int = 0
    cache_dir: Optional[str] = None  # null: ~/.cache/loopmdm/sudoku (or $LOOPMDM_CACHE/sudoku)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(
        vocab_size=sd.VOCAB.vocab_size, max_seq_len=sd.N_CELLS, d_model=128, n_heads=4, n_layers=4, n_h=1, n_m=2,
        n_o=1, time_conditioning="none", tie_embeddings=False))
    s_max: int = 4  # LoopMDM trains with S ~ U{1..S_max}; the MDM with S = 1
    baseline_steps: int = 2000  # steps of the MDM; LoopMDM gets the same training FLOPs in fewer steps
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.03
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    loss_weight: str = "uniform"  # "uniform" (mean CE over masked blanks) or "elbo" (MDLM's 1/t weight)
    augment: bool = True  # relabel digits by a random permutation per board
    t_eps: float = 1e-3
    eval_loops: Optional[list[int]] = None  # LoopMDM's S grid; null: {1, 2, 4, ..., 2 S_max}
    baseline_eval_loops: list[int] = field(default_factory=lambda: [1, 2])  # the MDM's (trained at S = 1)
    orders: list[str] = field(default_factory=lambda: ["random", "confidence"])
    decode_steps: Optional[int] = None  # network calls per puzzle; null: one cell per call
    eval_batch_size: int = 200
    seeds: list[int] = field(default_factory=lambda: [0])
    log_every: int = 100
    threads: Optional[int] = 1  # 1 is much faster than 2 on a shared, busy CPU
    expected_minutes: Optional[float] = None
    description: str = ""

    def validate(self) -> "SudokuExpConfig":
        sd.check_givens(tuple(self.givens) if isinstance(self.givens, list) else self.givens)
        self.model.validate()
        if self.model.vocab_size < sd.VOCAB.vocab_size or self.model.max_seq_len < sd.N_CELLS:
            raise ConfigError(f"model.vocab_size must be >= {sd.VOCAB.vocab_size} and model.max_seq_len >= 81 "
                              "for Sudoku boards")
        if self.model.n_m < 1 or self.s_max < 2:
            raise ConfigError("LoopMDM needs model.n_m >= 1 and s_max >= 2")
        for name in ("n_train", "n_test", "baseline_steps", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.loss_weight not in ("uniform", "elbo"):
            raise ConfigError(f"loss_weight={self.loss_weight!r} is unknown; use 'uniform' or 'elbo'")
        for o in self.orders:
            UNMASK_ORDERS.get(o)
        if not self.seeds:
            raise ConfigError("seeds is empty; pass at least one seed")
        if self.decode_steps is not None and self.decode_steps < 1:
            raise ConfigError(f"decode_steps={self.decode_steps} must be >= 1 or null")
        if any(s < 1 for s in self.loops_grid()) or not self.baseline_eval_loops or \
                any(s < 1 for s in self.baseline_eval_loops):
            raise ConfigError("every S in eval_loops / baseline_eval_loops must be >= 1 (and the MDM needs at least S=1)")
        return self

    def loops_grid(self) -> list[int]:
        return list(self.eval_loops) if self.eval_loops else default_loop_grid(self.s_max)

    def givens_range(self) -> tuple[int, int]:
        return sd.check_givens(tuple(self.givens) if isinstance(self.givens, (list, tuple)) else self.givens)


def _laptop() -> SudokuExpConfig:
    return SudokuExpConfig(
        name="laptop", expected_minutes=45.0,
        description="4-layer d=128 denoiser (0.8M parameters) on 4000 easy puzzles with 46-54 givens (27-35 "
                    "blanks); LoopMDM loops layers 1-2 with S_max=4; 2000 MDM steps of batch 32, LoopMDM ~1140 "
                    "steps at equal FLOPs; 200 test puzzles solved one cell per network call.")


def _paper() -> SudokuExpConfig:
    return SudokuExpConfig(
        name="paper", n_train=100_000, n_test=1000, givens=[22, 30],
        model=ModelConfig(vocab_size=sd.VOCAB.vocab_size, max_seq_len=sd.N_CELLS, d_model=512, n_heads=8,
                          n_layers=8, n_h=1, n_m=2, n_o=5, time_conditioning="none", tie_embeddings=False),
        s_max=12, baseline_steps=100_000, batch_size=256, lr=3e-4, seeds=[0, 1, 2], threads=None,
        description="GPU-scale: hard puzzles (22-30 givens), an 8-layer d=512 denoiser, S_max=12, 100k MDM steps.")


PRESETS = {"laptop": _laptop, "paper": _paper}


def load_sudoku_config(spec: str | Path = "laptop") -> SudokuExpConfig:
    """``laptop``, ``paper`` or a YAML file (``base: laptop`` plus overrides)."""
    return load_experiment_config(spec, PRESETS, "sudoku").validate()


# --------------------------------------------------------------------------- training

def augment_digits(boards: Sequence[torch.Tensor], gen: torch.Generator,
                   vocab: sd.SudokuVocab = sd.VOCAB) -> list[torch.Tensor]:
    """Relabel the digits of each board [B, 81] by one random permutation per row (the same for every
    tensor in ``boards``, e.g. puzzle and solution); mask / pad ids are left alone."""
    B = boards[0].shape[0]
    V = max(vocab.vocab_size, int(max(b.max() for b in boards)) + 1)
    digits = torch.tensor(vocab.digit_ids)
    perm = torch.argsort(torch.rand(B, 9, generator=gen), dim=1)  # [B, 9]
    table = torch.arange(V).repeat(B, 1)  # [B, V]
    table[:, digits] = digits[perm]
    return [torch.gather(table, 1, b) for b in boards]


def sudoku_loss(model: LoopMDM, puzzle: torch.Tensor, solution: torch.Tensor, loops: int, gen: torch.Generator,
                mask_id: int, weight: str = "uniform", t_eps: float = 1e-3) -> torch.Tensor:
    """Conditional masked-diffusion loss: givens stay, each blank of ``puzzle`` [B, 81] is masked with
    probability t; cross-entropy of the masked blanks against ``solution`` [B, 81]."""
    B = puzzle.shape[0]
    t = sample_t(B, gen, True, t_eps)  # [B]
    blank = puzzle == mask_id  # [B, 81]
    x_t = torch.where(blank, q_sample(solution, 1.0 - t, mask_id, gen), solution)  # alpha_t = 1 - t
    masked = x_t == mask_id
    logits = model(x_t, t if model.config.time_conditioning == "adaln" else None, loops=loops).float()
    logits[..., mask_id] = -math.inf  # SUBS: never predict the mask
    ce = F.cross_entropy(logits.transpose(1, 2), solution, reduction="none")  # [B, 81]
    w = (1.0 / t)[:, None] if weight == "elbo" else torch.ones(B, 1)
    return (ce * w * masked).sum() / masked.sum().clamp_min(1)


@dataclass
class SudokuRun:
    """One trained Sudoku denoiser and its training record."""

    name: str
    model: LoopMDM
    steps: int
    flops: float
    wall_s: float
    losses: list[tuple[int, float]]


def train_sudoku_model(cfg: SudokuExpConfig, name: str, train_pairs: Sequence[sd.SudokuPair], steps: int,
                       seed: int, log: Log = print) -> SudokuRun:
    """Train the MDM (``name='mdm'``, S = 1) or LoopMDM (S ~ U{1..S_max}, balanced blocks) for ``steps``
    AdamW steps with warmup + cosine; FLOPs counted with ``loopmdm.flops`` (81 tokens per board)."""
    torch.manual_seed(seed)
    model = LoopMDM(_model_cfg(cfg))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=cfg.lr, betas=(0.9, 0.98))
    warm = max(1, round(cfg.warmup_frac * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, warm, steps, cfg.min_lr_ratio))
    loops_dist = _loop_dist(cfg, name, steps)
    puzzles, solutions = sd.to_tensors(train_pairs)  # [N, 81] each
    gen = torch.Generator().manual_seed(seed + 1)
    gen_loops = torch.Generator().manual_seed(seed + 2)
    rng = np.random.default_rng(seed)
    tokens = cfg.batch_size * sd.N_CELLS
    flops, losses, t0, run_loss = 0.0, [], time.perf_counter(), 0.0
    model.train()
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, len(puzzles), cfg.batch_size))
        p, s = puzzles[idx], solutions[idx]
        if cfg.augment:
            p, s = augment_digits([p, s], gen)
        loops = loops_dist.sample(gen_loops)
        loss = sudoku_loss(model, p, s, loops, gen, sd.VOCAB.mask_id, cfg.loss_weight, cfg.t_eps)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        flops += train_flops_per_token(model.config, loops) * tokens
        run_loss += float(loss.detach())
        if step % cfg.log_every == 0 or step == steps:
            n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            losses.append((step, run_loss / n))
            log(f"  {name} step {step}/{steps}: loss {run_loss / n:.4f}, FLOPs {flops:.3e}, "
                f"{time.perf_counter() - t0:.0f}s")
            run_loss = 0.0
    return SudokuRun(name, model.eval(), steps, flops, time.perf_counter() - t0, losses)


def _model_cfg(cfg: SudokuExpConfig) -> ModelConfig:
    from .common import clone

    m = clone(cfg.model)
    m.vocab_size = max(m.vocab_size, sd.VOCAB.vocab_size)
    return m


def _loop_dist(cfg: SudokuExpConfig, name: str, steps: int):
    if name == "mdm":
        return FixedLoops(DiffusionConfig(loop_dist="fixed", s_fixed=1))
    return BalancedUniformLoops(DiffusionConfig(loop_dist="uniform", s_max=cfg.s_max), total_steps=steps)


def planned_steps(cfg: SudokuExpConfig) -> dict[str, int]:
    """Steps of each model at equal training FLOPs: the MDM runs ``baseline_steps``, LoopMDM
    baseline_steps * F_train(S=1) / E_S[F_train(S)]."""
    m = _model_cfg(cfg)
    f_a = train_flops_per_token(m, 1, sd.N_CELLS)
    f_b = expected_train_flops_per_token(m, get_loop_distribution(DiffusionConfig(s_max=cfg.s_max)), sd.N_CELLS)
    return {"mdm": cfg.baseline_steps, "loopmdm": max(1, round(cfg.baseline_steps * f_a / f_b))}


# --------------------------------------------------------------------------- solving

UNMASK_ORDERS: Registry[Callable] = Registry("unmasking order")


@UNMASK_ORDERS.register("random")
def _random_scores(logp: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Uniformly random priority per cell."""
    return torch.rand(logp.shape[:2], generator=gen)


@UNMASK_ORDERS.register("confidence")
def _confidence_scores(logp: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The probability of each cell's most likely digit (confidence-first decoding)."""
    return logp.max(dim=-1).values


@UNMASK_ORDERS.register("margin")
def _margin_scores(logp: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Top-1 minus top-2 probability of each cell."""
    top = logp.exp().topk(2, dim=-1).values  # [B, 81, 2]
    return top[..., 0] - top[..., 1]


@torch.no_grad()
def solve_boards(model: LoopMDM, puzzles: torch.Tensor, loops: int, order: str = "confidence",
                 steps: Optional[int] = None, seed: int = 0, vocab: sd.SudokuVocab = sd.VOCAB,
                 batch_size: int = 256) -> torch.Tensor:
    """Fill the masked cells of ``puzzles`` [N, 81] (givens = digit ids, blanks = ``vocab.mask_id``).

    Each of ``steps`` network calls (default: as many as the most blanks of any board, i.e. one cell per
    call) runs the model at loop count S = ``loops`` and commits the argmax digit of
    ceil(masked / calls left) cells of every board, picked by ``order``. The diffusion time given to a
    time-conditioned model is the masked fraction of each board's blanks. Returns token ids [N, 81]."""
    score_fn = UNMASK_ORDERS.get(order)
    if loops < 1:
        raise ConfigError(f"loops={loops} must be >= 1")
    out = []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(puzzles), batch_size):
        out.append(_solve_batch(model, puzzles[start:start + batch_size].clone(), loops, score_fn, steps, gen, vocab))
    return torch.cat(out) if out else puzzles.clone()


def _solve_batch(model, x: torch.Tensor, loops: int, score_fn, steps: Optional[int], gen: torch.Generator,
                 vocab: sd.SudokuVocab) -> torch.Tensor:
    device = next(model.parameters()).device
    x = x.to(device)
    mask_id = vocab.mask_id
    n_blank = (x == mask_id).sum(1).clamp_min(1).float()  # [B]
    total = int((x == mask_id).sum(1).max())
    calls = total if steps is None else min(steps, max(total, 1))
    not_digit = torch.ones(model.config.vocab_size, dtype=torch.bool, device=device)
    not_digit[list(vocab.digit_ids)] = False
    timed = model.config.time_conditioning == "adaln"
    for i in range(calls):
        masked = x == mask_id  # [B, 81]
        if not masked.any():
            break
        t = masked.sum(1).float() / n_blank if timed else None  # [B]
        logp = subs_log_probs(model(x, t, loops=loops), x, mask_id)  # [B, 81, V]
        logp = logp.masked_fill(not_digit, -math.inf)
        logp = logp.masked_fill(~masked[..., None], 0.0)  # committed cells: any finite value, never chosen
        pred = logp.argmax(-1)  # [B, 81]
        scores = score_fn(logp, gen).to(device).masked_fill(~masked, -math.inf)  # [B, 81]
        k = torch.ceil(masked.sum(1).float() / (calls - i)).long()  # [B] cells to commit this call
        rank = scores.argsort(dim=1, descending=True).argsort(dim=1)  # [B, 81] position in priority order
        commit = masked & (rank < k[:, None])
        x = torch.where(commit, pred, x)
    return x.cpu()


def score_solutions(pred: torch.Tensor, pairs: Sequence[sd.SudokuPair], vocab: sd.SudokuVocab = sd.VOCAB) -> dict:
    """Board accuracy (all 81 cells right), cell accuracy over blanks and over all cells, and the share of
    boards that are valid Sudoku grids, for predictions [N, 81]."""
    grids = [sd.decode(row, vocab) for row in pred.tolist()]
    sols = [p.solution for p in pairs]
    cells = sd.cell_accuracy(grids, sols, [p.puzzle for p in pairs])
    return {"board_accuracy": sd.board_accuracy(grids, sols), "cell_accuracy": cells.blank_cells,
            "cell_accuracy_all": cells.all_cells,
            "valid_grids": sum(sd.is_valid_solution(g) for g in grids) / len(grids)}


# --------------------------------------------------------------------------- the experiment

def sudoku_data(cfg: SudokuExpConfig, log: Log = print) -> tuple[list[sd.SudokuPair], list[sd.SudokuPair]]:
    """The built-in train / test puzzles (generated once, cached as JSONL; disjoint by solution)."""
    import os

    cache = Path(cfg.cache_dir or Path(os.environ.get("LOOPMDM_CACHE", Path.home() / ".cache" / "loopmdm")) / "sudoku")
    lo, hi = cfg.givens_range()
    t0 = time.perf_counter()
    train, test = sd.load_or_generate(cache, cfg.n_train, cfg.n_test, (lo, hi), cfg.data_seed)
    log(f"sudoku data: {len(train)} train / {len(test)} test puzzles with {lo}-{hi} givens "
        f"({time.perf_counter() - t0:.0f}s, cache {cache})")
    return train, test


def evaluate_sudoku(model: LoopMDM, test: Sequence[sd.SudokuPair], loops_grid: Sequence[int],
                    orders: Sequence[str], cfg: SudokuExpConfig, seed: int) -> dict:
    """``{order: {S: scores}}`` on the test puzzles."""
    puzzles, _ = sd.to_tensors(test)
    out: dict = {}
    for order in orders:
        out[order] = {}
        for s in loops_grid:
            pred = solve_boards(model, puzzles, s, order, cfg.decode_steps, seed, batch_size=cfg.eval_batch_size)
            out[order][s] = score_solutions(pred, test)
    return out


def save_sudoku_model(model: LoopMDM, folder: str | Path, extra: Optional[dict] = None) -> Path:
    """``model.safetensors`` + ``config.json`` (the ModelConfig and the Sudoku vocabulary)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"))
    meta = {"task": "sudoku", "model": asdict(model.config), "vocab": asdict(sd.VOCAB), **(extra or {})}
    (folder / "config.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_sudoku_model(folder: str | Path) -> LoopMDM:
    """Load a model written by ``save_sudoku_model`` (safetensors only)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{str(folder)!r} holds no Sudoku model (config.json + model.safetensors); "
                              "run `loopmdm experiment sudoku` first")
    meta = json.loads((folder / "config.json").read_text())
    if meta.get("task") != "sudoku":
        raise CheckpointError(f"{folder}/config.json is not a Sudoku model's config")
    cfg = ModelConfig()
    apply_dict(cfg, meta["model"])
    model = LoopMDM(cfg)
    state = load_safetensors(folder / "model.safetensors")
    if cfg.tie_embeddings:
        state.setdefault("lm_head.weight", state["embed.weight"])
    model.load_state_dict(state)
    return model.eval()


def run_sudoku(cfg: SudokuExpConfig, out: str | Path, seeds: Optional[list[int]] = None, log: Log = print) -> dict:
    """Train MDM and LoopMDM at equal training FLOPs for every seed, solve the test split at every S and
    unmasking order, write results.json, accuracy plots and summary.md."""
    from .plots import plot_sudoku_accuracy

    cfg.validate()
    out = Path(out)
    seeds = list(seeds if seeds is not None else cfg.seeds)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train, test = sudoku_data(cfg, log)
    steps = planned_steps(cfg)
    grid = cfg.loops_grid()
    log(f"equal training FLOPs: MDM {steps['mdm']} steps, LoopMDM {steps['loopmdm']} steps (S ~ U{{1..{cfg.s_max}}})")
    per_seed: dict = {}
    t_start = time.perf_counter()
    for seed in seeds:
        per_seed[seed] = {}
        for name in MODELS:
            run = train_sudoku_model(cfg, name, train, steps[name], seed, log)
            save_sudoku_model(run.model, out / f"seed_{seed}" / name, {
                "steps": run.steps, "flops": run.flops, "s_max": cfg.s_max if name == "loopmdm" else 1,
                "experiment": {k: getattr(cfg, k) for k in ("n_train", "n_test", "givens", "data_seed", "cache_dir")}})
            t0 = time.perf_counter()
            evals = evaluate_sudoku(run.model, test, grid if name == "loopmdm" else _mdm_grid(cfg), cfg.orders, cfg, seed)
            per_seed[seed][name] = {"steps": run.steps, "flops": run.flops, "train_wall_s": run.wall_s,
                                    "eval_wall_s": time.perf_counter() - t0, "losses": run.losses, "eval": evals}
            for order in cfg.orders:
                log(f"  {name} seed {seed} {order}: board / cell acc " + ", ".join(
                    f"S={s}: {v['board_accuracy']:.3f} / {v['cell_accuracy']:.3f}" for s, v in evals[order].items()))
            write_json(out / "results.json", {"per_seed": per_seed})
    table = {name: {order: {s: {m: spread([per_seed[k][name]["eval"][order][s][m] for k in seeds])
                                    for m in ("board_accuracy", "cell_accuracy", "cell_accuracy_all", "valid_grids")}
                            for s in (grid if name == "loopmdm" else _mdm_grid(cfg))}
                    for order in cfg.orders} for name in MODELS}
    results = {"experiment": "sudoku", "config_name": cfg.name, "config": asdict(cfg), "machine": machine_info(),
               "steps": steps, "loops_grid": grid, "seeds": seeds, "wall_s": time.perf_counter() - t_start,
               "per_seed": per_seed, "summary": table, "checks": _checks(table, cfg)}
    for metric in ("board_accuracy", "cell_accuracy"):
        plot_sudoku_accuracy({n: {o: {s: v[metric] for s, v in bo.items()} for o, bo in by.items()}
                              for n, by in table.items()}, out / f"sudoku_{metric}.png", metric)
    results["figures"] = ["sudoku_board_accuracy.png", "sudoku_cell_accuracy.png"]
    write_json(out / "results.json", results)
    (out / "summary.md").write_text(sudoku_markdown(results))
    return results


def _mdm_grid(cfg: SudokuExpConfig) -> list[int]:
    return sorted(set(cfg.baseline_eval_loops) | {1})


def _checks(table: dict, cfg: SudokuExpConfig) -> dict:
    """The issue's targets, per order: LoopMDM's board accuracy at S_max above the MDM's (at S = 1), and rising
    with S (strictly higher at S_max than at S = 1; non-decreasing in between). All-zero accuracies are flagged:
    they make the comparisons vacuous."""
    out = {}
    for order in cfg.orders:
        loop = table["loopmdm"][order]
        base = table["mdm"][order][1]["board_accuracy"]["mean"]
        at = {s: loop[s]["board_accuracy"]["mean"] for s in loop}
        up_to = [at[s] for s in sorted(at) if s <= cfg.s_max]
        out[order] = {"loopmdm_smax_above_mdm": at.get(cfg.s_max, float("nan")) > base,
                      "rises_from_S1_to_smax": at.get(cfg.s_max, float("nan")) > at.get(1, float("nan")),
                      "non_decreasing_in_S_up_to_smax": all(b >= a for a, b in zip(up_to, up_to[1:])),
                      "all_board_accuracies_zero": base == 0 and all(v == 0 for v in at.values())}
    return out


def sudoku_markdown(results: dict) -> str:
    grid = results["loops_grid"]
    lines = ["| model | order | metric | " + " | ".join(f"S={s}" for s in grid) + " |",
             "|---|---|---|" + "---|" * len(grid)]
    for name, by_order in results["summary"].items():
        for order, by_s in by_order.items():
            for metric in ("board_accuracy", "cell_accuracy"):
                lines.append(f"| {name} | {order} | {metric.replace('_', ' ')} | "
                             + " | ".join(fmt_spread(by_s[s][metric]) if s in by_s else "-" for s in grid) + " |")
    st = results["steps"]
    lines += ["", f"- training steps at equal FLOPs: MDM {st['mdm']}, LoopMDM {st['loopmdm']}; seeds {results['seeds']}",
              f"- checks: {json.dumps(results['checks'])}",
              f"- wall time {results['wall_s'] / 60:.1f} min"]
    return "\n".join(lines) + "\n"
