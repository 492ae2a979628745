"""Resume through the CLI against a real process: SIGTERM saves and exits cleanly; SIGKILL at random moments
(during steps, saves, validation, start-up and resume) never loses a checkpoint, and resuming after every
kill reproduces the uninterrupted run's metrics log step by step and its final weights bit for bit."""

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from loopmdm.checkpoint import (
    list_checkpoints,
    load_model,
    load_safetensors,
    resolve_checkpoint,
    verify_checkpoint,
)
from loopmdm.errors import CheckpointError

STEPS = 20
TIMING = {"tokens_per_s"}
TINY = [
    "--set",
    "model.vocab_size=320",
    "--set",
    "model.max_seq_len=32",
    "--set",
    "model.d_model=32",
    "--set",
    "model.n_heads=2",
    "--set",
    "model.cond_dim=16",
    "--set",
    "model.n_layers=4",
    "--set",
    "model.n_o=1",
    "--set",
    "diffusion.s_max=3",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.lr=3e-3",
    "--set",
    "train.warmup_steps=2",
    "--set",
    "train.eval_every=5",
    "--set",
    "train.eval_batches=1",
    "--set",
    "train.save_every=1",
    "--set",
    "train.keep_last=2",
    "--set",
    "train.ema=0.9",
    "--set",
    "train.precision=fp32",
    "--set",
    "train.device=cpu",
    "--set",
    "train.threads=1",
    "--set",
    "data.val_fraction=0.2",
    "--max-steps",
    str(STEPS),
    "--no-progress",
]


def cli_args(run, corpus, cache, resume=False):
    args = [
        sys.executable,
        "-c",
        "from loopmdm.cli import main; main()",
        "train",
        "--out",
        str(run),
        "--data",
        str(corpus),
        "--set",
        f"data.cache_dir={cache}",
        *TINY,
    ]
    return args + (["--resume", str(run)] if resume else [])


def launch(run, corpus, cache, resume=False):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        cli_args(run, corpus, cache, resume),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _cli_child(argv, log):
    """Body of a forked training process: the CLI's own ``main()`` with its output in ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import threading

    from tqdm.auto import tqdm

    # not a multiprocessing lock: a SIGKILL would leak its semaphore
    tqdm.set_lock(threading.RLock())
    from loopmdm.cli import main

    sys.argv = ["loopmdm", *argv]
    main()


class Forked:
    """A training process forked from a server that has already imported torch and loopmdm: the same CLI
    ``main()`` as ``launch`` but without paying ~2 s of imports per process, so ten kills stay cheap."""

    ctx = None

    def __init__(self, run, corpus, cache, resume=False):
        if Forked.ctx is None:
            Forked.ctx = multiprocessing.get_context("forkserver")
            Forked.ctx.set_forkserver_preload(
                ["loopmdm.cli", "loopmdm.train", "loopmdm.checkpoint"]
            )
        self.log = f"{run}.log"
        self.proc = Forked.ctx.Process(
            target=_cli_child, args=(cli_args(run, corpus, cache, resume)[3:], self.log)
        )
        self.proc.start()

    def poll(self):
        return self.proc.exitcode

    def kill(self):
        self.proc.kill()  # SIGKILL

    def communicate(self, timeout=300):
        self.proc.join(timeout)
        with open(self.log) as f:
            return "", f.read()

    @property
    def returncode(self):
        return self.proc.exitcode


def metrics(run, complete_only=True):
    """Parsed metric records without timing fields; a last line cut by a kill is ignored."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if complete_only and text and not text.endswith("\n"):
        lines = lines[:-1]
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def last_step(run):
    recs = metrics(run)
    return recs[-1]["step"] if recs else 0


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory):
    """The uninterrupted run, through the same CLI and settings; also times its start-up and steps, so that
    kills can be aimed at random moments of a process's life on this machine, however loaded."""
    root = tmp_path_factory.mktemp("ref")
    t0 = time.time()
    p = launch(root / "run", tiny_corpus, root / "cache")
    while last_step(root / "run") < 1 and p.poll() is None:
        time.sleep(0.01)
    t_first = time.time() - t0
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    t_step = (time.time() - t0 - t_first) / (STEPS - 1)
    recs = metrics(root / "run")
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    return root / "run", recs, t_first, t_step


def same_weights(a, b):
    wa, wb = (load_safetensors(resolve_checkpoint(r) / "model.safetensors") for r in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_saves_exits_cleanly_and_resume_is_exact(reference, tiny_corpus, tmp_path):
    ref_run, ref, _, _ = reference
    run, cache = tmp_path / "run", tmp_path / "cache"
    p = launch(run, tiny_corpus, cache)
    deadline = time.time() + 240
    while last_step(run) < 3 and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    # 128 + SIGTERM: saved, but not finished (`train && ...` stops)
    assert p.returncode == 143, err[-2000:]
    assert "SIGTERM received: saving step" in err and "Traceback" not in err
    stopped = last_step(run)
    assert 3 <= stopped < STEPS
    # the stop saved the step it finished
    assert resolve_checkpoint(run).name == f"step_{stopped:06d}"
    p = launch(run, tiny_corpus, cache, resume=True)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    assert f"resumed from {resolve_checkpoint(run).parent / f'step_{stopped:06d}'}" in err
    assert metrics(run) == ref  # every field of every step, except wall-clock throughput
    assert same_weights(run, ref_run)


def check_after_kill(run, ref, previous_step):
    """Every checkpoint folder left is complete and loads; nothing older than before was lost; the log so far
    is a prefix of the uninterrupted log."""
    kept = list_checkpoints(run / "checkpoints")
    for folder in kept:
        verify_checkpoint(folder)
    newest = 0
    if kept:
        # what `latest` names; a kill between the folder rename and the
        folder = resolve_checkpoint(run)
        # pointer update leaves one newer complete folder, not yet published
        assert folder in kept[-2:]
        load_model(run)
        newest = int(folder.name.split("_")[1])
    assert newest >= previous_step, f"checkpoint lost: newest step {newest} < {previous_step}"
    got = metrics(run)
    assert got == ref[: len(got)]
    return newest


def test_sigkill_at_random_points_never_loses_work(reference, tiny_corpus, tmp_path):
    ref_run, ref, _, t_step = reference
    rng = random.Random(int(os.environ.get("LOOPMDM_KILL_SEED", "7")))
    cache, scenario, kills, t0 = tmp_path / "cache", 0, 0, time.time()
    run, newest, t_first, kill_steps = tmp_path / "run0", 0, 0.0, []
    while kills < 10:
        assert time.time() - t0 < 300, f"only {kills} kills in the time budget"
        start, launched = last_step(run), time.time()
        # no checkpoint yet: start from scratch
        p = Forked(run, tiny_corpus, cache, resume=newest > 0)
        if kills % 2 == 0:  # a moment after it made progress: inside a step, a save, a validation
            while last_step(run) <= start and p.poll() is None:
                time.sleep(0.005)
            t_first = max(t_first, time.time() - launched)
            time.sleep(rng.uniform(0.0, 2 * t_step))
        else:  # any moment of the process's life: start-up, data, resume, the first steps
            time.sleep(rng.uniform(0.0, t_first + t_step))
        if p.poll() is not None:  # it finished first: check it, then start a new scenario
            _, err = p.communicate()
            assert p.returncode == 0, err[-2000:]
            assert metrics(run) == ref and same_weights(run, ref_run)
            scenario += 1
            run, newest = tmp_path / f"run{scenario}", 0
            continue
        p.kill()
        p.communicate()
        kills += 1
        newest = check_after_kill(run, ref, newest)
        kill_steps.append((last_step(run), newest))
    p = Forked(run, tiny_corpus, cache, resume=newest > 0)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    assert metrics(run) == ref  # the whole curve, after all the kills
    assert same_weights(run, ref_run)
    from loopmdm.train import check_fresh_run_dir

    # a fresh run never mixes in
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        check_fresh_run_dir(run)
    print(
        f"{kills} kills in {time.time() - t0:.1f}s (logged step, checkpoint step) at each: {kill_steps}"
    )
