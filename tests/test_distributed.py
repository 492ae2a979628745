"""Distributed training on CPU / Gloo: 2 processes == 1 process on the same global batch (gradients, S, the
trained weights), FSDP2 runs and checkpoints like a single process, and the bad-input errors."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from conftest import make_tiny_cfg
from loopmdm.train import distributed
from loopmdm.checkpoint import load_model
from loopmdm.config import RunConfig
from loopmdm.data import prepare_data
from loopmdm.diffusion import MaskedDiffusion, get_schedule
from loopmdm.train.distributed import DistEnv, check_global_batch, rank_slice, torchrun_env
from loopmdm.errors import ConfigError

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this PyTorch build has no torch.distributed / Gloo")


# --------------------------------------------------------------------------- single-process units

def test_torchrun_env_detection():
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4, 1)
    with pytest.raises(ConfigError, match="inconsistent"):
        torchrun_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_global_batch_must_split_over_ranks():
    env = DistEnv(rank=1, world_size=3)
    with pytest.raises(ConfigError, match=r"batch_size=8 is not divisible by world_size x grad_accum = 3 x 1"):
        check_global_batch(8, 1, env)
    check_global_batch(12, 2, DistEnv(rank=0, world_size=2))
    assert rank_slice(12, env) == slice(4, 8)


def test_trainer_checks_the_global_batch_under_torchrun(tiny_cfg, tmp_path, monkeypatch):
    from loopmdm.train import Trainer

    monkeypatch.setattr(distributed, "setup", lambda device, **kw: DistEnv(rank=0, world_size=3, device=device))
    with pytest.raises(ConfigError, match="world_size x grad_accum = 3 x 1"):
        Trainer(tiny_cfg, tmp_path / "run", progress=False, log=lambda s: None)


@pytest.mark.parametrize("world, accum", [(2, 1), (2, 2), (4, 1)])
def test_each_rank_and_micro_batch_gets_its_slice_of_one_global_noise_draw(world, accum):
    """The objective draws t and the mask uniforms over the global batch; a rank's micro-batch slices its rows, so
    the noise a row gets never depends on how many draws happen on which rank."""
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=3)
    rows, L = 8, 5
    g_ref = torch.Generator().manual_seed(0)
    ref = obj.draw(rows, L, g_ref)
    after = torch.rand(3, generator=g_ref)
    for rank in range(world):
        gen = torch.Generator().manual_seed(0)
        own = rank_slice(rows, DistEnv(rank=rank, world_size=world))
        mine = obj.draw(rows, L, gen).rows(own)
        micro = (own.stop - own.start) // accum
        for m in range(accum):
            part = mine.rows(slice(m * micro, (m + 1) * micro))
            lo, hi = own.start + m * micro, own.start + (m + 1) * micro
            assert torch.equal(part.u, ref.u[lo:hi]) and torch.equal(part.t, ref.t[lo:hi])
        assert torch.equal(torch.rand(3, generator=gen), after)  # every rank leaves in the same state


def test_fsdp_needs_several_processes():
    from loopmdm.config import ModelConfig
    from loopmdm.model import LoopMDM

    model = LoopMDM(ModelConfig(vocab_size=64, max_seq_len=8, d_model=16, n_heads=2, n_layers=3, n_h=1, n_m=1,
                                 n_o=1, cond_dim=8))
    with pytest.raises(ConfigError, match="train.fsdp=true needs several processes"):
        distributed.wrap_model(model, DistEnv(), fsdp=True)


# --------------------------------------------------------------------------- 2 processes, Gloo

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record_steps(trainer) -> list[dict]:
    """Wrap ``trainer.step_fn``: record S, the loss and grad norm of every step and the first step's gradients
    (taken before the optimizer moves the weights)."""
    seen, step_fn = [], trainer.step_fn

    def recording(idx, loops):
        loss, gnorm = step_fn(idx, loops)
        rec = {"loops": loops, "loss": loss, "gnorm": gnorm}
        if not seen:
            rec["grads"] = {n: p.grad.detach().clone().contiguous() for n, p in trainer.model.named_parameters()
                            if p.grad is not None}
        seen.append(rec)
        return loss, gnorm

    trainer.step_fn = recording
    return seen


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    """One torchrun-like rank: the trainer finds RANK / WORLD_SIZE / MASTER_* and joins the Gloo group."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from loopmdm.config import RunConfig
    from loopmdm.train import Trainer

    out = Path(out)
    quiet = dict(progress=False, log=lambda s: None)
    # (1) a short DDP run recording S on every rank, and (2) the gradients of its first step
    trainer = Trainer(RunConfig.from_dict(cfg_dict).validate(), out / "ddp_run", **quiet)
    seen = _record_steps(trainer)
    trainer.fit()
    (out / f"loops{rank}.json").write_text(json.dumps([s["loops"] for s in seen]))
    save_file(seen[0].pop("grads"), str(out / f"grads{rank}.safetensors"))
    (out / f"step{rank}.json").write_text(json.dumps(seen[0]))
    # (3) the same run sharded with FSDP2 (EMA included), checkpointed through the ordinary writer
    fsdp_cfg = RunConfig.from_dict(cfg_dict)
    fsdp_cfg.train.fsdp, fsdp_cfg.train.ema = True, 0.5
    Trainer(fsdp_cfg.validate(), out / "fsdp_run", **quiet).fit()
    # (4) a backend whose reduce-scatter does not work must be refused before training
    from loopmdm.model import LoopMDM

    def broken(*args, **kwargs):
        raise RuntimeError("ProcessGroupGloo does not support reduce_scatter")

    for name in ("reduce_scatter_single", "reduce_scatter_tensor"):
        if hasattr(dist, name):
            setattr(dist, name, broken)
    try:
        distributed.wrap_model(LoopMDM(fsdp_cfg.model), trainer.dist, fsdp=True)
    except ConfigError as e:
        (out / f"fsdp_error{rank}.txt").write_text(str(e))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tiny_corpus, tmp_path_factory):
    """Run the 2-process worker once (Gloo, CPU) and the same three things in this single process."""
    root = tmp_path_factory.mktemp("dist")
    cfg = make_tiny_cfg(tiny_corpus, root / "cache")
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.save_every, cfg.train.grad_accum = 3, 3, 3, 2
    cfg.validate()
    prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len)  # the workers find the cache
    mp.spawn(_worker, args=(2, _free_port(), cfg.to_dict(), str(root)), nprocs=2, join=True)

    from loopmdm.train import Trainer

    quiet = dict(progress=False, log=lambda s: None)
    single = Trainer(RunConfig.from_dict(cfg.to_dict()).validate(), root / "single_run", **quiet)
    seen = _record_steps(single)
    single.fit()
    ema_cfg = RunConfig.from_dict(cfg.to_dict())
    ema_cfg.train.ema = 0.5
    Trainer(ema_cfg.validate(), root / "single_ema_run", **quiet).fit()
    return root, seen[0]


def test_ddp_step_gradients_equal_single_process(two_ranks):
    root, ref = two_ranks
    for rank in (0, 1):
        step = json.loads((root / f"step{rank}.json").read_text())
        assert step["loops"] == ref["loops"]
        assert step["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        assert step["gnorm"] == pytest.approx(ref["gnorm"], rel=1e-5)
        grads = load_file(str(root / f"grads{rank}.safetensors"))
        assert grads.keys() == ref["grads"].keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, ref["grads"][name], rtol=1e-5, atol=1e-7, msg=name)


def test_loop_count_identical_across_ranks(two_ranks):
    root, _ = two_ranks
    s0, s1 = (json.loads((root / f"loops{r}.json").read_text()) for r in (0, 1))
    single = [json.loads(line)["loops"] for line in (root / "single_run" / "metrics.jsonl").read_text().splitlines()]
    assert s0 == s1 == single and len(s0) == 3


def test_ddp_run_matches_single_process_and_logs_once(two_ranks):
    root, _ = two_ranks
    rows = [json.loads(x) for x in (root / "ddp_run" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (root / "single_run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # rank 0 alone writes
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], rel=1e-5)
    _assert_same_weights(root / "ddp_run", root / "single_run")


def test_fsdp_run_matches_single_process(two_ranks):
    root, _ = two_ranks
    _assert_same_weights(root / "fsdp_run", root / "single_ema_run")
    _assert_same_weights(root / "fsdp_run", root / "single_ema_run", ema=True)
    ckpt = root / "fsdp_run" / "checkpoints" / "step_000003"
    assert (ckpt / "optimizer.safetensors").is_file() and (ckpt / "ema.safetensors").is_file()


def test_fsdp_on_a_backend_without_its_collectives_is_refused(two_ranks):
    root, _ = two_ranks
    for rank in (0, 1):
        msg = (root / f"fsdp_error{rank}.txt").read_text()
        assert "cannot run FSDP" in msg and "train.fsdp=false" in msg


def _assert_same_weights(run_a: Path, run_b: Path, ema: bool = False) -> None:
    a, _, _ = load_model(run_a, ema=ema)
    b, _, _ = load_model(run_b, ema=ema)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-6, msg=k)


# --------------------------------------------------------------------------- the torchrun entry point

@pytest.mark.slow
def test_torchrun_module_entry(tiny_corpus, tmp_path):
    """`torchrun --nproc_per_node 2 -m loopmdm.cli train ...` trains, reports once and checkpoints on rank 0."""
    sets = {"model.vocab_size": 320, "model.max_seq_len": 32, "model.d_model": 32, "model.n_heads": 2,
            "model.n_layers": 4, "model.n_h": 1, "model.n_m": 2, "model.n_o": 1, "model.cond_dim": 16,
            "train.batch_size": 8, "train.precision": "fp32", "train.device": "cpu", "train.eval_every": 2,
            "train.save_every": 2, "train.eval_batches": 1, "data.val_fraction": 0.2,
            "data.cache_dir": str(tmp_path / "cache"), "data.source": str(tiny_corpus), "diffusion.s_max": 3}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "loopmdm.cli", "train", "--out", str(tmp_path / "run"), "--max-steps", "2", "--no-progress",
                        "--json", *args], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["step"] == 2
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert load_model(tmp_path / "run")[2].train.max_steps == 2
