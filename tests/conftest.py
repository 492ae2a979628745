"""Shared fixtures: a deterministic tiny corpus, a tiny config, and tiny trained runs (MDM and AR)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests use many tiny models: one intra-op thread each avoids oversubscribing small machines
# (subprocesses started by tests inherit this). LOOPMDM_TEST_THREADS raises it.
_THREADS = os.environ.get("LOOPMDM_TEST_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)

import torch  # noqa: E402

from loopmdm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402

torch.set_num_threads(int(_THREADS))


@pytest.fixture(autouse=True)
def _test_threads():
    """Restore the test thread count before every test: a trainer under test may have changed it."""
    torch.set_num_threads(int(_THREADS))


NAMES = ["alpha", "beta", "gamma", "delta", "value", "item", "count", "total", "index", "result"]


def python_like_text(seed: int) -> str:
    """A small deterministic Python-looking file (functions, loops, returns)."""
    rng = random.Random(seed)
    lines = [f'"""Module number {seed}."""', "", "import os", ""]
    for f in range(rng.randint(3, 6)):
        a, b = rng.sample(NAMES, 2)
        lines += [
            f"def compute_{a}_{f}({a}, {b}=None):",
            f'    """Return the {a} plus the {b}."""',
            f"    if {b} is None:",
            f"        {b} = {rng.randint(0, 9)}",
            f"    for i in range({rng.randint(2, 9)}):",
            f"        {a} = {a} + i * {b}",
            f"    return {a}",
            "",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        (root / f"mod_{i:02d}.py").write_text(python_like_text(i))
    return root


def make_tiny_cfg(corpus: Path, cache: Path, objective: str = "mdm") -> RunConfig:
    ar = objective == "ar"
    return RunConfig(
        model=ModelConfig(
            vocab_size=320,
            max_seq_len=32,
            d_model=32,
            n_heads=2,
            n_layers=4,
            n_h=1,
            n_m=2,
            n_o=1,
            cond_dim=16,
            causal=ar,
            time_conditioning="none" if ar else "adaln",
        ),
        diffusion=DiffusionConfig(
            s_max=3, objective=objective, loop_dist="fixed" if ar else "uniform"
        ),
        data=DataConfig(source=str(corpus), val_fraction=0.2, cache_dir=str(cache)),
        train=TrainConfig(
            batch_size=8,
            max_steps=4,
            lr=3e-3,
            warmup_steps=2,
            eval_every=2,
            eval_batches=2,
            save_every=2,
            log_every=1,
            precision="fp32",
            device="cpu",
        ),
    ).validate()


@pytest.fixture
def tiny_cfg(tiny_corpus, tmp_path) -> RunConfig:
    return make_tiny_cfg(tiny_corpus, tmp_path / "cache")


def _train_run(corpus: Path, root: Path, objective: str) -> Path:
    from loopmdm.train import train

    cfg = make_tiny_cfg(corpus, root / "cache", objective)
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.save_every = 30, 30, 30
    train(cfg, root / "run", progress=False, log=lambda s: None)
    return root / "run"


@pytest.fixture(scope="session")
def tiny_run(tiny_corpus, tmp_path_factory) -> Path:
    return _train_run(tiny_corpus, tmp_path_factory.mktemp("tiny_run"), "mdm")


@pytest.fixture(scope="session")
def tiny_ar_run(tiny_corpus, tmp_path_factory) -> Path:
    return _train_run(tiny_corpus, tmp_path_factory.mktemp("tiny_ar_run"), "ar")


@pytest.fixture
def fake_train(monkeypatch):
    """``loopmdm train`` with the training itself replaced: the config is built and validated, nothing trains;
    returns the list of configs the CLI built."""
    import loopmdm.cli.train_cmd as tc
    from loopmdm.train import TrainResult

    seen = []

    def fake(cfg, out, **kw):
        seen.append(cfg)
        return TrainResult(Path(out), 0, 0.0, None, 0.0)

    monkeypatch.setattr(tc, "run_train", fake)
    return seen
