"""A run's checkpoints as the Trainer writes and reads them: ``save`` (everything an exact resume needs: weights,
optimizer moments, LR schedule, EMA, every random state, the data position, the progressive pool, the step and
FLOP counters), ``resume`` (restore all of it, so training continues as if never stopped) and
``start_from_init`` (fine-tuning: weights only, from ``train.init``). The files and their atomic writes are
``loopmdm.checkpoint``'s; the random states and the checks that a checkpoint belongs to this run are
``resume``'s. ``tr`` is the ``Trainer`` (not imported here: it imports this module)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import (
    checked_weights,
    list_checkpoints,
    load_config_file,
    load_json,
    load_safetensors,
    save_checkpoint,
    unflatten_optimizer,
    uses_ema,
)
from ..diffusion.progressive import ProgressivePool
from ..errors import CheckpointError
from . import distributed
from .guard import TrainingDiverged, divergence_message
from .init import check_init_model, check_init_tokenizer, init_folder
from .resume import (
    check_resumable,
    global_random_state,
    restore_global_random,
    restore_rng,
    resumable_folder,
    rng_tensors,
    truncate_metrics,
)


def save(tr) -> Path:
    """Write a checkpoint of everything an exact resume needs. Weights that are no longer finite are never
    saved (the last good checkpoint stays ``latest``)."""
    params = [] if distributed.is_sharded(tr.model) else tr.model.named_parameters()
    bad = [n for n, p in params if not bool(torch.isfinite(p).all())]
    if bad:  # DDP replicas hold identical weights, so every rank takes this branch together
        why = divergence_message(tr.cfg, tr.run_dir, 0, tr.step, float("nan"), float("nan"))
        raise TrainingDiverged(
            f"the weights became non-finite ({bad[0]}) at step {tr.step}; not saving. "
            + why.split("; ", 1)[1]
        )
    tied = tr.cfg.model.tie_embeddings
    extra = {"rng": rng_tensors(tr.gen_noise, tr.gen_loops, tr.device, tr.dist)}
    if tr.pool is not None:
        extra["pool"] = tr.pool.state_dict()
    if tr.ema is not None:
        extra["ema"] = {
            k: v
            for k, v in distributed.full_model_state(tr.ema.module).items()
            if not (tied and k == "lm_head.weight")
        }
    state = {
        "step": tr.step,
        "flops": tr.flops,
        "data": tr.stream.state(),
        "scheduler": tr.scheduler.state_dict(),
        "bad_total": tr.skips.total,
        "bad_in_row": tr.skips.in_row,
        **global_random_state(),
    }
    if tr.ema is not None:
        state["ema_n_averaged"] = int(tr.ema.n_averaged)
    model_state = optimizer_state = None
    if distributed.is_sharded(tr.model):  # FSDP2: gather full tensors (every rank takes part)
        model_state = distributed.full_model_state(tr.model)
        optimizer_state = distributed.full_optimizer_state(tr.model, tr.optimizer)
    path = tr.run_dir / "checkpoints" / f"step_{tr.step:06d}"
    if tr.dist.is_main:
        path = save_checkpoint(
            tr.run_dir,
            tr.step,
            tr.model,
            tr.cfg,
            tr.data.tokenizer,
            state,
            tr.optimizer,
            extra,
            keep_last=tr.cfg.train.keep_last,
            model_state=model_state,
            optimizer_state=optimizer_state,
        )
    distributed.barrier(tr.dist)
    tr.saved_step = tr.step
    return path


def resume(tr, path: str | Path) -> None:
    """Restore everything from a checkpoint so that training continues exactly as if never stopped:
    weights, optimizer moments, LR schedule, EMA, RNG states, data position, step and FLOP counters.

    Every problem (missing / corrupt file, other model, other tokenizer, damaged state) raises
    ``CheckpointError`` naming the file or field; differences in other settings are logged."""
    folder = resumable_folder(path)
    check_resumable(load_config_file(folder), tr.cfg, folder, tr.data.tokenizer, tr.log)
    state = load_json(folder / "trainer_state.json")
    try:
        _restore(tr, folder, state)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} cannot be restored ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:100] if str(e) else 'bad value'}); trainer_state.json "
            "or a tensor file is damaged or from another version: use an earlier checkpoint"
        ) from None
    tr.resumed = True
    if tr.dist.is_main:
        truncate_metrics(tr.run_dir / "metrics.jsonl", tr.step)
    tr.log(f"resumed from {folder} at step {tr.step}")


def start_from_init(tr) -> None:
    """Load the weights of ``train.init`` into a fresh run (fine-tuning): the EMA weights when the checkpoint
    has them and ``train.init_weights`` is "auto" or "ema", else the raw ones. Optimizer, LR schedule, step
    and FLOP counters start from zero; ``train.init`` is rewritten as the checkpoint folder it resolved to."""
    tc = tr.cfg.train
    folder = init_folder(tc.init)
    saved = load_config_file(folder)
    check_init_model(saved.model, tr.cfg.model, folder)
    check_init_tokenizer(folder, tr.data.tokenizer)
    if tc.init_weights == "ema" and not (folder / "ema.safetensors").is_file():
        raise CheckpointError(
            f"train.init_weights='ema' but {str(folder)!r} has no ema.safetensors; use 'auto' "
            "or 'raw'"
        )
    name = "ema.safetensors" if uses_ema(folder, tc.init_weights != "raw") else "model.safetensors"
    state = checked_weights(folder / name, saved, like=tr.model)
    try:
        distributed.load_full_model_state(tr.model, state)
        if tr.ema is not None:
            distributed.load_full_model_state(tr.ema.module, state)
    except RuntimeError as e:
        raise CheckpointError(
            f"--init {str(folder / name)!r} does not fit the model ({str(e).splitlines()[0][:120]})"
        ) from None
    tc.init = str(folder)
    tr.log(f"initialised from {folder / name} (new optimizer, schedule and step count)")


def _restore(tr, folder: Path, state: dict) -> None:
    distributed.load_full_model_state(
        tr.model, checked_weights(folder / "model.safetensors", tr.cfg, like=tr.model)
    )
    if (folder / "optimizer.safetensors").is_file():
        distributed.load_full_optimizer_state(
            tr.model,
            tr.optimizer,
            unflatten_optimizer(
                load_safetensors(folder / "optimizer.safetensors"), state["optimizer"]
            ),
        )
    tr.scheduler.load_state_dict(state["scheduler"])
    if tr.ema is not None and (folder / "ema.safetensors").is_file():
        distributed.load_full_model_state(
            tr.ema.module, checked_weights(folder / "ema.safetensors", tr.cfg, like=tr.ema.module)
        )
        tr.ema.n_averaged.fill_(int(state.get("ema_n_averaged", 0)))
    restore_rng(
        load_safetensors(folder / "rng.safetensors"),
        tr.gen_noise,
        tr.gen_loops,
        tr.device,
        tr.dist.rank,
    )
    restore_global_random(state)
    if tr.objective.score_tokens and (folder / "pool.safetensors").is_file():
        tr.pool = ProgressivePool.from_state(
            tr.cfg.diffusion.progressive_stages, load_safetensors(folder / "pool.safetensors")
        )
    tr.stream.load_state(state["data"])
    tr.step, tr.flops = int(state["step"]), float(state["flops"])
    # a run of non-finite steps saved by the checkpoint goes on
    tr.skips.total = int(state["bad_total"])
    tr.skips.set_in_row(int(state.get("bad_in_row", 0)))
    tr.saved_step = tr.step


def check_fresh_run_dir(run_dir: str | Path) -> None:
    """A new run must not write into a folder that already holds checkpoints (it would mix two runs)."""
    kept = list_checkpoints(Path(run_dir) / "checkpoints")
    if kept:
        raise CheckpointError(
            f"run folder {str(run_dir)!r} already holds checkpoints (newest {kept[-1].name}); "
            f"continue it with --resume {run_dir}, or choose a new --out folder"
        )
