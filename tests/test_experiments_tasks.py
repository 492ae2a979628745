"""Sudoku experiment (encoding, solver loop, training at equal FLOPs, bad difficulty) and the attention
analysis (probabilities equal SDPA's, shares sum to 1, declared shapes, missing checkpoint)."""

import json
import math
import sys
from unittest import mock

import numpy as np
import pytest
import torch

from loopmdm.config import ModelConfig
from loopmdm.errors import ConfigError
from loopmdm.experiments import attention as A
from loopmdm.experiments import sudoku_exp as X
from loopmdm.model import LoopMDM
from loopmdm.tasks import sudoku as sd

PUZZLE = "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3.."
SOLUTION = "162857493534129678789643521475312986913586742628794135356478219241935867897261354"
PAIR = sd.SudokuPair(sd.normalize_grid(PUZZLE), SOLUTION)


def cli(argv, capsys):
    from loopmdm.cli import main

    with mock.patch.object(sys, "argv", ["loopmdm", *argv]):
        with pytest.raises(SystemExit) as e:
            main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def tiny_sudoku_cfg(**kw) -> X.SudokuExpConfig:
    cfg = X.load_sudoku_config("laptop")
    cfg.model = ModelConfig(vocab_size=sd.VOCAB.vocab_size, max_seq_len=81, d_model=32, n_heads=2, n_layers=3,
                            n_h=1, n_m=1, n_o=1, cond_dim=16, time_conditioning="none", tie_embeddings=False)
    cfg.s_max, cfg.batch_size, cfg.log_every = 3, 8, 1000
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg.validate()


class Oracle(torch.nn.Module):
    """Returns logits peaked at the solution; per-cell confidence grows with the cell index."""

    def __init__(self, solution: torch.Tensor):
        super().__init__()
        self.config = ModelConfig(vocab_size=sd.VOCAB.vocab_size, max_seq_len=81, d_model=8, n_heads=2, n_layers=1,
                                  n_h=0, n_m=1, n_o=0, time_conditioning="none")
        self.solution = solution  # [N, 81]
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, x, t=None, loops=1):
        self.calls.append((x.clone(), loops))
        logits = torch.zeros(*x.shape, self.config.vocab_size)
        strength = 1.0 + torch.arange(81, dtype=torch.float32) / 10.0  # [81]
        logits.scatter_(-1, self.solution[: x.shape[0], :, None], strength[None, :, None].expand(x.shape[0], 81, 1))
        return logits


# --------------------------------------------------------------------------- Sudoku

def test_encode_decode_round_trip_and_tensors():
    ids = sd.encode(PAIR.puzzle)
    assert len(ids) == 81 and sd.decode(ids) == PAIR.puzzle
    puzzles, solutions = sd.to_tensors([PAIR])
    assert puzzles.shape == solutions.shape == (1, 81)
    assert sd.decode(solutions[0]) == SOLUTION and int((puzzles == sd.VOCAB.mask_id).sum()) == PAIR.puzzle.count("0")


@pytest.mark.parametrize("order", ["confidence", "random", "margin"])
def test_solver_loop_with_an_oracle_solves_one_cell_per_call(order):
    puzzles, solutions = sd.to_tensors([PAIR])
    oracle = Oracle(solutions)
    pred = X.solve_boards(oracle, puzzles, loops=3, order=order)
    assert sd.decode(pred[0]) == SOLUTION
    assert len(oracle.calls) == PAIR.puzzle.count("0") and all(s == 3 for _, s in oracle.calls)
    assert X.score_solutions(pred, [PAIR]) == {"board_accuracy": 1.0, "cell_accuracy": 1.0,
                                              "cell_accuracy_all": 1.0, "valid_grids": 1.0}


def test_confidence_order_commits_the_most_confident_cell_first():
    puzzles, solutions = sd.to_tensors([PAIR])
    oracle = Oracle(solutions)
    X.solve_boards(oracle, puzzles, loops=1, order="confidence", steps=5)
    first_two = oracle.calls[1][0][0] != oracle.calls[0][0][0]  # cells committed by the first call
    blanks = (puzzles[0] == sd.VOCAB.mask_id).nonzero().flatten()
    k = math.ceil(len(blanks) / 5)
    assert first_two.nonzero().flatten().tolist() == blanks[-k:].tolist()  # highest indices = most confident
    assert len(oracle.calls) == 5


def test_solver_on_a_tiny_random_model_keeps_givens_and_fills_every_blank():
    torch.manual_seed(0)
    model = LoopMDM(tiny_sudoku_cfg().model).eval()
    puzzles, _ = sd.to_tensors([PAIR, PAIR])
    for order in ("random", "confidence"):
        pred = X.solve_boards(model, puzzles, loops=2, order=order, steps=7, seed=1)
        given = puzzles != sd.VOCAB.mask_id
        assert torch.equal(pred[given], puzzles[given])
        assert set(pred.unique().tolist()) <= set(sd.VOCAB.digit_ids)
    with pytest.raises(ConfigError, match="unknown unmasking order"):
        X.solve_boards(model, puzzles, loops=1, order="diagonal")


def test_digit_augmentation_keeps_boards_valid_and_aligned():
    puzzles, solutions = sd.to_tensors([PAIR] * 4)
    p, s = X.augment_digits([puzzles, solutions], torch.Generator().manual_seed(0))
    for i in range(4):
        grid, puzzle = sd.decode(s[i]), sd.decode(p[i])
        assert sd.is_valid_solution(grid) and sd.matches_puzzle(puzzle, grid) and puzzle.count("0") == PUZZLE.count(".")
    assert len({sd.decode(s[i]) for i in range(4)}) > 1


def test_training_counts_flops_and_equal_flops_steps(tmp_path):
    cfg = tiny_sudoku_cfg(baseline_steps=30)
    steps = X.planned_steps(cfg)
    assert steps["loopmdm"] < steps["mdm"] == 30
    run = X.train_sudoku_model(cfg, "loopmdm", [PAIR] * 8, 6, seed=0, log=lambda s: None)
    from loopmdm.flops import train_flops_per_token

    per_block = sum(train_flops_per_token(run.model.config, s) for s in (1, 2, 3)) * 8 * 81  # balanced S blocks
    assert run.flops == pytest.approx(2 * per_block)
    folder = X.save_sudoku_model(run.model, tmp_path / "m", {"s_max": 3})
    again = X.load_sudoku_model(folder)
    x = sd.to_tensors([PAIR])[0]
    assert torch.allclose(again(x, loops=2), run.model(x, loops=2))


def test_sudoku_loss_only_scores_masked_blanks():
    torch.manual_seed(0)
    model = LoopMDM(tiny_sudoku_cfg().model)
    puzzles, solutions = sd.to_tensors([PAIR])
    full = solutions.clone()  # no blanks at all: nothing is masked, the loss is zero
    assert X.sudoku_loss(model, full, solutions, 1, torch.Generator().manual_seed(0), sd.VOCAB.mask_id).detach().item() == 0.0
    loss = X.sudoku_loss(model, puzzles, solutions, 2, torch.Generator().manual_seed(0), sd.VOCAB.mask_id, "elbo")
    loss.backward()
    assert loss.item() > 0 and model.embed.weight.grad is not None


def test_bad_sudoku_difficulty_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="17..80"):
        tiny_sudoku_cfg(givens=[10, 20])
    f = tmp_path / "bad.yaml"
    f.write_text("givens: [40, 90]\n")
    code, _, err = cli(["experiment", "sudoku", "--config", str(f), "--out", str(tmp_path)], capsys)
    assert code == 2 and err.startswith("error: givens=") and "17..80" in err
    f.write_text("loss_weight: squared\n")
    code, _, err = cli(["experiment", "sudoku", "--config", str(f), "--out", str(tmp_path)], capsys)
    assert code == 2 and "loss_weight" in err


# --------------------------------------------------------------------------- attention

def tiny_model(**kw) -> LoopMDM:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, max_seq_len=16, d_model=32, n_heads=4, n_layers=4, n_h=1, n_m=2, n_o=1,
                      cond_dim=16, **kw)
    model = LoopMDM(cfg).eval()
    with torch.no_grad():  # adaLN-Zero starts every block as the identity; give the gates some weight
        for name, p in model.named_parameters():
            if "modulation" in name:
                p.normal_(0, 0.2)
    return model


def test_recomputed_probabilities_reproduce_sdpa():
    model = tiny_model()
    attn = model.mid.blocks[0].attn
    x = torch.randn(2, 16, 32)
    rope = model.rotary(16)
    probs = A.attention_probs(attn, x, rope)  # [B, H, T, T]
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 16), atol=1e-5)
    v = attn.qkv(x).view(2, 16, 3, 4, 8).permute(2, 0, 3, 1, 4)[2]
    manual = attn.proj((probs @ v).transpose(1, 2).reshape(2, 16, 32))
    assert torch.allclose(manual, attn(x, rope, None, False), atol=1e-5)


def test_shares_sum_to_one_and_have_the_declared_shapes():
    model = tiny_model()
    x0 = torch.randint(0, 39, (3, 16))
    x_t = A.corrupt(x0, 0.5, 39, seed=0)
    sh = A.analyze_attention(model, x_t, 0.5, loops=3, mask_id=39)
    d_eff = 1 + 3 * 2 + 1
    assert sh.to_masked.shape == sh.to_unmasked.shape == (d_eff,) and sh.per_head_to_masked.shape == (d_eff, 4)
    assert np.allclose(sh.to_masked + sh.to_unmasked, 1.0, atol=1e-5)
    assert sh.stage == ["head"] + ["mid"] * 6 + ["tail"] and sh.layer == [0, 1, 2, 1, 2, 1, 2, 3]
    assert sh.loop == [-1, 0, 0, 1, 1, 2, 2, -1] and sh.mid(2).shape == (3, 2)
    assert sh.n_masked_queries == int((x_t == 39).sum())


def test_uniform_attention_gives_the_masked_key_fraction():
    model = tiny_model()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.out_features == 3 * 32:
                m.weight.zero_()  # q = k = 0: every query attends uniformly
    x0 = torch.randint(0, 39, (2, 16))
    x_t = A.corrupt(x0, 0.4, 39, seed=3)
    masked = (x_t == 39).float()
    expected = float((masked.sum(1, keepdim=True) / 16 * masked).sum() / masked.sum())
    sh = A.analyze_attention(model, x_t, 0.4, loops=2, mask_id=39)
    assert np.allclose(sh.to_masked, expected, atol=1e-5)


def test_sweep_shapes_and_padding():
    model = tiny_model(time_conditioning="none")
    x0 = torch.randint(0, 39, (2, 16))
    sw = A.attention_sweep(model, x0, 39, ts=[0.2, 0.8], loops=[1, 3])
    assert sw.mid.shape == (2, 2, 3, 2) and sw.mid_last.shape == sw.mean_all.shape == (2, 2)
    assert np.isnan(sw.mid[:, 0, 1:]).all() and np.isfinite(sw.mid[:, 1]).all()
    assert sw.masked_key_fraction.shape == (2,) and sw.masked_key_fraction[1] > sw.masked_key_fraction[0]
    keep = torch.zeros_like(x0, dtype=torch.bool)
    keep[:, :8] = True  # e.g. Sudoku givens: never masked
    assert (A.corrupt(x0, 1.0, 39, 0, keep)[:, :8] == x0[:, :8]).all()
    pad = torch.ones_like(x0, dtype=torch.bool)
    pad[:, 12:] = False
    sh = A.analyze_attention(model, A.corrupt(x0, 0.5, 39, 0), 0.5, 2, 39, attention_mask=pad)
    assert np.allclose(sh.to_masked + sh.to_unmasked, 1.0, atol=1e-5)


def test_attention_cli_on_a_checkpoint_and_missing_checkpoint(tiny_run, tmp_path, capsys):
    code, out, _ = cli(["experiment", "attention", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "a"),
                        "--t", "0.3,0.7", "--loops", "1,2", "--batch-size", "4", "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["ts"] == [0.3, 0.7] and np.array(summary["mid_last"]).shape == (2, 2)
    saved = json.loads((tmp_path / "a" / "attention.json").read_text())
    assert len(saved["sweep"]["shares"][0][1]["to_masked"]) == 1 + 2 * 2 + 1
    assert len(list((tmp_path / "a").glob("*.png"))) == 4
    code, _, err = cli(["experiment", "attention", "--checkpoint", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "b")], capsys)
    assert code == 2 and err.startswith("error: checkpoint") and "does not exist" in err
    code, _, err = cli(["experiment", "attention", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "c"),
                        "--t", "1.5"], capsys)
    assert code == 2 and "masking levels in (0, 1]" in err
