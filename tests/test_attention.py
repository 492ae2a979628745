"""The attention analysis (``loopmdm.experiments.attention``): probabilities equal SDPA's, shares sum to 1,
declared shapes, corruption that keeps given positions, loading text and Sudoku run folders, and the CLI."""

import json

import numpy as np
import pytest
import torch

from helpers import run_cli as cli
from loopmdm.config import preset
from loopmdm.data.sudoku import MASK_ID, count_solutions, decode_grid
from loopmdm.errors import ConfigError
from loopmdm.experiments import attention as A
from loopmdm.model import LoopMDM, ModelConfig


def tiny_model(**kw) -> LoopMDM:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=40,
        max_seq_len=16,
        d_model=32,
        n_heads=4,
        n_layers=4,
        n_h=1,
        n_m=2,
        n_o=1,
        cond_dim=16,
        **kw,
    )
    model = LoopMDM(cfg).eval()
    # adaLN-Zero starts every block as the identity; give the gates some weight
    with torch.no_grad():
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
    causal = A.attention_probs(attn, x, rope, causal=True)
    assert torch.allclose(causal.triu(1), torch.zeros_like(causal)) and torch.allclose(
        causal.sum(-1), torch.ones(2, 4, 16)
    )


def test_shares_sum_to_one_and_have_the_declared_shapes():
    model = tiny_model()
    x0 = torch.randint(0, 39, (3, 16))
    x_t = A.corrupt(x0, 0.5, 39, seed=0)
    sh = A.analyze_attention(model, x_t, 0.5, loops=3, mask_id=39)
    d_eff = 1 + 3 * 2 + 1
    assert sh.to_masked.shape == sh.to_unmasked.shape == (
        d_eff,
    ) and sh.per_head_to_masked.shape == (d_eff, 4)
    assert np.allclose(sh.to_masked + sh.to_unmasked, 1.0, atol=1e-5)
    assert sh.stage == ["head"] + ["mid"] * 6 + ["tail"] and sh.layer == [0, 1, 2, 1, 2, 1, 2, 3]
    assert sh.loop == [-1, 0, 0, 1, 1, 2, 2, -1] and sh.mid(2).shape == (3, 2)
    assert sh.n_masked_queries == int((x_t == 39).sum())
    assert json.loads(json.dumps(sh.to_dict()))["loops"] == 3
    with pytest.raises(ConfigError, match="loops=0"):
        A.analyze_attention(model, x_t, 0.5, loops=0, mask_id=39)


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


def test_corrupt_is_seeded_masks_about_t_and_keeps_given_positions():
    x0 = torch.randint(0, 39, (64, 16))
    a = A.corrupt(x0, 0.3, 39, seed=5)
    assert torch.equal(a, A.corrupt(x0, 0.3, 39, seed=5)) and not torch.equal(
        a, A.corrupt(x0, 0.3, 39, seed=6)
    )
    assert ((a == x0) | (a == 39)).all()
    rate = np.mean(
        [float((A.corrupt(x0, 0.3, 39, seed=s) == 39).float().mean()) for s in range(20)]
    )
    assert abs(rate - 0.3) < 0.015  # each position masked with probability t (20 x 1024 draws)
    assert (A.corrupt(x0, 1.0, 39, 0) == 39).all()
    keep = torch.zeros_like(x0, dtype=torch.bool)
    keep[:, ::3] = True  # e.g. Sudoku givens: never masked
    full = A.corrupt(x0, 1.0, 39, 0, keep)
    assert torch.equal(full[keep], x0[keep]) and (full[~keep] == 39).all()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="masking level"):
            A.corrupt(x0, bad, 39, 0)


def test_sweep_shapes_and_padding():
    model = tiny_model(time_conditioning="none")
    x0 = torch.randint(0, 39, (2, 16))
    sw = A.attention_sweep(model, x0, 39, ts=[0.2, 0.8], loops=[1, 3])
    assert sw.mid.shape == (2, 2, 3, 2) and sw.mid_last.shape == sw.mean_all.shape == (2, 2)
    assert np.isnan(sw.mid[:, 0, 1:]).all() and np.isfinite(sw.mid[:, 1]).all()
    assert (
        sw.masked_key_fraction.shape == (2,)
        and sw.masked_key_fraction[1] > sw.masked_key_fraction[0]
    )
    keep = torch.zeros_like(x0, dtype=torch.bool)
    keep[:, :8] = True  # e.g. Sudoku givens: never masked
    assert (A.corrupt(x0, 1.0, 39, 0, keep)[:, :8] == x0[:, :8]).all()
    kept = A.attention_sweep(model, x0, 39, ts=[1.0], loops=[1], keep=keep)
    # only the 8 free positions of 16 are masked
    assert kept.masked_key_fraction[0] == pytest.approx(0.5)
    pad = torch.ones_like(x0, dtype=torch.bool)
    pad[:, 12:] = False
    sh = A.analyze_attention(model, A.corrupt(x0, 0.5, 39, 0), 0.5, 2, 39, attention_mask=pad)
    assert np.allclose(sh.to_masked + sh.to_unmasked, 1.0, atol=1e-5)


def test_attention_cli_on_a_checkpoint_and_missing_checkpoint(tiny_run, tmp_path, capsys):
    code, out, _ = cli(
        [
            "experiment",
            "attention",
            "--checkpoint",
            str(tiny_run),
            "--out",
            str(tmp_path / "a"),
            "--t",
            "0.3,0.7",
            "--loops",
            "1,2",
            "--batch-size",
            "4",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["ts"] == [0.3, 0.7] and np.array(summary["mid_last"]).shape == (2, 2)
    saved = json.loads((tmp_path / "a" / "attention.json").read_text())
    assert len(saved["sweep"]["shares"][0][1]["to_masked"]) == 1 + 2 * 2 + 1
    assert len(list((tmp_path / "a").glob("*.png"))) == 4
    code, _, err = cli(
        [
            "experiment",
            "attention",
            "--checkpoint",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "b"),
        ],
        capsys,
    )
    assert code == 2 and err.startswith("error: checkpoint") and "does not exist" in err
    code, _, err = cli(
        [
            "experiment",
            "attention",
            "--checkpoint",
            str(tiny_run),
            "--out",
            str(tmp_path / "c"),
            "--t",
            "1.5",
        ],
        capsys,
    )
    assert code == 2 and "masking levels in (0, 1]" in err


def test_load_for_analysis_of_a_text_run(tiny_run):
    model, x0, mask_id, keep, s_max, kind = A.load_for_analysis(tiny_run, 3)
    assert isinstance(model, LoopMDM) and kind == "text" and keep is None and s_max == 3
    assert x0.shape == (3, 32) and x0.dtype == torch.long and not (x0 == mask_id).any()


@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory):
    from loopmdm.train import train

    root = tmp_path_factory.mktemp("sudoku_attention")
    cfg = preset("sudoku")
    m = cfg.model
    m.d_model, m.n_heads, m.n_layers, m.n_h, m.n_m, m.n_o = 32, 2, 3, 1, 1, 1
    cfg.diffusion.s_max = 2
    s = cfg.data.sudoku
    s.n_train, s.n_val, s.n_test = 16, 6, 4
    cfg.data.cache_dir = str(root / "cache")
    t = cfg.train
    (
        t.batch_size,
        t.max_steps,
        t.warmup_steps,
        t.eval_every,
        t.save_every,
        t.eval_batches,
        t.device,
    ) = 8, 2, 1, 2, 2, 1, "cpu"
    train(cfg.validate(), root / "run", progress=False, log=lambda s: None)
    return root / "run"


def test_load_for_analysis_of_a_sudoku_run_keeps_the_givens(sudoku_run, tmp_path, capsys):
    model, x0, mask_id, keep, s_max, kind = A.load_for_analysis(sudoku_run, 4)
    assert kind == "sudoku" and mask_id == MASK_ID and s_max == 2
    assert x0.shape == keep.shape == (4, 81) and keep.dtype == torch.bool
    for row, k in zip(x0.tolist(), keep.tolist()):  # validation boards, the givens marked
        puzzle = "".join(str(v) if g else "0" for v, g in zip(row, k))
        assert 30 <= sum(k) <= 42 and count_solutions(puzzle) == 1 and decode_grid(row) != puzzle
    sw = A.attention_sweep(model, x0, mask_id, ts=[1.0], loops=[1, 2], keep=keep)
    # givens never masked
    assert sw.masked_key_fraction[0] == pytest.approx(float((~keep).float().mean()))
    code, out, err = cli(
        [
            "experiment",
            "attention",
            "--checkpoint",
            str(sudoku_run),
            "--out",
            str(tmp_path / "s"),
            "--t",
            "0.5,1",
            "--loops",
            "1,2",
            "--batch-size",
            "4",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["loops"] == [1, 2] and np.array(summary["mid_last"]).shape == (2, 2)
    assert summary["masked_key_fraction"][1] == pytest.approx(float((~keep).float().mean()))
