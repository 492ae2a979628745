"""The Trainer: one run folder, one model, the loop that trains it to ``train.max_steps``.

Every step draws one loop count S (the same on every rank), the global batch's rows (augmented per step where
the data has an augmentation) and the objective's noise over the global batch (times t, mask uniforms), runs
``train_step`` on this rank's share, and logs NELBO, tokens/s and cumulative training FLOPs to
``metrics.jsonl`` every ``train.log_every`` steps. Only those steps read the loss on the host; the others queue
their work without waiting for the device, and a non-finite step among them is skipped on the device
(``guard.DeviceGuard``). Checkpoints (safetensors + JSON, ``snapshot``) are written atomically and hold
everything needed for an exact resume: model, optimizer, LR schedule, EMA, RNG states and the data position.
Everything every experiment trains, Sudoku included, goes through here.
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..backbones import build_model
from ..config import RunConfig
from ..data import PreparedData, prepare_data
from ..diffusion import Batch, LoopDistribution, make_loop_distribution, make_objective
from ..diffusion.progressive import ProgressivePool
from ..errors import CheckpointError, ConfigError
from ..eval.nelbo import evaluate_nelbo
from ..fileio import atomic_write_text, describe_os_error
from ..model.flops import train_flops_per_token
from ..outputs import check_run_folder
from ..runtime import check_precision, compile_blocks, pick_device, set_threads
from . import distributed, preflight, snapshot
from .batches import BatchStream
from .ema import update_ema
from .guard import SkippedSteps, StopSignals, out_of_memory
from .init import fit_vocabulary
from .optim import make_optimizer, make_scheduler
from .step import train_step


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float
    val: Optional[dict]
    flops: float
    stopped_early: bool = False
    # SIGINT / SIGTERM when a signal stopped the run (its step is saved)
    signal: Optional[str] = None


class Trainer:
    """Owns model, optimizer, data stream and RNGs for one run folder. ``fit()`` trains to ``train.max_steps``.

    data: prepared data to train on (default: ``prepare_data(cfg.data)``); loop_dist: the training distribution
    of S (default: the one ``cfg.diffusion`` names). ``stop_requested`` set to True stops after the current step,
    with a checkpoint."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        data: Optional[PreparedData] = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        loop_dist: Optional[LoopDistribution] = None,
    ):
        self.cfg, self.run_dir, self.progress, self.log = cfg, Path(run_dir), progress, log
        tc = cfg.train
        # the device and precision this machine can run, checked before any work (one-line errors)
        # torchrun
        self.dist = distributed.setup(
            preflight.expandable_segments(pick_device(tc.device, "train.device"))
        )
        self.device = self.dist.device
        check_precision(self.device, tc.precision, "train.precision")
        distributed.check_global_batch(tc.batch_size, tc.grad_accum, self.dist)
        if cfg.diffusion.progressive_stages and self.dist.enabled:
            raise ConfigError(
                "diffusion.progressive_stages > 0 keeps one pool of rows in one process; train it "
                "without torchrun, or set diffusion.progressive_stages=0"
            )
        if not self.dist.is_main:  # rank 0 alone logs, writes metrics and checkpoints
            self.log, self.progress = (lambda s: None), False
        set_threads(tc.threads)
        torch.manual_seed(tc.seed)
        # rank 0 tokenises and fills the cache, the others read it
        with distributed.main_first(self.dist):
            self.data = data or prepare_data(
                cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len, log=self.log
            )
        distributed.check_same_data(self.data, self.dist)
        fit_vocabulary(cfg, self.data.tokenizer)
        self.model = build_model(cfg.model).to(self.device)
        if tc.compile:  # torch.compile each transformer block in place (state-dict names unchanged)
            compile_blocks(self.model)
        # DDP wrapper, or self.model itself sharded in place with FSDP2 (train.fsdp); self.model stays the
        # unwrapped module for evaluation, EMA and checkpoints.
        self.train_model = distributed.wrap_model(
            self.model, self.dist, fsdp=tc.fsdp, precision=tc.precision
        )
        self.objective = make_objective(cfg.diffusion, self.data.tokenizer.mask_id)
        # training only: validation is final-loop
        self.objective.deep_supervision = cfg.diffusion.deep_supervision
        # progressive unmasking (PUMA): the pool of rows and masks, started at the first step, checkpointed
        self.objective.score_tokens = cfg.diffusion.progressive_stages > 0
        self.pool: Optional[ProgressivePool] = None
        # the LM head runs on the positions that enter the loss: the expected masked share of the free ones
        self.predicted_fraction = self.objective.predicted_fraction() * self.data.free_fraction
        self.loop_dist = (
            loop_dist
            or make_loop_distribution(  # flops_fn: F(S) of a step, as fit() counts it
                cfg.diffusion, total_steps=tc.max_steps, seed=tc.seed, flops_fn=self.flops_per_token
            )
        )
        self.optimizer = make_optimizer(self.model, tc, self.device)
        self.scheduler = make_scheduler(self.optimizer, tc)
        self.ema = None
        if tc.ema is not None:
            self.ema = distributed.make_ema(
                self.model, tc.ema, self.dist, lambda: build_model(cfg.model)
            )
        self.stream = BatchStream(len(self.data.train), tc.batch_size, tc.seed)
        self.gen_noise = torch.Generator().manual_seed(tc.seed + 1)  # t and masking
        self.gen_loops = torch.Generator().manual_seed(tc.seed + 2)  # S, identical on every rank
        self.step, self.flops = 0, 0.0
        self.stop_requested, self.resumed, self.saved_step = False, False, -1
        # non-finite steps skipped on the device: the fused AdamW kernel's found_inf (FSDP2 shards: read on the host)
        on_device = bool(self.optimizer.defaults.get("fused")) and not distributed.is_sharded(
            self.model
        )
        self.skips = SkippedSteps(cfg, self.run_dir, self.device, on_device, self.log)

    def flops_per_token(self, loops: int) -> float:
        """Training FLOPs per token of a step at S = ``loops`` (deep supervision adds a tail pass per supervised
        loop: S of them for ``all``, (S + 1) / 2 expected for ``random``)."""
        supervised = {"all": loops, "random": (loops + 1) / 2}.get(
            self.cfg.diffusion.deep_supervision, 1
        )
        return train_flops_per_token(
            self.cfg.model, loops, self.data.train.shape[1], self.predicted_fraction, supervised
        )

    # ------------------------------------------------------------------ one step
    def _step(self, idx: np.ndarray, loops: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward / backward on the global batch rows ``idx`` at loop count S = ``loops``: (loss, grad norm), device
        scalars."""
        tc = self.cfg.train
        rng = (
            np.random.default_rng([tc.seed, self.step, 3])
            if self.data.augment is not None
            else None
        )
        batch = self.data.batch("train", idx, rng)  # [B, L] over the global batch
        if self.objective.score_tokens:
            return self._progressive_step(batch, loops)
        # complementary masks: rows 2k + 1 repeat rows 2k (else unchanged)
        batch = self.objective.pair_rows(batch)
        noise = self.objective.draw(len(idx), batch.x0.shape[1], self.gen_noise)
        own = distributed.rank_slice(len(idx), self.dist)  # this rank's rows (all of them, alone)
        return train_step(
            self.model,
            self.train_model,
            self.objective,
            batch.rows(own),
            None if noise is None else noise.rows(own),
            loops,
            grad_accum=tc.grad_accum,
            precision=tc.precision,
            grad_clip=tc.grad_clip,
            device=self.device,
            dist=self.dist,
        )

    def _progressive_step(self, fresh: Batch, loops: int) -> tuple[torch.Tensor, torch.Tensor]:
        """PUMA: one step on the pool's rows at the pool's masks, then every row moves one stage on, revealing the
        masked positions the model was surest of; rows past the last stage are replaced by the first rows of
        ``fresh`` (this step's batch). One host read per step: the scores, which the pool needs on the host."""
        tc = self.cfg.train
        if self.pool is None:
            self.pool = ProgressivePool.start(
                self.cfg.diffusion.progressive_stages, fresh, self.gen_noise
            )
        scores: list[torch.Tensor] = []
        out = train_step(
            self.model,
            self.train_model,
            self.objective,
            self.pool.batch(),
            self.pool.noise(self.objective.schedule),
            loops,
            grad_accum=tc.grad_accum,
            precision=tc.precision,
            grad_clip=tc.grad_clip,
            device=self.device,
            dist=self.dist,
            scores=scores,
        )
        score = torch.cat(scores).cpu()  # [B, L]
        self.pool.advance(score, lambda n: fresh.rows(slice(0, n)), self.gen_noise)
        return out

    def _guarded_step(
        self, idx: np.ndarray, loops: int
    ) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``_step`` with out-of-memory turned into a one-line error naming the knobs that reduce memory (steps
        replaced under test may return Python floats)."""
        try:
            return self._step(idx, loops)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
            err = out_of_memory(e, self.cfg, self.step + 1, loops)
            if err is None:
                raise
            raise err from None

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        tc = self.cfg.train
        # one step at the largest S first: a run that cannot fit stops here
        if self.step < tc.max_steps:
            preflight.check_memory(
                self.model,
                self.train_model,
                self.objective,
                self.data,
                self.cfg,
                self.device,
                self.dist,
                loops=self.loop_dist.max(),
                optimizer=self.optimizer,
                log=self.log,
            )
        metrics = self._open_run_dir()
        tokens_per_step = tc.batch_size * self.data.train.shape[1]
        bar = tqdm(
            total=tc.max_steps,
            initial=self.step,
            disable=not self.progress,
            dynamic_ncols=True,
            desc="train",
            unit="step",
        )
        last_loss, val, stop_signal = float("nan"), None, None
        # tokens/s over the steps since the last metrics line
        self._clock = (time.perf_counter(), self.step)
        if self.step >= tc.max_steps:
            self.log(
                f"step {self.step} already reached train.max_steps={tc.max_steps}: nothing to train "
                "(raise --max-steps to continue)"
            )
        # under torchrun: every rank stops at the same step
        agreement = distributed.StepAgreement(self.dist)
        try:
            with StopSignals() as signals:
                while self.step < tc.max_steps and not self.stop_requested:
                    loops = self.loop_dist.sample(self.gen_loops, self.step)
                    idx = self.stream.next()
                    self.model.train()
                    loss, gnorm = self._guarded_step(idx, loops)
                    read = self._reads_loss(self.step + 1)
                    if read:
                        loss, gnorm = self.skips.read(loss, gnorm, self.step, metrics)
                        if not (math.isfinite(loss) and math.isfinite(gnorm)):
                            self.optimizer.zero_grad(set_to_none=True)
                            self.skips.found_on_host(loss, gnorm, self.step, metrics)
                            continue
                        self._apply_update()
                    else:  # queued without waiting: a non-finite step is skipped on the device
                        self._apply_update(self.skips.flag(loss, gnorm))
                    self.flops += self.flops_per_token(loops) * tokens_per_step
                    last_loss = loss
                    if read:
                        val = (
                            self._log_step(loops, loss, gnorm, tokens_per_step, metrics, bar) or val
                        )
                    bar.update(1)
                    if self.step % tc.save_every == 0 or self.step == tc.max_steps:
                        self.skips.settle(self.step, metrics)
                        self.save()
                    self.stop_requested = agreement(loops, self.stop_requested or signals.requested)
                agreement.flush()
                stop_signal = signals.name
                self.skips.settle(self.step, metrics)
                if self.stop_requested:
                    self.log(
                        f"{signals.name or 'stop'} received: saving step {self.step} and exiting"
                    )
                    if self.saved_step != self.step:
                        self.save()
        finally:
            bar.close()
            metrics.close()
        return TrainResult(
            self.run_dir,
            self.step,
            float(last_loss),
            val,
            self.flops,
            self.stop_requested,
            stop_signal if self.stop_requested else None,
        )

    def _reads_loss(self, step: int) -> bool:
        """Whether step ``step`` reads its loss and gradient norm on the host (one sync): the steps that write a
        metrics line (every ``train.log_every``, evaluations, the last), and every step where non-finite steps
        cannot be skipped on the device (no fused optimizer, or FSDP2)."""
        tc = self.cfg.train
        return (
            self.skips.guard is None
            or step % tc.log_every == 0
            or step % tc.eval_every == 0
            or step == tc.max_steps
        )

    def _log_step(
        self, loops: int, loss: float, gnorm: float, tokens_per_step: int, metrics, bar
    ) -> Optional[dict]:
        """The metrics line of a step that read its loss (with the validation NELBO at evaluation steps) and the
        progress bar; returns the validation result, if any."""
        tc = self.cfg.train
        (start, start_step), now = self._clock, time.perf_counter()
        rec = {
            "step": self.step,
            "loss": loss,
            "loops": loops,
            "grad_norm": gnorm,
            "lr": self.scheduler.get_last_lr()[0],
            "flops": self.flops,
            "tokens": self.step * tokens_per_step,
            "tokens_per_s": tokens_per_step * (self.step - start_step) / (now - start),
        }
        val = None
        if self.step % tc.eval_every == 0 or self.step == tc.max_steps:
            val = self.validate()
            rec.update({f"val_{k}": v for k, v in val.items()})
        self._clock = (time.perf_counter(), self.step)
        if self.step % tc.log_every == 0 or val is not None:
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()
        bar.set_postfix(
            loss=f"{loss:.3f}",
            S=loops,
            tok_s=f"{rec['tokens_per_s']:.0f}",
            flops=f"{self.flops:.2e}",
            refresh=False,
        )
        return val

    def _apply_update(self, bad: Optional[torch.Tensor] = None) -> None:
        """The optimizer step, LR schedule, EMA and step count. ``bad``: the device guard's flag of a step the host
        did not check: where it is 1, the fused AdamW kernel leaves weights and moments as they are and the EMA
        keeps its value, but the step still counts (as with AMP's GradScaler); the guard counts it."""
        if bad is None:
            self.skips.set_in_row(0)
        self.optimizer.found_inf = bad  # read by the fused AdamW step (None: apply)
        self.optimizer.step()
        self.optimizer.found_inf = None
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self._update_ema(None if bad is None else 1.0 - bad)
        self.step += 1

    def _update_ema(self, keep: Optional[torch.Tensor]) -> None:
        # FSDP2: AveragedModel's own update (every step is read on the host)
        if distributed.is_sharded(self.model):
            self.ema.update_parameters(self.model)
        else:
            update_ema(self.ema, self.model, self.cfg.train.ema, keep)

    def _open_run_dir(self):
        """Create the run folder, write config.json atomically and open metrics.jsonl (truncated on a fresh
        start, appended to after a resume; other ranks than 0 write nowhere). Unwritable folders raise
        ``CheckpointError`` with the reason."""
        if not self.dist.is_main:
            return open(os.devnull, "w")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=2)
            )
            fresh = self.step == 0 and not self.resumed
            return (self.run_dir / "metrics.jsonl").open("w" if fresh else "a")
        except OSError as e:
            raise CheckpointError(
                f"cannot write the run folder {str(self.run_dir)!r} ({describe_os_error(e)}); "
                "choose a writable --out folder or free disk space"
            ) from None

    def validate(self, loops: Optional[int] = None) -> dict:
        """Validation NELBO at S = ``loops`` (default: the training S_max) of the EMA weights (when kept) on a
        fixed slice, with t and masks drawn from ``train.eval_seed`` (the same draw for every training seed)."""
        tc = self.cfg.train
        model = self.ema.module if self.ema is not None else self.model
        return evaluate_nelbo(
            model,
            self.data.val,
            self.objective,
            loops or self.loop_dist.max(),
            batch_size=tc.batch_size,
            max_batches=tc.eval_batches,
            seed=tc.eval_seed,
            precision=tc.precision,
            frozen=self.data.val_frozen,
        )

    # ------------------------------------------------------------------ checkpoints (train/snapshot.py)
    def save(self) -> Path:
        """Write a checkpoint of everything an exact resume needs (``snapshot.save``)."""
        return snapshot.save(self)

    def resume(self, path: str | Path) -> None:
        """Continue exactly where the checkpoint ``path`` (or run folder) stopped (``snapshot.resume``)."""
        snapshot.resume(self, path)

    def start_from_init(self) -> None:
        """Start a fresh run from the weights of ``train.init`` (fine-tuning; ``snapshot.start_from_init``)."""
        snapshot.start_from_init(self)


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    resume: Optional[str | Path] = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    data: Optional[PreparedData] = None,
    loop_dist: Optional[LoopDistribution] = None,
    trainer_cls: Callable[..., Trainer] = Trainer,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (optionally resuming from a checkpoint or run folder). Without
    ``resume``, ``run_dir`` must not hold checkpoints already, and ``cfg.train.init`` (when set) names the
    checkpoint whose weights the run starts from. ``run_dir`` follows ``loopmdm.outputs``: new, empty, or this
    run's own folder (a folder of data or of another run is refused before anything is written).
    ``trainer_cls``: a ``Trainer`` subclass (or factory) for studies that change, e.g., the validation set."""
    # before any work: never write into a folder that is not this run's
    check_run_folder(run_dir, resume=resume)
    trainer = trainer_cls(cfg, run_dir, data=data, progress=progress, log=log, loop_dist=loop_dist)
    try:
        if resume is not None:
            trainer.resume(resume)
        elif cfg.train.init is not None:
            trainer.start_from_init()
        return trainer.fit()
    finally:
        env = trainer.dist
        if env.enabled:
            # DDP's reducer and FSDP's state hold the process group: free them before leaving it (freed after,
            # the Gloo group's destructor can hang)
            del trainer
            gc.collect()
        distributed.teardown(env)  # leave torchrun's process group (no-op on one process)
