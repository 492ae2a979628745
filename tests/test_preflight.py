"""Memory pre-flight on CPU with an injected budget: a step that fits passes and leaves no trace, a step that does
not is one ConfigError line naming what was tried and which option (checkpointing, truncated backprop,
grad_accum, a smaller batch) would fit; the linear model of a step's bytes extrapolates in rows and S; the CUDA
allocator setting."""

import numpy as np
import pytest
import torch

from loopmdm.config import DiffusionConfig, ModelConfig, RunConfig, TrainConfig
from loopmdm.diffusion import Batch, make_objective
from loopmdm.errors import ConfigError
from loopmdm.model import LoopMDM
from loopmdm.train import step_memory
from loopmdm.train.preflight import check_memory, expandable_segments
from loopmdm.train.step_memory import MemoryModel

CPU = torch.device("cpu")


class Rows:
    """Prepared data as the pre-flight reads it: ``train`` rows [N, L] and ``batch("train", idx)``."""

    def __init__(self, n: int = 16, length: int = 32, vocab: int = 63):
        self.train = np.random.default_rng(0).integers(0, vocab, (n, length))

    def batch(self, split, idx, rng=None):
        return Batch(torch.from_numpy(self.train[idx]))


def make_run(batch_size=8, grad_accum=1, s_max=8, **model):
    cfg = RunConfig(
        model=ModelConfig(
            vocab_size=64,
            max_seq_len=32,
            d_model=32,
            n_heads=2,
            n_layers=4,
            n_h=1,
            n_m=2,
            n_o=1,
            cond_dim=16,
            **model,
        ),
        diffusion=DiffusionConfig(s_max=s_max),
        train=TrainConfig(
            batch_size=batch_size, grad_accum=grad_accum, device="cpu", precision="fp32"
        ),
    ).validate()
    torch.manual_seed(0)
    model = LoopMDM(cfg.model)
    return cfg, model, make_objective(cfg.diffusion, mask_id=63)


def plan_of(cfg, model, objective) -> MemoryModel:
    return step_memory.probe(
        model,
        objective,
        Rows(),
        CPU,
        "fp32",
        step_memory.idle_bytes(model, CPU) + step_memory.optimizer_state_bytes(model, None),
        32 * cfg.model.d_model * 4,
    )


def test_no_budget_on_cpu_is_a_no_op():
    cfg, model, _ = make_run()

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError("the pre-flight ran a step on CPU without a budget")

    assert check_memory(model, model, Untouchable(), Rows(), cfg, CPU) is None


def test_a_step_that_fits_passes_and_leaves_no_trace():
    cfg, model, obj = make_run()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng, seen = torch.random.get_rng_state(), []
    model.eval()
    report = check_memory(
        model, model, obj, Rows(), cfg, CPU, budget_bytes=1 << 40, log=seen.append
    )
    assert (report.loops, report.rows, report.measured) == (
        8,
        8,
        False,
    ) and 0 < report.needed < report.budget
    assert len(seen) == 1 and "S=8 with 8 sequences" in seen[0]
    assert torch.equal(torch.random.get_rng_state(), rng)  # the run's random streams are untouched
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # probe overrides restored
    assert cfg.model.checkpoint_loops is False and cfg.model.backprop_depth is None


def test_the_linear_model_extrapolates_in_rows_and_loops():
    """base + per-loop bytes fitted on 1-2 sequences at S = 1, 2 predict a step of 6 sequences at S = 5."""
    cfg, model, obj = make_run()
    plan = plan_of(cfg, model, obj)
    assert plan.per_loop > 0 and plan.per_row > 0
    batch, noise = step_memory.worst_case_rows(obj, Rows(), 6)
    actual = step_memory.saved_bytes(model, obj, batch, noise, 5, CPU, "fp32")
    predicted = plan.peak(6, 5) - plan.static
    assert predicted == pytest.approx(actual, rel=0.1)
    assert plan.peak(6, 5, checkpoint=True) < plan.peak(6, 5) and plan.peak(
        6, 5, depth=2
    ) < plan.peak(6, 5)


def _error(cfg, model, obj, budget) -> str:
    with pytest.raises(ConfigError) as e:
        check_memory(
            model, model, obj, Rows(), cfg, CPU, budget_bytes=int(budget), log=lambda s: None
        )
    msg = str(e.value)
    assert (
        "\n" not in msg
        and msg.startswith("memory pre-flight: one training step at S=8")
        and "8 sequences" in msg
    )
    return msg


def test_a_step_that_does_not_fit_names_the_options_that_would():
    cfg, model, obj = make_run(input_injection=True)
    plan = plan_of(cfg, model, obj)
    full, ckpt = plan.peak(8, 8), plan.peak(8, 8, checkpoint=True)
    msg = _error(cfg, model, obj, (full + ckpt) / 2)  # checkpointing fits, the plain step does not
    assert (
        "model.checkpoint_loops=true (~" in msg
        and "model.backprop_depth=" in msg
        and "train.grad_accum=" in msg
    )
    k = int(msg.split("model.backprop_depth=")[1].split()[0])
    assert plan.peak(8, 8, depth=k) <= (full + ckpt) / 2 < plan.peak(8, 8, depth=k + 1)
    half = plan.peak(4, 8)
    msg = _error(cfg, model, obj, (half + full) / 2)  # half the micro-batch fits
    assert "train.grad_accum=2 (4 sequences per micro-batch" in msg and "train.batch_size=" in msg


def test_truncated_backprop_names_input_injection_when_the_model_needs_it():
    cfg, model, obj = make_run()  # input_injection=false: backprop_depth alone would be refused
    plan = plan_of(cfg, model, obj)
    msg = _error(cfg, model, obj, (plan.peak(8, 8) + plan.peak(8, 8, depth=7)) / 2)
    assert "model.backprop_depth=7 with model.input_injection=true" in msg


def test_nothing_fits_says_so():
    cfg, model, obj = make_run()
    plan = plan_of(cfg, model, obj)
    msg = _error(cfg, model, obj, plan.static)
    assert "not even one sequence fits" in msg and "model.max_seq_len" in msg


def test_grad_accum_counts_toward_the_micro_batch():
    cfg, model, obj = make_run(batch_size=8, grad_accum=2)
    report = check_memory(
        model, model, obj, Rows(), cfg, CPU, budget_bytes=1 << 40, log=lambda s: None
    )
    assert report.rows == 4


def test_expandable_segments_only_for_cuda_and_never_over_the_users_setting(monkeypatch):
    for var in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert (
        expandable_segments(CPU) == CPU
        and "PYTORCH_CUDA_ALLOC_CONF" not in __import__("os").environ
    )
    cuda = torch.device("cuda", 0)
    assert expandable_segments(cuda) == cuda
    assert __import__("os").environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    expandable_segments(cuda)
    assert __import__("os").environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"


def test_the_trainer_has_what_the_pre_flight_takes(tiny_cfg, tmp_path):
    """The one call the trainer makes before its first step, with a budget a step cannot fit."""
    from loopmdm.train import Trainer

    tr = Trainer(tiny_cfg, tmp_path / "run", progress=False, log=lambda s: None)
    report = check_memory(
        tr.model,
        tr.train_model,
        tr.objective,
        tr.data,
        tr.cfg,
        tr.device,
        tr.dist,
        loops=tr.loop_dist.max(),
        optimizer=tr.optimizer,
        budget_bytes=1 << 40,
        log=lambda s: None,
    )
    assert report.loops == 3 and report.rows == 8
    with pytest.raises(
        ConfigError, match=r"^memory pre-flight: one training step at S=3 .*would fit: "
    ):
        check_memory(
            tr.model,
            tr.train_model,
            tr.objective,
            tr.data,
            tr.cfg,
            tr.device,
            tr.dist,
            loops=tr.loop_dist.max(),
            optimizer=tr.optimizer,
            budget_bytes=report.needed - 1,
        )


@pytest.fixture
def fake_cuda(monkeypatch):
    """The CUDA path on the CPU: allocator calls answer fixed numbers, the tiny probe steps are measured as on
    the CPU, and the real step returns ``fake_cuda["peak"]`` or, when it is None, runs out of memory."""
    state = {"peak": None}
    for name, value in {
        "synchronize": None,
        "reset_peak_memory_stats": None,
        "empty_cache": None,
        "memory_allocated": 0,
        "get_rng_state": torch.get_rng_state(),
    }.items():
        monkeypatch.setattr(torch.cuda, name, lambda *a, _v=value, **k: _v)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a, **k: None)

    def cuda_peak(model, objective, batch, noise, loops, device, precision, absolute=False):
        if not absolute:
            return step_memory.saved_bytes(model, objective, batch, noise, loops, CPU, precision)
        if state["peak"] is None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return state["peak"]

    monkeypatch.setattr(step_memory, "cuda_peak", cuda_peak)
    return state


@pytest.mark.parametrize("oom", [True, False])
def test_on_cuda_the_real_step_decides_and_the_probes_name_the_fix(fake_cuda, oom):
    cfg, model, obj = make_run(input_injection=True)
    plan = plan_of(cfg, model, obj)
    budget = (plan.peak(8, 8) + plan.peak(8, 8, checkpoint=True)) // 2
    fake_cuda["peak"] = None if oom else plan.peak(8, 8)
    with pytest.raises(ConfigError) as e:
        check_memory(model, model, obj, Rows(), cfg, torch.device("cuda"), budget_bytes=budget)
    msg = str(e.value)
    assert ("ran out of device memory (estimated" in msg) == oom and ("(measured)" in msg) != oom, (
        msg
    )
    assert "model.checkpoint_loops=true" in msg and "\n" not in msg
    fake_cuda["peak"] = budget // 2
    report = check_memory(
        model, model, obj, Rows(), cfg, torch.device("cuda"), budget_bytes=budget, log=print
    )
    assert report.measured and report.needed == budget // 2 + step_memory.optimizer_state_bytes(
        model, None
    )


@pytest.mark.parametrize("change", ["complementary_masks", "deep_supervision", "checkpoint_loops"])
def test_other_objectives_and_models_are_probed_with_full_backprop(change):
    """Complementary masks (rows in pairs), random deep supervision and checkpointed loops: the probes still run
    (1-sequence probes, every loop supervised, no checkpointing) and what they changed is restored."""
    cfg, model, obj = make_run()
    if change == "checkpoint_loops":
        model.config.checkpoint_loops = True
    elif change == "deep_supervision":
        obj.deep_supervision = "random"
    else:
        obj.complementary_masks = True
    plan = plan_of(cfg, model, obj)
    assert plan.per_loop > 0
    assert model.config.checkpoint_loops == (change == "checkpoint_loops")
    assert obj.deep_supervision == ("random" if change == "deep_supervision" else "none")
