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
from loopmdm.checkpoint import load_model
from loopmdm.config import RunConfig
from loopmdm.data import prepare_data
from loopmdm.diffusion import MaskedDiffusion, get_schedule
from loopmdm.errors import ConfigError
from loopmdm.train import distributed
from loopmdm.train.distributed import DistEnv, check_global_batch, rank_slice, torchrun_env

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="this PyTorch build has no torch.distributed / Gloo",
)


# --------------------------------------------------------------------------- single-process units


def test_torchrun_env_detection():
    assert torchrun_env({}) is None
    assert torchrun_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4, 1)
    with pytest.raises(ConfigError, match="inconsistent"):
        torchrun_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_global_batch_must_split_over_ranks():
    env = DistEnv(rank=1, world_size=3)
    with pytest.raises(
        ConfigError, match=r"batch_size=8 is not divisible by world_size x grad_accum = 3 x 1"
    ):
        check_global_batch(8, 1, env)
    check_global_batch(12, 2, DistEnv(rank=0, world_size=2))
    assert rank_slice(12, env) == slice(4, 8)


def test_trainer_checks_the_global_batch_under_torchrun(tiny_cfg, tmp_path, monkeypatch):
    from loopmdm.train import Trainer

    monkeypatch.setattr(
        distributed, "setup", lambda device, **kw: DistEnv(rank=0, world_size=3, device=device)
    )
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
        # every rank leaves in the same state
        assert torch.equal(torch.rand(3, generator=gen), after)


def test_step_agreement_reads_the_previous_steps_result(monkeypatch):
    """Under torchrun the stop / loop-count agreement never makes the host wait for the step it queued: step k
    reads step k - 1's all-reduce, so every rank stops one step after any rank asked, a rank's own request is
    kept until then, and a loop count that differs between ranks is caught (one step late)."""
    from loopmdm.errors import LoopMDMError

    other = {"loops": 2, "stop": False}  # the other rank's contribution

    def all_reduce(t, op=None):
        t.copy_(
            torch.maximum(t, torch.tensor([other["loops"], -other["loops"], int(other["stop"])]))
        )

    monkeypatch.setattr(distributed.dist, "all_reduce", all_reduce)
    env = DistEnv(rank=0, world_size=2)
    a = distributed.StepAgreement(env)
    assert a(2, False) is False  # nothing queued before
    other["stop"] = True  # the other rank is asked to stop at step 2
    assert a(2, False) is False  # step 2 reads step 1
    other["stop"] = False
    assert a(2, False) is True  # step 3 reads step 2: every rank stops here
    b = distributed.StepAgreement(env)
    assert b(2, True) is False and b(2, False) is True  # this rank's own request, kept
    assert distributed.StepAgreement(DistEnv())(3, True) is True  # one process: at once
    c = distributed.StepAgreement(env)
    other["loops"] = 3
    c(2, False)
    with pytest.raises(LoopMDMError, match="out of sync"):
        c(2, False)
    with pytest.raises(LoopMDMError, match="out of sync"):
        c.flush()  # the last step's result, read at the end of training
    assert c.flush() is False


def test_fsdp_needs_several_processes():
    from loopmdm.config import ModelConfig
    from loopmdm.model import LoopMDM

    model = LoopMDM(
        ModelConfig(
            vocab_size=64,
            max_seq_len=8,
            d_model=16,
            n_heads=2,
            n_layers=3,
            n_h=1,
            n_m=1,
            n_o=1,
            cond_dim=8,
        )
    )
    with pytest.raises(ConfigError, match="train.fsdp=true needs several processes"):
        distributed.wrap_model(model, DistEnv(), fsdp=True)


# --------------------------------------------------------------------------- 2 processes, Gloo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record_steps(trainer) -> list[dict]:
    """Wrap ``trainer._step``: record S, the loss and grad norm of every step and the first step's gradients
    (taken before the optimizer moves the weights)."""
    seen, step_fn = [], trainer._step

    def recording(idx, loops):
        loss, gnorm = step_fn(idx, loops)
        # (device scalars or floats)
        rec = {"loops": loops, "loss": float(loss), "gnorm": float(gnorm)}
        if not seen:
            rec["grads"] = {
                n: p.grad.detach().clone().contiguous()
                for n, p in trainer.model.named_parameters()
                if p.grad is not None
            }
        seen.append(rec)
        return loss, gnorm

    trainer._step = recording
    return seen


def _worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    """One torchrun-like rank: the trainer finds RANK / WORLD_SIZE / MASTER_* and joins the Gloo group."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
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
    cfg.train.max_steps, cfg.train.eval_every, cfg.train.save_every, cfg.train.grad_accum = (
        3,
        3,
        3,
        2,
    )
    cfg.validate()
    # the workers find the cache
    prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len)
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
    single = [
        json.loads(line)["loops"]
        for line in (root / "single_run" / "metrics.jsonl").read_text().splitlines()
    ]
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
    sets = {
        "model.vocab_size": 320,
        "model.max_seq_len": 32,
        "model.d_model": 32,
        "model.n_heads": 2,
        "model.n_layers": 4,
        "model.n_h": 1,
        "model.n_m": 2,
        "model.n_o": 1,
        "model.cond_dim": 16,
        "train.batch_size": 8,
        "train.precision": "fp32",
        "train.device": "cpu",
        "train.eval_every": 2,
        "train.save_every": 2,
        "train.eval_batches": 1,
        "data.val_fraction": 0.2,
        "data.cache_dir": str(tmp_path / "cache"),
        "data.source": str(tiny_corpus),
        "diffusion.s_max": 3,
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "loopmdm.cli",
            "train",
            "--out",
            str(tmp_path / "run"),
            "--max-steps",
            "2",
            "--no-progress",
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["step"] == 2
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert load_model(tmp_path / "run")[2].train.max_steps == 2


# --------------------------------------------------------------------------- FSDP2: the looped mid block


def test_fsdp_mixed_precision_follows_train_precision():
    bf16, fp32 = distributed.fsdp_mixed_precision("bf16"), distributed.fsdp_mixed_precision("fp32")
    assert (bf16.param_dtype, bf16.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert (fp32.param_dtype, fp32.reduce_dtype) == (torch.float32, torch.float32)
    assert not bf16.cast_forward_inputs  # t and the loss weights stay fp32


def _count_collectives() -> dict:
    """Patch the all-gather / reduce-scatter entry points FSDP2 calls (``all_gather_single`` in torch >= 2.13,
    ``all_gather_into_tensor`` before) to count calls in this process; returns the live counters."""
    counts = {"all_gather": 0, "reduce_scatter": 0}
    names = {
        "all_gather_single": "all_gather",
        "all_gather_into_tensor": "all_gather",
        "reduce_scatter_single": "reduce_scatter",
        "reduce_scatter_tensor": "reduce_scatter",
    }
    for name, key in names.items():
        if hasattr(dist, name):

            def counted(*args, _f=getattr(dist, name), _k=key, **kwargs):
                counts[_k] += 1
                return _f(*args, **kwargs)

            setattr(dist, name, counted)
    return counts


def _gather_count_worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: a tiny LoopMDM (n_h = 1, n_m = 2, n_o = 1) sharded with ``wrap_model(fsdp=True)``; the memory
    pre-flight on it (the probes are collective; a budget no step fits fails on both ranks), then per optimizer
    step at S = 1, 4, 8 (fp32, then bf16 at S = 4) count the collectives, compare the gathered gradients with
    the unsharded model's on the global batch, and record the dtype the mid block computes with."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from types import SimpleNamespace

    from loopmdm.config import DiffusionConfig, ModelConfig, TrainConfig
    from loopmdm.diffusion import Batch
    from loopmdm.model import LoopMDM
    from loopmdm.train.preflight import check_memory
    from loopmdm.train.step import train_step

    env = DistEnv(rank=rank, world_size=world, backend="gloo")
    cfg = ModelConfig(
        vocab_size=64,
        max_seq_len=16,
        d_model=16,
        n_heads=2,
        n_layers=4,
        n_h=1,
        n_m=2,
        n_o=1,
        cond_dim=8,
    )
    obj = MaskedDiffusion(get_schedule("loglinear"), mask_id=63)
    gen = torch.Generator().manual_seed(1)
    results, counts = [], _count_collectives()
    for precision, loop_counts in (("fp32", (1, 1, 4, 8)), ("bf16", (4,))):
        torch.manual_seed(0)
        model, ref = LoopMDM(cfg), LoopMDM(cfg)
        ref.load_state_dict(model.state_dict())
        distributed.wrap_model(model, env, fsdp=True, precision=precision)
        mid_dtypes = []
        model.mid.register_forward_pre_hook(
            lambda m, a, mid_dtypes=mid_dtypes: mid_dtypes.append(
                str(m.blocks[0].attn.qkv.weight.dtype)
            )
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        if precision == "fp32":
            run = SimpleNamespace(
                model=cfg, diffusion=DiffusionConfig(s_max=8), train=TrainConfig(batch_size=4)
            )
            rows = torch.randint(0, 63, (8, 16), generator=torch.Generator().manual_seed(2)).numpy()
            data = SimpleNamespace(
                train=rows, batch=lambda split, idx, rows=rows: Batch(torch.from_numpy(rows[idx]))
            )
            found = check_memory(
                model,
                model,
                obj,
                data,
                run,
                torch.device("cpu"),
                env,
                budget_bytes=1 << 40,
                log=lambda s: None,
            )
            try:
                check_memory(
                    model,
                    model,
                    obj,
                    data,
                    run,
                    torch.device("cpu"),
                    env,
                    budget_bytes=found.needed // 2,
                )
            except ConfigError as e:
                results.append({"preflight": found.needed, "rows": found.rows, "error": str(e)})
        for loops in loop_counts:
            x0, own = torch.randint(0, 63, (4, 16), generator=gen), rank_slice(4, env)
            noise = obj.draw(4, 16, gen)
            counts.update(all_gather=0, reduce_scatter=0)
            train_step(
                model,
                model,
                obj,
                Batch(x0[own]),
                noise.rows(own),
                loops,
                grad_accum=1,
                precision=precision,
                grad_clip=0.0,
                device=torch.device("cpu"),
                dist=env,
            )
            step = dict(counts, loops=loops, precision=precision, mid_dtype=sorted(set(mid_dtypes)))
            obj.loss(ref, Batch(x0), loops, noise).loss.backward()
            step["grad_err"] = max(
                float((p.grad.full_tensor() - r.grad).abs().max() / r.grad.abs().max())
                for p, r in zip(model.parameters(), ref.parameters())
                if r.grad is not None
            )
            step["grad_dtype"] = sorted(
                {str(p.grad.dtype) for p in model.parameters() if p.grad is not None}
            )
            opt.step(), ref_opt.step()
            opt.zero_grad(), ref_opt.zero_grad()
            mid_dtypes.clear()
            results.append(step)
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def test_fsdp_gathers_the_looped_mid_block_once_per_step(tmp_path):
    """The mid block runs S times per step on shared weights; FSDP2 must all-gather it once per step (not per
    loop, forward and backward), so the all-gathers per optimizer step are the same at S = 1, 4, 8."""
    out = tmp_path / "gathers.json"
    mp.spawn(_gather_count_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    steps = json.loads(out.read_text())
    pre = steps.pop(0)  # the pre-flight ran on the sharded model and left the steps after it exact
    assert pre["rows"] == 2 and pre["preflight"] > 0, pre
    assert (
        pre["error"].startswith("memory pre-flight: one training step at S=8 (")
        and "would fit: " in pre["error"]
    )
    # (S = 1 twice: the second is warm)
    fp32 = {s["loops"]: s for s in steps if s["precision"] == "fp32"}
    gathers = {loops: s["all_gather"] for loops, s in fp32.items()}
    # root (+ mid) once, head / tail 2x
    assert gathers[1] == gathers[4] == gathers[8] == 1 + 2 * (1 + 1), gathers
    assert len({s["reduce_scatter"] for s in fp32.values()}) == 1
    for s in fp32.values():  # gradients are the unsharded model's on the global batch
        assert s["grad_err"] < 1e-5 and s["mid_dtype"] == ["torch.float32"], s
    bf16 = next(s for s in steps if s["precision"] == "bf16")
    assert bf16["all_gather"] == gathers[1] and bf16["mid_dtype"] == ["torch.bfloat16"], bf16
    # reduced in fp32
    assert bf16["grad_dtype"] == ["torch.float32"] and bf16["grad_err"] < 0.1, bf16
