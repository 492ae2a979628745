"""Data-parallel training on PyTorch's own engine: torchrun detection, DDP, FSDP2 and the global batch.

Launch with ``torchrun --nproc_per_node N -m loopmdm.cli train ...``;
the trainer reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins the process group
(NCCL on CUDA, Gloo on CPU). Without those variables everything here is a no-op, so single-process
training runs the exact same code.

The invariants that keep DDP / FSDP a pure speed-up (one step over W ranks == one step of one process
on the same global batch):

* every rank draws the same global batch indices, the same antithetic times t over the *global* batch
  (DUO / MDLM) and the same loop count S from identically seeded generators; each rank keeps the rows
  ``rank_slice`` gives it, with their t;
* the per-token mask noise of the forward process q(x_t | x_0) is drawn with t over the global batch by the
  objective (``Objective.draw``) and sliced like the rows, so it never depends on how many draws happen where;
* DDP / FSDP average gradients over ranks; every rank holds the same number of tokens, so the average of
  per-rank means is the global mean.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ConfigError, LoopMDMError
from ..model.layers import Block

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node, the
    collective ``backend`` (None when not distributed) and the ``device`` it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that logs, writes metrics and writes checkpoints."""
        return self.rank == 0


def torchrun_env(environ: Optional[dict[str, str]] = None) -> Optional[tuple[int, int, int]]:
    """``(rank, world_size, local_rank)`` when launched by torchrun (its variables are set), else None."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local = int(environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ConfigError(
            f"torchrun variables RANK={environ.get('RANK')!r} WORLD_SIZE={environ.get('WORLD_SIZE')!r} "
            "are not integers; launch with torchrun or unset them"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(
            f"RANK={rank} / WORLD_SIZE={world} is inconsistent; launch with torchrun or unset them"
        )
    return rank, world, local


def setup(device: torch.device, timeout_s: float = 1800.0) -> DistEnv:
    """Join torchrun's process group when launched by torchrun (NCCL on CUDA, Gloo on CPU); otherwise return
    a single-process ``DistEnv`` on ``device``. On CUDA each rank takes ``cuda:LOCAL_RANK``."""
    found = torchrun_env()
    if found is None or found[1] == 1 and not dist.is_initialized():
        return DistEnv(device=device)
    rank, world, local = found
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} CUDA devices; "
                "set torchrun --nproc_per_node to at most the number of GPUs"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        available = {"nccl": dist.is_nccl_available(), "gloo": dist.is_gloo_available()}
        if not available[backend]:
            raise ConfigError(
                f"this PyTorch build has no {backend} backend for distributed training on "
                f"{device.type}; install a build with {backend} or train on one process"
            )
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ConfigError(
                f"RANK / WORLD_SIZE are set but {', '.join(missing)} is not; launch with torchrun "
                "(it sets all of them) or unset RANK and WORLD_SIZE for one process"
            )
        dist.init_process_group(
            backend,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    else:
        backend = dist.get_backend()
    return DistEnv(rank=rank, world_size=world, local_rank=local, backend=backend, device=device)


def teardown(env: DistEnv) -> None:
    """Leave the process group (at the end of a torchrun launch)."""
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the global batch


def check_global_batch(batch_size: int, grad_accum: int, env: DistEnv) -> None:
    """The global batch (``train.batch_size`` sequences) must split evenly into ranks x micro-batches."""
    parts = env.world_size * grad_accum
    if batch_size % parts:
        raise ConfigError(
            f"train.batch_size={batch_size} is not divisible by world_size x grad_accum = {env.world_size} x "
            f"{grad_accum} = {parts}; pick a global batch that is a multiple of {parts} "
            f"(e.g. --set train.batch_size={max(parts, batch_size // parts * parts)})"
        )


def rank_slice(n: int, env: DistEnv) -> slice:
    """This rank's contiguous share of a global batch of ``n`` rows (rank r gets rows r*n/W .. (r+1)*n/W)."""
    if n % env.world_size:
        raise ConfigError(f"a global batch of {n} rows does not split over {env.world_size} ranks")
    per = n // env.world_size
    return slice(env.rank * per, (env.rank + 1) * per)


# --------------------------------------------------------------------------- wrapping


def wrap_model(
    model: nn.Module, env: DistEnv, fsdp: bool = False, precision: str = "fp32"
) -> nn.Module:
    """The module to train: ``model`` itself (one process), a DDP wrapper, or ``model`` sharded in place
    with FSDP2 (``shard_fsdp``; ``precision`` is ``train.precision`` and picks its mixed-precision policy)."""
    if fsdp:
        if not env.enabled:
            raise ConfigError(
                "train.fsdp=true needs several processes: launch with "
                "torchrun --nproc_per_node N (N >= 2), or set train.fsdp=false"
            )
        check_fsdp_backend(env)
        return shard_fsdp(model, precision)
    if not env.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)


def fsdp_mixed_precision(precision: str):
    """FSDP2's ``MixedPrecisionPolicy`` for ``train.precision``: bf16 parameters for compute with gradients
    reduced in fp32 under ``bf16``; fp32 throughout otherwise. Forward inputs are never cast
    (``cast_forward_inputs=False``): the times t and the loss weights stay fp32, autocast picks each op's dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    param = torch.bfloat16 if precision == "bf16" else torch.float32
    return MixedPrecisionPolicy(
        param_dtype=param, reduce_dtype=torch.float32, cast_forward_inputs=False
    )


def shard_fsdp(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """Shard ``model`` in place with FSDP2 ``fully_shard``.

    Each head (n_h) and tail (n_o) block is its own unit: all-gathered for its forward, resharded, gathered
    again for its backward. The shared mid block (n_m layers, run S times per step) is *not* its own unit: a
    unit called S times is gathered on every loop, forward and backward (2S + 1 all-gathers per step). Its
    parameters join the root unit (embeddings, time MLP, LM head), sharded with ``reshard_after_forward=False``:
    gathered once when the step's forward starts, kept through all S loops and their backward, their gradients
    reduce-scattered once when backward ends. The all-gathers per optimizer step are then the same at every S
    (1 + 2 (n_h + n_o) per micro-batch), at the memory cost of the n_m mid layers held unsharded for the step."""
    from torch.distributed.fsdp import fully_shard

    mp = fsdp_mixed_precision(precision)
    mid = getattr(model, "mid", None)
    looped = {id(m) for m in mid.modules()} if isinstance(mid, nn.Module) else set()
    for module in model.modules():
        if isinstance(module, Block) and id(module) not in looped:
            fully_shard(module, mp_policy=mp)
    # root unit: + the mid block's parameters
    fully_shard(model, reshard_after_forward=False, mp_policy=mp)
    return model


def check_fsdp_backend(env: DistEnv) -> None:
    """FSDP2 shards parameters with all-gather and reduce-scatter of flat tensors; some backends (and older
    Gloo builds) cannot run those. Probe both on a tiny tensor and fail with the fix instead of mid-step."""
    w = env.world_size
    probe = torch.ones(w, device=env.device)
    try:
        gathered = torch.empty(w * w, device=env.device)
        getattr(dist, "all_gather_single", dist.all_gather_into_tensor)(gathered, probe)
        out = torch.empty(1, device=env.device)
        getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)(out, probe)
    except (RuntimeError, NotImplementedError, ValueError) as e:
        raise ConfigError(
            f"train.fsdp=true but the {env.backend} backend on {env.device.type} cannot run FSDP's collectives "
            f"({str(e).splitlines()[0][:90]}); use NCCL on CUDA GPUs or set train.fsdp=false (DDP)"
        ) from None
    if not torch.allclose(gathered, torch.ones_like(gathered)) or float(out) != w:
        raise ConfigError(
            f"train.fsdp=true but the {env.backend} backend returned wrong collective results; "
            "set train.fsdp=false (DDP)"
        )


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` was wrapped with FSDP2 (its parameters are DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch (accumulation)."""
    if not enabled and hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    yield


# --------------------------------------------------------------------------- collectives


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first(env: DistEnv) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. tokenising and writing the data cache); the others then run it and
    find the cache."""
    if env.enabled and not env.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if env.enabled and env.is_main:
            dist.barrier()


def check_same_data(data, env: DistEnv) -> None:
    """Every rank must train on the same packed rows with the same tokenizer (each indexes the global batch
    itself). Compare a digest of the tokenizer, the array shapes and the first rows across ranks; a mismatch
    means the ranks built different caches, e.g. on nodes without a shared ``data.cache_dir``."""
    if not env.enabled:
        return
    h = hashlib.sha1(data.tokenizer.tok.to_str().encode())
    for arr in (data.train, data.val):
        h.update(repr(arr.shape).encode())
        h.update(arr[:64].tobytes())
    digest = int.from_bytes(h.digest()[:7], "big")
    t = torch.tensor([digest, -digest], dtype=torch.int64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != digest or int(t[1]) != -digest:
        raise ConfigError(
            "the ranks prepared different training data (tokenizer or packed rows differ); put "
            "data.cache_dir on a filesystem all nodes share, or tokenise once and copy the cache"
        )


# --------------------------------------------------------------------------- full (unsharded) state


def full_model_state(model: nn.Module, all_ranks: bool = False) -> dict[str, torch.Tensor]:
    """The full state dict; with FSDP2 it is gathered (a collective: call on every rank) to rank 0's CPU,
    or to every rank when ``all_ranks``."""
    if not is_sharded(model):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=not all_ranks)
    )


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into a plain or FSDP2-sharded model (every rank passes the same dict)."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` in the ordinary (parameter index) layout; with FSDP2 it is gathered to full
    tensors first (a collective), so checkpoints look the same however the run was launched."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    osd = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    # (ranks other than 0 receive an empty dict: only rank 0 writes checkpoints)
    index, groups = ({}, [])
    for g in osd.get("param_groups", []):
        ids = []
        for fqn in g["params"]:
            index.setdefault(fqn, len(index))
            ids.append(index[fqn])
        groups.append(dict(g, params=ids))
    return {"state": {index[k]: v for k, v in osd.get("state", {}).items()}, "param_groups": groups}


def load_full_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Inverse of ``full_optimizer_state``."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(p): n for n, p in model.named_parameters()}
    fqns = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    osd = {
        "state": {fqns[int(i)]: v for i, v in state["state"].items()},
        "param_groups": [
            dict(g, params=[fqns[int(i)] for i in g["params"]]) for g in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))


def make_ema(model: nn.Module, decay: float, env: DistEnv, build: Callable[[], nn.Module]):
    """An exponential moving average of ``model``'s weights (``torch.optim.swa_utils.AveragedModel``).

    FSDP2 modules cannot be deep-copied, so for a sharded model the average starts from a plain model
    (``build()``) loaded with the gathered weights, and is then sharded the same way."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if not is_sharded(model):
        return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    plain = build().to(env.device)
    plain.load_state_dict(full_model_state(model, all_ranks=True))
    ema = AveragedModel(plain, multi_avg_fn=get_ema_multi_avg_fn(decay))
    wrap_model(ema.module, env, fsdp=True)
    return ema


class StepAgreement:
    """One tiny collective per step that the host never waits for: every rank contributes (S, -S, stop) to a MAX
    all-reduce queued on the device, and reads the result of the *previous* step's (long finished by then). So
    all ranks stop, and save, at the same step, one step after any rank was asked to; a rank whose loop count S
    differed from another's (out-of-sync loop generators would desynchronise compute and the FLOP accounting)
    is caught one step late. One process: ``stop`` is returned as it is."""

    def __init__(self, env: DistEnv):
        self.env = env
        self.requested = False  # this rank's request, kept until every rank has seen it
        self.pending: Optional[tuple[torch.Tensor, int, Any]] = None  # (result, S, CUDA event)

    def __call__(self, loops: int, stop: bool) -> bool:
        """Queue this step's contribution; True when the previous step's all-reduce says to stop."""
        if not self.env.enabled:
            return stop
        self.requested = self.requested or stop
        t = torch.tensor([loops, -loops, int(self.requested)], dtype=torch.int64)
        cuda = self.env.device.type == "cuda"
        if cuda:
            t = t.pin_memory().to(self.env.device, non_blocking=True)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        event = None
        if cuda:
            t = t.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        previous, self.pending = self.pending, (t, loops, event)
        return False if previous is None else self._read(*previous)

    def flush(self) -> bool:
        """Read the last queued result (at the end of training)."""
        previous, self.pending = self.pending, None
        return False if previous is None else self._read(*previous)

    def _read(self, t: torch.Tensor, loops: int, event: Any) -> bool:
        if event is not None:
            event.synchronize()  # that step's work, not the steps queued since
        hi, neg_lo, stop = (int(v) for v in t.tolist())
        if hi != loops or -neg_lo != loops:
            raise LoopMDMError(
                f"rank {self.env.rank} drew loop count S={loops} but another rank drew S in "
                f"[{-neg_lo}, {hi}]; the loop generators are out of sync (same train.seed "
                "and the same checkpoint on every rank are required)"
            )
        return bool(stop)
