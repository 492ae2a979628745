"""Reliability: non-finite guards, disk / permission errors while saving, corrupt or truncated files named on
load, and checkpoint rotation that never drops the newest checkpoint."""

import copy
import errno
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

import loopmdm.checkpoint as ck
import loopmdm.checkpoint.save as ck_save
from loopmdm.checkpoint import (
    list_checkpoints,
    load_model,
    read_latest,
    resolve_checkpoint,
    verify_checkpoint,
)
from loopmdm.errors import CheckpointError, LoopMDMError
from loopmdm.train import Trainer, TrainingDiverged


def trainer(cfg, run_dir, logs=None):
    return Trainer(
        copy.deepcopy(cfg),
        run_dir,
        progress=False,
        log=(logs.append if logs is not None else lambda s: None),
    )


def nan_hook(tr, attempts):
    """Make the mid block output NaN on the given 1-based step attempts (a real NaN in the forward pass)."""
    attempt = {"n": 0}
    inner = tr._step

    def step_fn(idx, loops):
        attempt["n"] += 1
        return inner(idx, loops)

    def hook(module, args, out):
        return out * float("nan") if attempt["n"] in attempts else out

    tr._step = step_fn
    tr.model.mid.register_forward_hook(hook)


# --------------------------------------------------------------------------- numerical guards


def test_nonfinite_step_is_skipped_counted_and_logged(tiny_cfg, tmp_path):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.max_steps, cfg.train.eval_every = 5, 100
    logs = []
    tr = trainer(cfg, tmp_path / "run", logs)
    nan_hook(tr, attempts={3})
    tr.fit()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in recs if r.get("skipped")]
    assert len(skipped) == 1 and skipped[0]["step"] == 3 and skipped[0]["loss"] == "nan"
    assert [r["step"] for r in recs if not r.get("skipped")] == [1, 2, 3, 4, 5]  # the run went on
    assert tr.skips.total == 1 and any("non-finite" in line for line in logs)
    state = json.loads((resolve_checkpoint(tmp_path / "run") / "trainer_state.json").read_text())
    assert state["bad_total"] == 1 and state["bad_in_row"] == 0


def test_nonfinite_in_a_row_stops_and_keeps_last_good_checkpoint(tiny_cfg, tmp_path):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.max_steps, cfg.train.save_every, cfg.train.max_bad_steps = 8, 2, 3
    tr = trainer(cfg, tmp_path / "run")
    nan_hook(tr, attempts=set(range(5, 100)))
    with pytest.raises(TrainingDiverged) as e:
        tr.fit()
    msg = str(e.value)
    assert "3 non-finite steps in a row" in msg and "train.lr=" in msg and "step_000004" in msg
    assert "\n" not in msg
    assert read_latest(tmp_path / "run" / "checkpoints") == "step_000004"
    model, _, _ = load_model(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_step_that_logs_nothing_is_skipped_on_the_device(tiny_cfg, tmp_path):
    """Between logged steps the loss is not read on the host: the fused AdamW kernel skips the update (found_inf),
    the EMA keeps its value, the step still counts, and the next read records and logs it."""
    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.save_every, cfg.train.log_every = (
        6,
        100,
        100,
        3,
    )
    cfg.train.ema = 0.9
    logs = []
    tr = trainer(cfg, tmp_path / "run", logs)
    nan_hook(tr, attempts={2})
    tr.fit()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in recs if r.get("skipped")] == [
        {"step": 2, "skipped": True, "skipped_steps": 1, "bad_in_row": 1, "bad_total": 1}
    ]
    assert [r["step"] for r in recs if not r.get("skipped")] == [3, 6]
    assert (
        tr.skips.total == 1
        and tr.skips.in_row == 0
        and any("1 step with a non-finite loss" in x for x in logs)
    )
    assert all(torch.isfinite(p).all() for p in [*tr.model.parameters(), *tr.ema.parameters()])
    assert int(tr.ema.n_averaged) == 5  # the skipped step left the average alone
    state = json.loads((resolve_checkpoint(tmp_path / "run") / "trainer_state.json").read_text())
    assert state["bad_total"] == 1 and state["bad_in_row"] == 0


def test_nonfinite_steps_in_a_row_on_the_device_stop_at_the_next_read(tiny_cfg, tmp_path):
    """The run of device-skipped steps goes on across a checkpoint (which reads the counts) and stops the run at the
    next read once it reaches train.max_bad_steps."""
    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.save_every, cfg.train.log_every = (
        8,
        100,
        2,
        4,
    )
    cfg.train.max_bad_steps = 2
    tr = trainer(cfg, tmp_path / "run")
    nan_hook(tr, attempts={2, 3})
    with pytest.raises(TrainingDiverged, match="2 non-finite steps in a row"):
        tr.fit()
    assert tr.skips.total == 2


def test_a_good_step_on_the_device_ends_the_run_of_nonfinite_steps(tiny_cfg, tmp_path):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.save_every, cfg.train.log_every = (
        4,
        100,
        2,
        4,
    )
    tr = trainer(cfg, tmp_path / "run")
    # step 2 skipped on the device, 3 good on the device, 4 skipped on the host
    nan_hook(tr, attempts={2, 4})
    tr.fit()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["bad_in_row"]) for r in recs if r.get("skipped")] == [(2, 1), (4, 1)]
    assert tr.skips.total == 2 and tr.step == 4


def test_huge_learning_rate_diverges_with_a_clear_message(tiny_cfg, tmp_path):
    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.lr, cfg.train.warmup_steps, cfg.train.max_bad_steps, cfg.train.save_every = (
        1e30,
        0,
        2,
        1,
    )
    with pytest.raises(
        TrainingDiverged, match=r"likely causes: learning rate too high \(train.lr=1e\+30"
    ):
        trainer(cfg, tmp_path / "run").fit()
    load_model(tmp_path / "run")  # the last checkpoint written before the blow-up still loads


# --------------------------------------------------------------------------- disk and permission errors


@pytest.fixture
def saved(tiny_cfg, tmp_path):
    """A trainer with one checkpoint (step 2) on disk, about to save step 3."""
    cfg = copy.deepcopy(tiny_cfg)
    cfg.train.max_steps = 2
    tr = trainer(cfg, tmp_path / "run")
    tr.fit()
    tr.step = 3
    return tr, tmp_path / "run" / "checkpoints"


def assert_previous_intact(root):
    assert read_latest(root) == "step_000002"
    assert [p.name for p in list_checkpoints(root)] == ["step_000002"]
    assert not list(root.glob("*.tmp-*"))  # no temporary folder left behind
    verify_checkpoint(root / "step_000002")
    load_model(root.parent)


@pytest.mark.parametrize(
    "code,reason",
    [(errno.ENOSPC, "disk full"), (errno.EDQUOT, "quota"), (errno.EIO, "Input/output error")],
)
def test_failed_write_leaves_previous_checkpoint(saved, monkeypatch, code, reason):
    tr, root = saved
    real = ck_save.write_bytes_synced

    def failing(path, data):
        if path.name == "optimizer.safetensors":
            raise OSError(code, os.strerror(code), str(path))
        real(path, data)

    monkeypatch.setattr(ck_save, "write_bytes_synced", failing)
    with pytest.raises(
        CheckpointError,
        match=f"could not save checkpoint .*{reason}.*previous checkpoint is intact",
    ):
        tr.save()
    assert_previous_intact(root)


def test_failed_rename_or_pointer_update_leaves_previous_checkpoint(saved, monkeypatch):
    tr, root = saved
    real_replace = os.replace

    def deny(src, dst):
        raise OSError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(ck_save.os, "replace", deny)
    with pytest.raises(CheckpointError, match="permission denied"):
        tr.save()
    monkeypatch.setattr(ck_save.os, "replace", real_replace)
    assert_previous_intact(root)

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(ck_save, "atomic_write_text", read_only)
    with pytest.raises(CheckpointError, match="read-only file system"):
        tr.save()
    assert read_latest(root) == "step_000002"  # the pointer never moved to the new folder
    assert resolve_checkpoint(root.parent).name == "step_000002"


def test_read_only_output_folder(tiny_cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(
        CheckpointError, match="cannot write the run folder .*choose a writable --out"
    ):
        # a path under a regular file: no permission trick needed
        trainer(tiny_cfg, blocker / "run").fit()
    if os.geteuid() == 0:
        return  # root ignores file permissions; the monkeypatched errors above cover this case
    ro = tmp_path / "ro"
    (ro / "checkpoints").mkdir(parents=True)
    ro.chmod(0o500)
    (ro / "checkpoints").chmod(0o500)
    try:
        tr = trainer(tiny_cfg, tmp_path / "ok")
        with pytest.raises(CheckpointError, match="permission denied"):
            ck.save_checkpoint(ro, 1, tr.model, tr.cfg, tr.data.tokenizer)
    finally:
        (ro / "checkpoints").chmod(0o700)
        ro.chmod(0o700)


def test_save_refuses_nonfinite_weights(saved):
    tr, root = saved
    with torch.no_grad():
        next(tr.model.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match="weights became non-finite .*not saving"):
        tr.save()
    assert_previous_intact(root)


# --------------------------------------------------------------------------- corruption is detected and named


@pytest.fixture
def ckpt_copy(tiny_run, tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(resolve_checkpoint(tiny_run), folder)
    return folder


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage,match",
    [
        (
            lambda f: (f / "model.safetensors").write_bytes(
                (f / "model.safetensors").read_bytes()[:5000]
            ),
            r"model.safetensors' is truncated or corrupt \(5000 bytes",
        ),
        (
            lambda f: flip_byte(f / "optimizer.safetensors", 3000),
            r"optimizer.safetensors' is corrupt .*checksum",
        ),
        (lambda f: flip_byte(f / "tokenizer.json", 100), r"tokenizer.json' is corrupt .*checksum"),
        (lambda f: (f / "index.json").write_text("{oops"), r"index.json' is not valid JSON"),
        (
            lambda f: (f / "index.json").write_text('{"files": {"../../etc/passwd": "0"}}'),
            "invalid file name",
        ),
        (
            lambda f: (f / "trainer_state.json").write_text("{}"),
            r"trainer_state.json' is truncated or corrupt",
        ),
        (
            lambda f: (f / "rng.safetensors").unlink(),
            r"rng.safetensors' is listed in index.json but missing",
        ),
    ],
)
def test_corruption_named_via_index(ckpt_copy, damage, match):
    damage(ckpt_copy)
    with pytest.raises(CheckpointError, match=match) as e:
        load_model(ckpt_copy)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "damage,match",
    [
        (
            lambda f: (f / "model.safetensors").write_bytes(
                (f / "model.safetensors").read_bytes()[:5000]
            ),
            r"model.safetensors' is not a valid safetensors file",
        ),
        (
            lambda f: (f / "model.safetensors").write_bytes(b""),
            r"model.safetensors' is not a valid safetensors",
        ),
        (
            lambda f: (f / "config.json").write_text('{"model": {"n_m": 5}}'),
            r"config.json: .*add up to n_layers",
        ),
        (lambda f: (f / "config.json").write_text("[" * 100000), r"config.json' is not valid JSON"),
        (lambda f: (f / "tokenizer.json").write_text("{}"), r"tokenizer.json' cannot be read"),
        (lambda f: (f / "config.json").unlink(), "is missing config.json"),
    ],
)
def test_corruption_named_without_index(ckpt_copy, damage, match):
    # hand-made folders have no index: each format's own check applies
    (ckpt_copy / "index.json").unlink()
    damage(ckpt_copy)
    with pytest.raises(LoopMDMError, match=match) as e:
        load_model(ckpt_copy)
    assert "\n" not in str(e.value)


def test_nonfinite_weights_in_a_checkpoint_are_refused(ckpt_copy):
    state = ck.load_safetensors(ckpt_copy / "model.safetensors")
    state[next(iter(state))].view(-1)[0] = float("nan")
    save_file(state, str(ckpt_copy / "model.safetensors"))
    (ckpt_copy / "index.json").unlink()
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_model(ckpt_copy)


# --------------------------------------------------------------------------- rotation and the latest pointer


def test_rotation_orders_steps_numerically_and_never_drops_latest(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (999_998, 999_999, 1_000_000, 1_000_001):
        (root / f"step_{step:06d}").mkdir(parents=True)
    (root / "step_000005.tmp-abc").mkdir()  # a write interrupted by a kill
    (root / "latest").write_text("step_1000000\n")
    ck.prune_checkpoints(root, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_1000000", "step_1000001"]
    # the pointer, not the name order, wins
    assert resolve_checkpoint(tmp_path) == root / "step_1000000"
    (root / "latest").write_text("../../../etc\n")  # a tampered pointer is ignored
    assert resolve_checkpoint(tmp_path) == root / "step_1000001"


def test_resave_same_step_is_atomic(saved):
    tr, root = saved
    tr.step = 2
    tr.save()  # replaces step_000002 through a swap, never deleting the only checkpoint first
    assert_previous_intact(root)
