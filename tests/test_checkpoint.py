"""Checkpoints: round trip gives identical logits; safetensors + JSON only; missing files named."""

import pytest
import torch

from loopmdm.checkpoint import load_model, resolve_checkpoint
from loopmdm.errors import CheckpointError
from loopmdm.train import Trainer


def test_round_trip_identical_logits(tiny_cfg, tmp_path):
    tr = Trainer(tiny_cfg, tmp_path / "run", progress=False, log=lambda s: None)
    tr.fit()
    folder = resolve_checkpoint(tmp_path / "run")
    assert folder.name == "step_000004"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "trainer_state.json",
            "optimizer.safetensors",
            "rng.safetensors",
            "index.json",
        ]
    )
    model, tok, cfg = load_model(tmp_path / "run")
    x = torch.randint(0, tok.vocab_size, (2, 32))
    t = torch.rand(2)
    tr.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, loops=3), tr.model(x, t, loops=3), rtol=0, atol=0)
    assert cfg == tr.cfg


def test_missing_file_named(tiny_run, tmp_path):
    import shutil

    folder = resolve_checkpoint(tiny_run)
    copy = tmp_path / "ck"
    shutil.copytree(folder, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="missing tokenizer.json"):
        load_model(copy)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_model(tmp_path)
