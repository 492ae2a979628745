"""The Sudoku metric (``loopmdm.eval.sudoku``), conditional training on the givens, ``loopmdm eval --metric sudoku``
/ ``loopmdm train --preset sudoku``, and the Sudoku experiment (``loopmdm.experiments.sudoku``) end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from helpers import run_cli, two_solution_pair
from loopmdm.cli import main
from loopmdm.config import DiffusionConfig
from loopmdm.data import train_bpe
from loopmdm.data.sudoku import (
    MASK_ID,
    SudokuPair,
    count_solutions,
    decode_grid,
    encode_grids,
    generate_puzzles,
    matches_puzzle,
    normalize_grid,
    pairs_to_arrays,
    solve,
    sudoku_tokenizer,
    write_jsonl,
)
from loopmdm.diffusion import (
    Batch,
    MaskedDiffusion,
    Noise,
    get_schedule,
    make_objective,
    predicted_fraction,
    q_sample,
)
from loopmdm.diffusion import objectives as objectives_module
from loopmdm.errors import ConfigError
from loopmdm.eval import sudoku as E
from loopmdm.experiments import sudoku as X
from loopmdm.model import LoopMDM, ModelConfig
from loopmdm.model.flops import train_flops_per_token
from loopmdm.sampling import transfer_counts


def cli(capsys, *args):
    return run_cli(args, capsys)


ESCARGOT = SudokuPair(
    normalize_grid(
        "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3.."
    ),
    "162857493534129678789643521475312986913586742628794135356478219241935867897261354",
)
SCHEDULE = get_schedule("loglinear")
TOK = sudoku_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    return generate_puzzles(4, (34, 40), seed=11)


def one_line_error(err: str) -> str:
    """The single ``error:`` line a failing command ends with (info lines may precede it)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    return lines[-1]


# --------------------------------------------------------------------------- oracle models


class Oracle(LoopMDM):
    """A tiny LoopMDM whose logits peak at the unique solution of the canvas it is shown (the exact solver
    completes the givens and the cells committed so far); the peak grows with the cell index, so later cells
    are the more confident. ``wrong_digit`` set: every cell predicts that digit (it only copies the givens).
    Records every network call: the canvas and the mid-block iterations it ran."""

    def __init__(self, wrong_digit: int | None = None):
        super().__init__(
            ModelConfig(
                vocab_size=11,
                max_seq_len=81,
                d_model=8,
                n_heads=2,
                n_layers=1,
                n_h=0,
                n_m=1,
                n_o=0,
                cond_dim=8,
                time_conditioning="none",
            )
        )
        self.wrong_digit = wrong_digit
        self.calls: list[list] = []  # [canvas [B, 81], loop iterations]

    def prelude(self, x_t, t=None, attention_mask=None):
        self.calls.append([x_t.clone(), 0])
        return super().prelude(x_t, t, attention_mask)

    def loop_step(self, h, ctx, k, cache=None):
        self.calls[-1][1] += 1
        return super().loop_step(h, ctx, k, cache=cache)

    def coda(self, h, ctx):
        x = self.calls[-1][0]
        B, L = x.shape
        if self.wrong_digit is not None:
            target = torch.full_like(x, self.wrong_digit)
        else:
            target = torch.from_numpy(
                encode_grids([solve(decode_grid(row)) for row in x.tolist()]).astype(np.int64)
            )
        strength = 1.0 + torch.arange(L, dtype=torch.float32) / 10.0  # [81]
        logits = torch.zeros(B, L, self.config.vocab_size)
        logits.scatter_(-1, target[..., None], strength[None, :, None].expand(B, L, 1))
        return logits


def solve_with(model, pairs, steps=0, loops=1, order="margin", seed=0):
    return E.solve_boards(
        model,
        pairs,
        mask_id=MASK_ID,
        loops=loops,
        steps=steps,
        order=order,
        schedule=SCHEDULE,
        seed=seed,
    )


def blanks(pair: SudokuPair) -> int:
    return pair.puzzle.count("0")


# --------------------------------------------------------------------------- the metric


@pytest.mark.parametrize("order", ["margin", "probability", "entropy", "random"])
def test_oracle_scores_board_accuracy_one(order, pairs):
    boards = pairs + [ESCARGOT]
    oracle = Oracle()
    scores = E.sudoku_grid(
        oracle, TOK, boards, orders=[order], steps=[0, 4], loops=[3], schedule=SCHEDULE
    )
    assert [(s.order, s.steps, s.loops) for s in scores] == [(order, 0, 3), (order, 4, 3)]
    for s in scores:
        assert s.boards == s.solved == len(boards)
        assert s.board_accuracy == s.cell_accuracy == s.valid_grids == 1.0
    assert scores[0].steps_run == max(blanks(p) for p in boards) and scores[1].steps_run == 4
    assert all(k == 3 for _, k in oracle.calls)  # S = 3 mid-block iterations at every call


def test_t0_commits_one_cell_per_step():
    oracle = Oracle()
    grids, flops, wall, steps_run = solve_with(oracle, [ESCARGOT], steps=0, loops=2)
    n = blanks(ESCARGOT)
    assert grids == [ESCARGOT.solution] and steps_run == n and len(oracle.calls) == n
    masked = [int((x == MASK_ID).sum()) for x, _ in oracle.calls]
    assert masked == list(range(n, 0, -1))  # exactly one cell committed per network call
    assert flops > 0 and wall >= 0


def test_t_below_the_blanks_commits_several_cells_per_step(pairs):
    pair = pairs[0]
    n, T = blanks(pair), 5
    oracle = Oracle()
    grids, _, _, steps_run = solve_with(oracle, [pair], steps=T)
    assert steps_run == T and len(oracle.calls) == T and grids == [pair.solution]
    masked = [int((x == MASK_ID).sum()) for x, _ in oracle.calls] + [0]
    per_step = [a - b for a, b in zip(masked, masked[1:])]
    assert per_step == transfer_counts(torch.tensor([n]), T, SCHEDULE)[0].tolist()
    assert sum(per_step) == n and max(per_step) > 1
    one_shot = Oracle()
    assert solve_with(one_shot, [pair], steps=1)[0] == [pair.solution] and len(one_shot.calls) == 1


@pytest.mark.parametrize("order", ["probability", "margin"])
def test_confidence_order_commits_the_most_confident_cells_first(order):
    oracle = Oracle()
    T = 5
    solve_with(oracle, [ESCARGOT], steps=T, order=order)
    # committed by the first call
    first = (oracle.calls[1][0][0] != oracle.calls[0][0][0]).nonzero().flatten()
    blank_cells = (oracle.calls[0][0][0] == MASK_ID).nonzero().flatten()
    k = int(transfer_counts(torch.tensor([len(blank_cells)]), T, SCHEDULE)[0, 0])
    assert k > 1 and first.tolist() == blank_cells[-k:].tolist()  # highest indices = most confident


def test_a_model_that_only_copies_givens_solves_nothing(pairs):
    model = Oracle(wrong_digit=1)
    (score,) = E.sudoku_grid(
        model, TOK, pairs, orders=["margin"], steps=[0], loops=[1], schedule=SCHEDULE
    )
    assert score.solved == 0 and score.board_accuracy == 0.0 and score.valid_grids == 0.0
    ones = sum(s == "1" for p in pairs for c, s in zip(p.puzzle, p.solution) if c == "0")
    # right only where 1 is
    assert score.cell_accuracy == pytest.approx(ones / sum(blanks(p) for p in pairs))
    grids = solve_with(Oracle(wrong_digit=1), pairs)[0]
    for g, p in zip(grids, pairs):
        assert matches_puzzle(p.puzzle, g) and set(
            g[i] for i, c in enumerate(p.puzzle) if c == "0"
        ) == {"1"}


def test_a_different_valid_completion_of_a_two_solution_puzzle_counts_as_solved(pairs):
    """The stored solution of a two-solution puzzle is the one the oracle does not find: its (valid, givens kept)
    board still counts as solved, cell accuracy is against the stored solution, and the evaluation reports one
    puzzle with more than one solution."""
    puzzle, other = two_solution_pair(ESCARGOT.solution)
    assert count_solutions(puzzle, limit=3) == 2 and solve(puzzle) == ESCARGOT.solution != other
    boards = [SudokuPair(puzzle, other)] + pairs
    logs = []
    (score,) = E.sudoku_grid(
        Oracle(),
        TOK,
        boards,
        orders=["margin"],
        steps=[0],
        loops=[1],
        schedule=SCHEDULE,
        log=logs.append,
    )
    assert (
        score.solved == score.boards == len(boards)
        and score.board_accuracy == score.valid_grids == 1.0
    )
    assert score.multi_solution_puzzles == 1 and score.to_dict()["multi_solution_puzzles"] == 1
    # 4 cells differ
    assert score.cell_accuracy == pytest.approx(1 - 4 / sum(blanks(p) for p in boards))
    assert any(line.startswith("1 of 5 puzzles have more than one solution") for line in logs), logs
    assert E.multi_solution_puzzles(pairs) == 0


def test_records_have_the_declared_fields(pairs):
    oracle = Oracle()
    scores = E.sudoku_grid(
        oracle,
        TOK,
        pairs[:2],
        orders=["margin", "random"],
        steps=[1, 0],
        loops=[1, 2],
        schedule=SCHEDULE,
        batch_size=1,
    )
    assert [(s.order, s.steps, s.loops) for s in scores] == [
        (o, T, S) for o in ("margin", "random") for T in (1, 0) for S in (1, 2)
    ]
    declared = {
        "order",
        "steps",
        "loops",
        "boards",
        "solved",
        "board_accuracy",
        "board_accuracy_ci",
        "cell_accuracy",
        "valid_grids",
        "valid_grids_ci",
        "flops_per_board",
        "steps_run",
        "wall_time_s",
        "multi_solution_puzzles",
    }
    assert {f.name for f in dataclasses.fields(E.SudokuScore)} == declared
    for s in scores:
        d = s.to_dict()
        assert set(d) == declared and json.loads(json.dumps(d))["order"] == s.order
        assert (
            d["boards"] == 2
            and d["board_accuracy"] == d["solved"] / 2
            and d["multi_solution_puzzles"] == 0
        )
        lo, hi = d["board_accuracy_ci"]
        assert (
            lo <= d["board_accuracy"] <= hi and d["flops_per_board"] > 0 and d["wall_time_s"] >= 0
        )
    by = {(s.order, s.steps, s.loops): s for s in scores}
    # S costs compute
    assert by["margin", 1, 2].flops_per_board > by["margin", 1, 1].flops_per_board
    assert by["margin", 0, 1].flops_per_board > by["margin", 1, 1].flops_per_board  # so do steps
    assert by["margin", 1, 1].steps_run == 1 and by["margin", 0, 1].steps_run == max(
        blanks(p) for p in pairs[:2]
    )


def test_wilson_interval_known_values():
    assert all(math.isnan(v) for v in E.wilson_interval(0, 0))
    assert E.wilson_interval(0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert E.wilson_interval(10, 10) == pytest.approx((0.72246, 1.0), abs=1e-5)
    assert E.wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert E.wilson_interval(50, 100) == pytest.approx((0.40383, 0.59617), abs=1e-5)
    assert E.wilson_interval(81, 263) == pytest.approx((0.25529, 0.36621), abs=1e-4)
    lo, hi = E.wilson_interval(3, 20)
    lo2, hi2 = E.wilson_interval(17, 20)
    assert (lo, hi) == pytest.approx((1 - hi2, 1 - lo2))
    # z is used: a smaller z, a narrower interval around 0.5
    narrow = E.wilson_interval(5, 10, z=1.0)
    assert E.wilson_interval(5, 10)[0] < narrow[0] < 0.5 < narrow[1] < E.wilson_interval(5, 10)[1]


def test_random_model_keeps_givens_and_fills_every_blank_and_bad_grids(pairs):
    torch.manual_seed(0)
    model = LoopMDM(
        ModelConfig(
            vocab_size=11,
            max_seq_len=81,
            d_model=32,
            n_heads=2,
            n_layers=3,
            n_h=1,
            n_m=1,
            n_o=1,
            cond_dim=16,
            time_conditioning="none",
            tie_embeddings=False,
        )
    ).eval()
    for order in ("random", "probability"):
        grids, _, _, steps_run = solve_with(
            model, pairs[:2] * 2, steps=7, loops=2, order=order, seed=1
        )
        assert steps_run == 7
        for g, p in zip(grids, pairs[:2] * 2):
            assert matches_puzzle(p.puzzle, g) and "0" not in g
    canvas = E.puzzle_canvas(pairs[:2])
    assert torch.equal(canvas.free, canvas.x == MASK_ID) and canvas.x.dtype == torch.long
    assert int(canvas.free.sum()) == sum(blanks(p) for p in pairs[:2])
    kw = dict(orders=["margin"], steps=[1], loops=[1], schedule=SCHEDULE)
    with pytest.raises(ConfigError, match="unknown unmasking order"):
        E.sudoku_grid(model, TOK, pairs, **{**kw, "orders": ["diagonal"]})
    with pytest.raises(ConfigError, match="--steps"):
        E.sudoku_grid(model, TOK, pairs, **{**kw, "steps": [-1]})
    with pytest.raises(ConfigError, match="--loops"):
        E.sudoku_grid(model, TOK, pairs, **{**kw, "loops": [0]})
    text_tok = train_bpe(["def f(x):\n    return x\n" * 20], 300)
    with pytest.raises(ConfigError, match="vocabulary") as info:
        E.sudoku_grid(model, text_tok, pairs, **kw)
    assert "\n" not in str(info.value) and f"{text_tok.vocab_size}-token vocabulary" in str(
        info.value
    )


# --------------------------------------------------------------------------- the conditional objective


def test_q_sample_never_masks_frozen_cells_and_loss_scores_only_blanks(pairs):
    x0, frozen = (torch.from_numpy(a) for a in pairs_to_arrays(pairs))
    x0 = x0.long()
    batch = Batch(x0, frozen)
    # u = 0 < 1 - alpha: every free cell is masked
    everything = Noise(torch.ones(4), torch.zeros(4, 81))
    x_t = q_sample(batch, everything, torch.zeros(4), MASK_ID)
    assert torch.equal(x_t[frozen], x0[frozen]) and (x_t[~frozen] == MASK_ID).all()
    # unconditional: all
    assert (q_sample(Batch(x0), everything, torch.zeros(4), MASK_ID) == MASK_ID).all()

    torch.manual_seed(0)
    model = LoopMDM(
        ModelConfig(
            vocab_size=11,
            max_seq_len=81,
            d_model=32,
            n_heads=2,
            n_layers=3,
            n_h=1,
            n_m=1,
            n_o=1,
            time_conditioning="none",
            tie_embeddings=False,
        )
    )
    for weight in ("uniform", "elbo"):
        obj = make_objective(DiffusionConfig(loss_weight=weight), MASK_ID)
        assert isinstance(obj, MaskedDiffusion)
        noise = obj.draw(4, 81, torch.Generator().manual_seed(0))
        # nothing left to generate
        all_given = obj.loss(model, Batch(x0, torch.ones_like(frozen)), 1, noise)
        assert all_given.loss.item() == 0.0 and all_given.n_tokens == 0
        out = obj.loss(model, batch, 2, noise)
        assert out.n_tokens == int((~frozen).sum()) and out.loss.item() > 0
        model.zero_grad()
        out.loss.backward()
        assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0
        # logits at the givens do not matter: they are never masked and never scored
        x_t = q_sample(batch, noise, obj.schedule.alpha(noise.t), MASK_ID)
        logits = torch.randn(4, 81, 11)
        changed = logits.clone()
        changed[frozen] = torch.randn(int(frozen.sum()), 11) * 10
        a, b = obj.nelbo(logits, batch, x_t, noise.t), obj.nelbo(changed, batch, x_t, noise.t)
        assert a.loss.item() == pytest.approx(b.loss.item()) and a.nll_sum.item() == pytest.approx(
            b.nll_sum.item()
        )


TINY_SETS = [
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=3",
    "model.n_h=1",
    "model.n_m=1",
    "model.n_o=1",
    "diffusion.s_max=2",
    "data.sudoku.n_train=32",
    "data.sudoku.n_val=8",
    "data.sudoku.n_test=8",
    "train.batch_size=8",
    "train.max_steps=6",
    "train.warmup_steps=1",
    "train.eval_every=3",
    "train.save_every=6",
    "train.eval_batches=1",
    "train.device=cpu",
]


@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory):
    """A tiny `loopmdm train --preset sudoku` run, every q_sample call of training and validation recorded."""
    root = tmp_path_factory.mktemp("sudoku_run")
    seen = []
    real = objectives_module.q_sample

    def recording(batch, noise, alpha_t, mask_id):
        x_t = real(batch, noise, alpha_t, mask_id)
        seen.append(
            (
                batch.x0.clone(),
                None if batch.frozen is None else batch.frozen.clone(),
                x_t.clone(),
                mask_id,
            )
        )
        return x_t

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("LOOPMDM_CACHE", str(root / "cache"))
        mp.setattr(objectives_module, "q_sample", recording)
        argv = [
            "loopmdm",
            "train",
            "--preset",
            "sudoku",
            "--out",
            str(root / "run"),
            "--no-progress",
            "--json",
        ]
        for s in TINY_SETS:
            argv += ["--set", s]
        mp.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as e:
            main()
        assert (e.value.code or 0) == 0
    return root / "run", seen


def test_conditional_training_never_masks_a_given(sudoku_run):
    run, seen = sudoku_run
    assert len(seen) >= 6  # 6 training steps (+ validation)
    masked_blanks = 0
    for x0, frozen, x_t, mask_id in seen:
        assert mask_id == MASK_ID and frozen is not None and x0.shape[1] == 81
        assert torch.equal(x_t[frozen], x0[frozen]) and not (x_t[frozen] == MASK_ID).any()
        assert ((x_t == x0) | (x_t == MASK_ID)).all()
        masked_blanks += int((x_t == MASK_ID).sum())
        n_givens = frozen.sum(1)
        assert ((n_givens >= 30) & (n_givens <= 42)).all()  # the preset's difficulty
    assert masked_blanks > 0
    x0, frozen, _, _ = seen[0]  # an augmented training batch: still a unique puzzle of its board
    for row, f in zip(x0.tolist(), frozen.tolist()):
        puzzle = "".join(str(v) if g else "0" for v, g in zip(row, f))
        assert count_solutions(puzzle) == 1 and solve(puzzle) == decode_grid(row)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["format"] == "sudoku" and cfg["model"]["vocab_size"] == 11
    # LOOPMDM_CACHE, not ~/.cache
    assert len(list((run.parent / "cache" / "sudoku").glob("*.jsonl"))) == 3


def test_eval_metric_sudoku_on_a_sudoku_checkpoint(sudoku_run, tmp_path, capsys, monkeypatch):
    run, _ = sudoku_run
    monkeypatch.setenv("LOOPMDM_CACHE", str(run.parent / "cache"))
    code, out, err = cli(
        capsys,
        "eval",
        "--metric",
        "sudoku",
        "--checkpoint",
        run,
        "--steps",
        "1,2,0",
        "--loops",
        "1,2",
        "--orders",
        "margin",
        "--max-boards",
        "3",
        "--json",
    )
    assert code == 0, err
    payload = json.loads(out)
    assert (
        payload["metric"] == "sudoku"
        and payload["primary"] == "board_accuracy"
        and payload["boards"] == 3
    )
    assert [(r["steps"], r["loops"]) for r in payload["results"]] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
        (0, 1),
        (0, 2),
    ]
    for r in payload["results"]:
        assert (
            0.0 <= r["board_accuracy"] <= 1.0
            and 0.0 <= r["cell_accuracy"] <= 1.0
            and r["boards"] == 3
        )
    boards = generate_puzzles(3, 36, seed=5)
    write_jsonl(boards, tmp_path / "test.jsonl")
    code, out, err = cli(
        capsys,
        "eval",
        "--metric",
        "sudoku",
        "--checkpoint",
        run,
        "--steps",
        "2",
        "--loops",
        "1",
        "--data",
        tmp_path / "test.jsonl",
        "--max-boards",
        "2",
    )
    assert code == 0, err
    # header + one row
    assert "board acc" in out.splitlines()[0] and len(out.strip().splitlines()) == 2
    for args, needle in (
        (["--steps", "x"], "--steps 'x'"),
        (["--loops", "0"], "--loops '0'"),
        (["--orders", "diagonal"], "unknown unmasking order"),
    ):
        code, _, err = cli(capsys, "eval", "--metric", "sudoku", "--checkpoint", run, *args)
        assert code == 2 and needle in one_line_error(err)


def test_eval_metric_sudoku_on_a_text_checkpoint_names_the_vocabulary(
    tiny_run, capsys, monkeypatch
):
    code, out, err = cli(capsys, "eval", "--metric", "sudoku", "--checkpoint", tiny_run)
    line = one_line_error(err)
    assert code == 2 and not out
    assert "<pad>, 1-9, <mask>" in line and re.search(r"has a \d+-token vocabulary", line)


def test_train_preset_sudoku_rejects_impossible_givens(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOOPMDM_CACHE", str(tmp_path / "cache"))
    code, _, err = cli(
        capsys,
        "train",
        "--preset",
        "sudoku",
        "--set",
        "data.sudoku.givens=[10,20]",
        "--out",
        tmp_path / "run",
    )
    line = one_line_error(err)
    assert code == 2 and "data.sudoku.givens=[10, 20]" in line and "17..80" in line
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- the experiment


def test_experiment_config_errors(tmp_path, capsys, monkeypatch):
    cfg = X.load_sudoku_config("laptop")
    assert cfg.run.data.format == "sudoku" and X.load_sudoku_config("gpu").run.model.d_model == 256
    cfg.run.data.sudoku.givens = [10, 20]
    with pytest.raises(ConfigError, match=r"17\.\.80"):
        cfg.validate()
    for change, needle in (
        (lambda c: setattr(c.run.data, "format", "text"), "format"),
        (lambda c: setattr(c, "models", ["mdm", "bogus"]), "models"),
        (lambda c: setattr(c, "orders", ["diagonal"]), "unmasking order"),
        (lambda c: setattr(c, "steps", [-1]), "steps"),
        (lambda c: setattr(c.run.diffusion, "s_max", 1), "LoopMDM"),
    ):
        c = X.load_sudoku_config("laptop")
        change(c)
        with pytest.raises(ConfigError, match=needle):
            c.validate()
    f = tmp_path / "bad.yaml"
    for text, needle in (
        ("run: {data: {sudoku: {givens: [40, 90]}}}\n", "17..80"),
        ("run: {diffusion: {loss_weight: squared}}\n", "loss_weight"),
        ("no_such_key: 1\n", "no_such_key"),
        ("base: huge\n", "base"),
    ):
        f.write_text(text)
        code, _, err = cli(capsys, "experiment", "sudoku", "--config", f, "--out", tmp_path / "o")
        assert code == 2 and needle in one_line_error(err)
    assert not (tmp_path / "o").exists()


EXPERIMENT_YAML = """\
base: laptop
name: test
baseline_steps: 12
seeds: [0]
n_evals: 2
flops_tolerance: 0.1
orders: [margin]
steps: [1, 0]
loops: [1, 3, 6]
test_boards: 3
eval_batch_size: 8
run:
  model: {{d_model: 32, n_heads: 2, n_layers: 3, n_h: 1, n_m: 1, n_o: 1}}
  diffusion: {{s_max: 3}}
  data: {{cache_dir: {cache}, sudoku: {{n_train: 32, n_val: 8, n_test: 8}}}}
  train: {{batch_size: 8, eval_batches: 1, log_every: 1, device: cpu}}
"""


def test_run_sudoku_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPMDM_CACHE", str(tmp_path / "never"))
    spec = tmp_path / "exp.yaml"
    spec.write_text(EXPERIMENT_YAML.format(cache=json.dumps(str(tmp_path / "cache"))))
    cfg = X.load_sudoku_config(spec)
    assert cfg.name == "test" and cfg.run.model.d_model == 32 and cfg.loops_grid() == [1, 3, 6]
    out = tmp_path / "out"
    res = X.run_sudoku(cfg, out, log=lambda s: None)

    steps = {r["name"]: r["steps"] for r in res["plan"]["runs"]}
    assert steps["mdm"] == 12 and steps["mdm"] > steps["loopmdm"] and steps["mdm"] > steps["deeper"]
    assert res["plan"]["deeper"]["n_layers"] == 4  # 3 + (E[S] - 1) * n_m = 3 + 1
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "sudoku" and saved["boards"] == 3 and saved["seeds"] == [0]
    assert set(saved["per_seed"]["0"]) == {"mdm", "loopmdm", "deeper"}
    for name, info in saved["per_seed"]["0"].items():
        grid = [1, 3, 6] if name == "loopmdm" else [1]
        assert [(s["steps"], s["loops"]) for s in info["scores"]] == [
            (T, S) for T in (1, 0) for S in grid
        ]
        assert info["steps"] == steps[name] and not info["reused"]
        # the FLOPs counted in training are exactly those of the loop counts it drew
        rows = [
            json.loads(line)
            for line in (out / "seed_0" / name / "metrics.jsonl").read_text().splitlines()
        ]
        drawn = [r["loops"] for r in rows if "loops" in r]
        assert len(drawn) == steps[name]
        run_cfg = json.loads((out / "seed_0" / name / "config.json").read_text())
        model = ModelConfig(**run_cfg["model"])
        # the LM head at the masked blanks
        pf = predicted_fraction(cfg.run.diffusion) * res["data_free_fraction"]
        assert info["flops"] == pytest.approx(
            sum(train_flops_per_token(model, s, 81, pf) for s in drawn) * 8 * 81
        )
    loop_draws = Counter(
        json.loads(line)["loops"]
        for line in (out / "seed_0" / "loopmdm" / "metrics.jsonl").read_text().splitlines()
    )
    # balanced
    assert set(loop_draws) == {1, 2, 3} and max(loop_draws.values()) - min(loop_draws.values()) <= 1
    assert (
        set(saved["summary"]) == {"mdm", "loopmdm", "deeper"}
        and "margin|1|6" in saved["summary"]["loopmdm"]
    )
    assert set(saved["checks"]) == {"margin|T=1"}
    assert saved["figures"] == ["sudoku_heatmap_margin.png", "sudoku_vs_flops.png"]
    for name in saved["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text()
    assert "**order: margin**" in md and "| loopmdm | 6 |" in md and "one cell/step" in md
    assert f"mdm {steps['mdm']}" in md and f"loopmdm {steps['loopmdm']}" in md
    assert not (tmp_path / "never").exists() and any(
        (tmp_path / "cache" / "sudoku").glob("*.test.jsonl")
    )

    # finished runs are reused
    again = X.run_sudoku(X.load_sudoku_config(spec), out, log=lambda s: None)
    assert all(info["reused"] for info in again["per_seed"][0].values())
    assert again["summary"] == json.loads(json.dumps(res["summary"]))
