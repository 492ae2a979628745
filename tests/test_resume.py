"""Exact resume through the Python API: stop at step k, resume, and the metrics log and final weights are
identical to an uninterrupted run; mismatched resumes are refused with one-line errors."""

import copy
import json
import shutil

import pytest
import torch

from loopmdm.checkpoint import load_safetensors, resolve_checkpoint
from loopmdm.errors import CheckpointError
from loopmdm.train import Trainer, train

TIMING = {"tokens_per_s"}  # wall-clock fields differ between any two runs


def quiet(cfg, run_dir):
    """A Trainer on a private copy of ``cfg`` (the Trainer keeps and mutates the object it is given)."""
    return Trainer(copy.deepcopy(cfg), run_dir, progress=False, log=lambda s: None)


def read_metrics(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def stop_after(trainer, k):
    """Request a stop (as SIGTERM does) once step k is done."""
    inner = trainer._step

    def step_fn(idx, loops):
        out = inner(idx, loops)
        if trainer.step + 1 >= k:
            trainer.stop_requested = True
        return out

    trainer._step = step_fn


def configure(cfg):
    cfg.train.max_steps, cfg.train.save_every, cfg.train.eval_every = 8, 3, 4
    cfg.train.ema, cfg.train.grad_accum = 0.9, 2  # EMA and accumulation must survive the resume too
    return cfg


def test_resume_is_exact(tiny_cfg, tmp_path):
    full = quiet(configure(tiny_cfg), tmp_path / "full")
    full.fit()
    part = quiet(configure(tiny_cfg), tmp_path / "part")
    stop_after(part, 5)
    r = part.fit()
    assert r.stopped_early and r.step == 5
    # the stop saved a checkpoint
    assert resolve_checkpoint(tmp_path / "part").name == "step_000005"
    resumed = quiet(configure(tiny_cfg), tmp_path / "part")
    resumed.resume(tmp_path / "part")
    assert resumed.step == 5
    resumed.fit()
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [r["step"] for r in a] == list(range(1, 9))
    # every field of every step: loss, S, grad norm, lr, flops, tokens, validation NELBO
    assert a == b
    for f in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors"):
        wa, wb = (
            load_safetensors(resolve_checkpoint(d) / f)
            for d in (tmp_path / "full", tmp_path / "part")
        )
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (f, k)


def test_resume_refuses_mismatches(tiny_run, tiny_cfg, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    other = quiet(tiny_cfg, tmp_path / "x")  # same data, so same tokenizer
    other.cfg.model.d_model = 64
    other.model = type(other.model)(other.cfg.model)
    with pytest.raises(
        CheckpointError, match=r"different model config \(model\.d_model: 32 -> 64\)"
    ):
        other.resume(run)

    with pytest.raises(CheckpointError, match="already holds checkpoints .*--resume"):
        # a fresh run must not mix into an old one
        train(copy.deepcopy(tiny_cfg), run, progress=False, log=lambda s: None)

    ckpt = resolve_checkpoint(run)
    rng = (ckpt / "rng.safetensors").read_bytes()
    (ckpt / "rng.safetensors").unlink()
    # without the index, each file's own checks must catch the damage
    (ckpt / "index.json").unlink()
    with pytest.raises(CheckpointError, match="has no rng.safetensors: it holds weights only"):
        quiet(tiny_cfg, tmp_path / "y").resume(run)

    (ckpt / "rng.safetensors").write_bytes(rng[: len(rng) // 2])
    with pytest.raises(CheckpointError, match="rng.safetensors' is not a valid safetensors file"):
        quiet(tiny_cfg, tmp_path / "y").resume(run)

    (ckpt / "rng.safetensors").write_bytes(rng)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state["data"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"cannot be restored \(KeyError: 'data'\)") as e:
        quiet(tiny_cfg, tmp_path / "z").resume(run)
    assert "\n" not in str(e.value)


def test_resume_warns_about_changed_settings_and_tokenizer(tiny_run, tiny_cfg, tmp_path):
    logs = []
    tr = Trainer(copy.deepcopy(tiny_cfg), tmp_path / "w", progress=False, log=logs.append)
    tr.cfg.train.max_steps = 99
    tr.resume(tiny_run)
    assert any("train.max_steps: 30 -> 99" in line for line in logs)

    # as if the corpus changed and the BPE was retrained
    tr.data.tokenizer.tok.add_tokens(["zzz_new_token"])
    with pytest.raises(CheckpointError, match="tokenizer differs .*data.tokenizer="):
        tr.resume(tiny_run)
