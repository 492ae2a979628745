"""Training: AdamW, warmup + cosine, clipping, EMA, bf16 autocast, accumulation, S ~ loop distribution.

Every step draws one loop count S (the same on every rank), one antithetic set of times t over the
global batch, and logs NELBO, tokens/s and cumulative training FLOPs to ``metrics.jsonl``.
Checkpoints (safetensors + JSON) are written atomically and hold everything needed for an exact
resume: model, optimizer, LR schedule, EMA, RNG states and the data position.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_json, load_safetensors, resolve_checkpoint, save_checkpoint, unflatten_optimizer, \
    verify_checkpoint, load_config_file
from .config import RunConfig
from .data import PreparedData, prepare_data
from .diffusion import make_objective
from .errors import CheckpointError, ConfigError, LoopMDMError
from .evaluate import autocast_context, evaluate_nelbo
from .flops import train_flops_per_token
from .loops import get_loop_distribution
from .model import LoopMDM
from .schedules import get_schedule


class TrainingDiverged(LoopMDMError):
    """Too many non-finite steps in a row."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available; use train.device=cpu or auto")
    return dev


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class BatchStream:
    """Deterministic epochs over packed rows: a seeded permutation per epoch; (epoch, pos) is the position."""

    def __init__(self, n_rows: int, batch_size: int, seed: int):
        if n_rows < batch_size:
            raise ConfigError(f"train.batch_size={batch_size} exceeds the {n_rows} training rows; "
                              "lower train.batch_size or add data")
        self.n, self.bs, self.seed = n_rows, batch_size, seed
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self) -> np.ndarray:
        if self.pos + self.bs > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        idx = self._perm[self.pos:self.pos + self.bs]
        self.pos += self.bs
        return idx

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, st: dict) -> None:
        self.epoch, self.pos = int(st["epoch"]), int(st["pos"])
        self._perm = self._permutation()


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_loss: float
    val: Optional[dict]
    flops: float
    stopped_early: bool = False


class Trainer:
    """Owns model, optimizer, data stream and RNGs for one run folder. ``fit()`` trains to ``train.max_steps``."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, data: Optional[PreparedData] = None,
                 progress: bool = True, log: Callable[[str], None] = print):
        self.cfg, self.run_dir, self.progress, self.log = cfg, Path(run_dir), progress, log
        tc = cfg.train
        self.device = pick_device(tc.device)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(tc.seed)
        self.data = data or prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len, log=log)
        cfg.model.vocab_size = self.data.tokenizer.vocab_size
        self.model = LoopMDM(cfg.model).to(self.device)
        self.objective = make_objective(cfg.diffusion.objective, get_schedule(cfg.diffusion.schedule),
                                        self.data.tokenizer.mask_id, cfg.diffusion.antithetic, cfg.diffusion.t_eps)
        self.loop_dist = get_loop_distribution(cfg.diffusion)
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio))
        self.ema = None
        if tc.ema is not None:
            self.ema = torch.optim.swa_utils.AveragedModel(
                self.model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema))
        self.stream = BatchStream(len(self.data.train), tc.batch_size, tc.seed)
        self.gen_noise = torch.Generator().manual_seed(tc.seed + 1)  # t and masking
        self.gen_loops = torch.Generator().manual_seed(tc.seed + 2)  # S, identical on every rank
        self.step, self.flops, self.bad_in_row, self.bad_total = 0, 0.0, 0, 0
        self._stop_requested = False
        self.step_fn = self._train_step

    def _make_optimizer(self) -> torch.optim.Optimizer:
        tc = self.cfg.train
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "embed" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
        groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas), fused=fused)

    # ------------------------------------------------------------------ one step
    def _train_step(self, idx: np.ndarray, loops: int) -> tuple[float, float]:
        """Forward / backward over ``grad_accum`` micro-batches of the global batch rows ``idx``; returns
        (loss, grad_norm). The optimizer step is taken by the caller when both are finite."""
        tc = self.cfg.train
        x_all = torch.from_numpy(self.data.train[idx].astype(np.int64))
        t_all = None
        if self.cfg.diffusion.objective == "mdm":
            from .diffusion import sample_t

            t_all = sample_t(len(idx), self.gen_noise, self.cfg.diffusion.antithetic, self.cfg.diffusion.t_eps)
        total = 0.0
        micro = len(idx) // tc.grad_accum
        for m in range(tc.grad_accum):
            sl = slice(m * micro, (m + 1) * micro)
            x0 = x_all[sl].to(self.device, non_blocking=True)
            t = None if t_all is None else t_all[sl].to(self.device)
            with autocast_context(self.device, tc.precision):
                out = self.objective.loss(self.model, x0, loops, self.gen_noise, t=t)
            (out.loss / tc.grad_accum).backward()
            total += float(out.loss.detach()) / tc.grad_accum
        if tc.grad_clip > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip))
        else:
            gnorm = float(torch.norm(torch.stack([p.grad.norm() for p in self.model.parameters() if p.grad is not None])))
        return total, gnorm

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        tc = self.cfg.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.save(self.run_dir / "config.json")
        metrics = (self.run_dir / "metrics.jsonl").open("a")
        tokens_per_step = tc.batch_size * self.cfg.model.max_seq_len
        old_handlers = self._install_signal_handlers()
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc="train", unit="step")
        last_loss, val, t_last = float("nan"), None, time.perf_counter()
        try:
            while self.step < tc.max_steps and not self._stop_requested:
                loops = self.loop_dist.sample(self.gen_loops)
                idx = self.stream.next()
                self.model.train()
                loss, gnorm = self.step_fn(idx, loops)
                if not (math.isfinite(loss) and math.isfinite(gnorm)):
                    self._skip_bad_step(loss, gnorm, metrics)
                    continue
                self.bad_in_row = 0
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update_parameters(self.model)
                self.step += 1
                self.flops += train_flops_per_token(self.cfg.model, loops) * tokens_per_step
                last_loss = loss
                now = time.perf_counter()
                rec = {"step": self.step, "loss": loss, "loops": loops, "grad_norm": gnorm,
                       "lr": self.scheduler.get_last_lr()[0], "flops": self.flops,
                       "tokens": self.step * tokens_per_step, "tokens_per_s": tokens_per_step / (now - t_last)}
                t_last = now
                if self.step % tc.eval_every == 0 or self.step == tc.max_steps:
                    val = self.validate()
                    rec.update({f"val_{k}": v for k, v in val.items()})
                    t_last = time.perf_counter()
                if self.step % tc.log_every == 0 or "val_nelbo" in rec:
                    metrics.write(json.dumps(rec) + "\n")
                    metrics.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", S=loops, tok_s=f"{rec['tokens_per_s']:.0f}",
                                flops=f"{self.flops:.2e}", refresh=False)
                if self.step % tc.save_every == 0 or self.step == tc.max_steps:
                    self.save()
            if self._stop_requested:
                self.log(f"stop requested: saving step {self.step} and exiting")
                self.save()
        finally:
            bar.close()
            metrics.close()
            self._restore_signal_handlers(old_handlers)
        return TrainResult(self.run_dir, self.step, last_loss, val, self.flops, self._stop_requested)

    def _skip_bad_step(self, loss: float, gnorm: float, metrics) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_in_row += 1
        self.bad_total += 1
        metrics.write(json.dumps({"step": self.step, "skipped": True, "loss": str(loss), "grad_norm": str(gnorm),
                                  "bad_total": self.bad_total}) + "\n")
        metrics.flush()
        if self.bad_in_row >= self.cfg.train.max_bad_steps:
            raise TrainingDiverged(
                f"{self.bad_in_row} non-finite steps in a row at step {self.step} (loss={loss}, grad_norm={gnorm}); "
                "lower train.lr, use train.precision=fp32 or raise train.warmup_steps; "
                "the last good checkpoint is kept in the run folder")

    def validate(self, loops: Optional[int] = None) -> dict:
        """Validation NELBO at S = ``loops`` (default: the training S_max) on a fixed slice with a fixed seed."""
        tc = self.cfg.train
        model = self.ema.module if self.ema is not None else self.model
        return evaluate_nelbo(model, self.data.val, self.objective, loops or self.loop_dist.max(),
                              batch_size=tc.batch_size, max_batches=tc.eval_batches, seed=tc.seed,
                              precision=tc.precision)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        tied = self.cfg.model.tie_embeddings
        extra = {"rng": {"noise": self.gen_noise.get_state(), "loops": self.gen_loops.get_state(),
                         "torch": torch.get_rng_state()}}
        if self.ema is not None:
            extra["ema"] = {k: v for k, v in self.ema.module.state_dict().items()
                            if not (tied and k == "lm_head.weight")}
        state = {"step": self.step, "flops": self.flops, "data": self.stream.state(),
                 "scheduler": self.scheduler.state_dict(), "bad_total": self.bad_total,
                 "python_random": _jsonable(random.getstate()), "numpy_random": _jsonable(np.random.get_state())}
        if self.ema is not None:
            state["ema_n_averaged"] = int(self.ema.n_averaged)
        return save_checkpoint(self.run_dir, self.step, self.model, self.cfg, self.data.tokenizer, state,
                               self.optimizer, extra, keep_last=self.cfg.train.keep_last)

    def resume(self, path: str | Path) -> None:
        """Restore everything from a checkpoint so that training continues exactly as if never stopped."""
        folder = resolve_checkpoint(path)
        verify_checkpoint(folder)
        saved = load_config_file(folder)
        if saved.model != self.cfg.model:
            raise CheckpointError(f"checkpoint {folder} was trained with a different model config; resume with the "
                                  "same --preset / --config / --set model.* as the original run")
        state = load_json(folder / "trainer_state.json")
        weights = load_safetensors(folder / "model.safetensors")
        if self.cfg.model.tie_embeddings:
            weights["lm_head.weight"] = weights["embed.weight"]
        self.model.load_state_dict(weights)
        if (folder / "optimizer.safetensors").is_file():
            self.optimizer.load_state_dict(unflatten_optimizer(load_safetensors(folder / "optimizer.safetensors"),
                                                               state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and (folder / "ema.safetensors").is_file():
            ema = load_safetensors(folder / "ema.safetensors")
            if self.cfg.model.tie_embeddings:
                ema["lm_head.weight"] = ema["embed.weight"]
            self.ema.module.load_state_dict(ema)
            self.ema.n_averaged.fill_(state.get("ema_n_averaged", 0))
        rng = load_safetensors(folder / "rng.safetensors")
        self.gen_noise.set_state(rng["noise"])
        self.gen_loops.set_state(rng["loops"])
        torch.set_rng_state(rng["torch"])
        random.setstate(_tupled(state["python_random"]))
        np.random.set_state(tuple(state["numpy_random"][:1]) + (np.array(state["numpy_random"][1], dtype=np.uint32),)
                            + tuple(state["numpy_random"][2:]))
        self.stream.load_state(state["data"])
        self.step, self.flops, self.bad_total = int(state["step"]), float(state["flops"]), int(state["bad_total"])
        _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self):
        def handler(signum, frame):
            if self._stop_requested:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop_requested = True

        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return old

    @staticmethod
    def _restore_signal_handlers(old) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)


def _jsonable(x):
    if isinstance(x, tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after ``step`` so a resumed run's log continues exactly where the checkpoint was."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    from .checkpoint import atomic_write_text

    atomic_write_text(path, "".join(k + "\n" for k in keep))


def train(cfg: RunConfig, run_dir: str | Path, resume: Optional[str | Path] = None, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (optionally resuming from a checkpoint or run folder)."""
    trainer = Trainer(cfg, run_dir, progress=progress, log=log)
    if resume is not None:
        trainer.resume(resume)
    return trainer.fit()
