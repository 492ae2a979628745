"""Training: AdamW, warmup + cosine, clipping, EMA, bf16 autocast, accumulation, S ~ loop distribution.

Every step draws one loop count S (the same on every rank), one antithetic set of times t over the
global batch, and logs NELBO, tokens/s and cumulative training FLOPs to ``metrics.jsonl``.
Checkpoints (safetensors + JSON) are written atomically and hold everything needed for an exact
resume: model, optimizer, LR schedule, EMA, RNG states and the data position.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import atomic_write_text, describe_os_error, list_checkpoints, load_config_file, load_json, \
    checked_weights, load_safetensors, load_tokenizer_file, resolve_checkpoint, save_checkpoint, unflatten_optimizer, \
    verify_checkpoint
from .config import RunConfig
from .data import PreparedData, prepare_data
from .diffusion import make_objective, sample_t
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
        self.dist = distributed.setup(pick_device(tc.device))  # torchrun: join the process group
        self.device = self.dist.device
        distributed.check_global_batch(tc.batch_size, tc.grad_accum, self.dist)
        if not self.dist.is_main:  # rank 0 alone logs, writes metrics and checkpoints
            self.log, self.progress = (lambda s: None), False
        if tc.threads:
            torch.set_num_threads(tc.threads)
        torch.manual_seed(tc.seed)
        with distributed.main_first(self.dist):  # rank 0 tokenises and fills the cache, the others read it
            self.data = data or prepare_data(cfg.data, cfg.model.vocab_size, cfg.model.max_seq_len, log=self.log)
        distributed.check_same_data(self.data, self.dist)
        cfg.model.vocab_size = self.data.tokenizer.vocab_size
        self.model = LoopMDM(cfg.model).to(self.device)
        if tc.compile:  # torch.compile each transformer block in place (state-dict names unchanged)
            from .perf import compile_blocks

            compile_blocks(self.model)
        # DDP wrapper, or self.model itself sharded in place with FSDP2 (train.fsdp); self.model stays the
        # unwrapped module for evaluation, EMA and checkpoints.
        self.train_model = distributed.wrap_model(self.model, self.dist, fsdp=tc.fsdp)
        self.objective = make_objective(cfg.diffusion.objective, get_schedule(cfg.diffusion.schedule),
                                        self.data.tokenizer.mask_id, cfg.diffusion.antithetic, cfg.diffusion.t_eps)
        self.loop_dist = get_loop_distribution(cfg.diffusion)
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio))
        self.ema = None
        if tc.ema is not None:
            self.ema = distributed.make_ema(self.model, tc.ema, self.dist, lambda: LoopMDM(cfg.model))
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
            t_all = sample_t(len(idx), self.gen_noise, self.cfg.diffusion.antithetic, self.cfg.diffusion.t_eps)
        own = distributed.rank_slice(len(idx), self.dist)  # this rank's rows of the global batch (all, alone)
        x_all, t_all = x_all[own], (None if t_all is None else t_all[own])
        noise = distributed.NoiseCursor(self.gen_noise, x_all.shape[1] if t_all is not None else 0)
        total = 0.0
        micro = len(x_all) // tc.grad_accum
        for m in range(tc.grad_accum):
            sl = slice(m * micro, (m + 1) * micro)
            x0 = x_all[sl].to(self.device, non_blocking=True)
            t = None if t_all is None else t_all[sl].to(self.device)
            noise.seek(own.start + m * micro)  # the mask noise these rows get in a one-process step
            with distributed.grad_sync(self.train_model, m == tc.grad_accum - 1):
                with autocast_context(self.device, tc.precision):
                    out = self.objective.loss(self.train_model, x0, loops, self.gen_noise, t=t)
                (out.loss / tc.grad_accum).backward()
            noise.advance(micro)
            total += float(out.loss.detach()) / tc.grad_accum
        noise.finish(len(idx))
        total = distributed.mean_across_ranks(total, self.dist)  # the global-batch loss
        max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")  # inf: measure the norm, do not clip
        gnorm = distributed.as_float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        return total, gnorm

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        tc = self.cfg.train
        metrics = self._open_run_dir()
        tokens_per_step = tc.batch_size * self.cfg.model.max_seq_len
        old_handlers = self._install_signal_handlers()
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not self.progress, dynamic_ncols=True,
                   desc="train", unit="step")
        last_loss, val, t_last = float("nan"), None, time.perf_counter()
        if self.step >= tc.max_steps:
            self.log(f"step {self.step} already reached train.max_steps={tc.max_steps}: nothing to train "
                     "(raise --max-steps to continue)")
        try:
            while self.step < tc.max_steps and not self._stop_requested:
                loops = self.loop_dist.sample(self.gen_loops)
                idx = self.stream.next()
                self.model.train()
                loss, gnorm = self._guarded_step(idx, loops)
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
                self._stop_requested = distributed.step_agreement(loops, self._stop_requested, self.dist)
            if self._stop_requested:
                self.log(f"{self._stop_signal or 'stop'} received: saving step {self.step} and exiting")
                if self._saved_step != self.step:
                    self.save()
        finally:
            bar.close()
            metrics.close()
            self._restore_signal_handlers(old_handlers)
        return TrainResult(self.run_dir, self.step, last_loss, val, self.flops, self._stop_requested)

    # Attributes set by the reliability helpers below (class defaults keep ``__init__`` untouched).
    _resumed: bool = False  # resume() restored a checkpoint
    _saved_step: int = -1  # step of the last checkpoint this process wrote
    _stop_signal: Optional[str] = None  # "SIGTERM" / "SIGINT" once a stop was requested
    bad_in_row: int = 0

    def _open_run_dir(self):
        """Create the run folder, write config.json atomically and open metrics.jsonl (truncated on a fresh
        start, appended to after a resume; other ranks than 0 write nowhere). Unwritable folders raise
        ``CheckpointError`` with the reason."""
        if not self.dist.is_main:
            return open(os.devnull, "w")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=2))
            fresh = self.step == 0 and not self._resumed
            return (self.run_dir / "metrics.jsonl").open("w" if fresh else "a")
        except OSError as e:
            raise CheckpointError(f"cannot write the run folder {str(self.run_dir)!r} ({describe_os_error(e)}); "
                                  "choose a writable --out folder or free disk space") from None

    def _guarded_step(self, idx: np.ndarray, loops: int) -> tuple[float, float]:
        """``step_fn`` with out-of-memory turned into a one-line error naming the knobs that reduce memory."""
        try:
            return self.step_fn(idx, loops)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
            text = str(e)
            if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and "alloc" not in text.lower():
                raise
            tc, m = self.cfg.train, self.cfg.model
            raise ConfigError(
                f"out of memory at step {self.step + 1} (train.batch_size={tc.batch_size}, train.grad_accum="
                f"{tc.grad_accum}, model.max_seq_len={m.max_seq_len}, S={loops}); raise train.grad_accum, lower "
                "train.batch_size or model.max_seq_len, or set model.checkpoint_loops=true") from None

    def _skip_bad_step(self, loss: float, gnorm: float, metrics) -> None:
        """A non-finite loss or gradient norm: drop the gradients, count it, log it (``step`` is the step that
        was attempted), and after ``train.max_bad_steps`` in a row stop with the likely causes."""
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_in_row += 1
        self.bad_total += 1
        metrics.write(json.dumps({"step": self.step + 1, "skipped": True, "loss": str(loss), "grad_norm": str(gnorm),
                                  "bad_in_row": self.bad_in_row, "bad_total": self.bad_total}) + "\n")
        metrics.flush()
        self.log(f"step {self.step + 1}: non-finite loss={loss} / grad_norm={gnorm}; skipped "
                 f"({self.bad_in_row}/{self.cfg.train.max_bad_steps} in a row)")
        if self.bad_in_row >= self.cfg.train.max_bad_steps:
            raise TrainingDiverged(self._divergence_message(loss, gnorm))

    def _divergence_message(self, loss: float, gnorm: float) -> str:
        tc = self.cfg.train
        causes = [f"learning rate too high (train.lr={tc.lr}, train.warmup_steps={tc.warmup_steps}): lower train.lr "
                  "or raise train.warmup_steps"]
        if tc.precision != "fp32":
            causes.append(f"overflow in train.precision={tc.precision}: use train.precision=fp32")
        if tc.grad_clip == 0:
            causes.append("no gradient clipping (train.grad_clip=0): set train.grad_clip=1.0")
        kept = list_checkpoints(self.run_dir / "checkpoints")
        last = (f"the last good checkpoint {str(kept[-1])!r} is kept; after the fix continue with --resume "
                f"{str(self.run_dir)!r}") if kept else "no checkpoint was saved yet"
        return (f"training diverged: {self.bad_in_row} non-finite steps in a row before step {self.step + 1} "
                f"(loss={loss}, grad_norm={gnorm}); likely causes: {'; '.join(causes)}; {last}")

    def validate(self, loops: Optional[int] = None) -> dict:
        """Validation NELBO at S = ``loops`` (default: the training S_max) on a fixed slice with a fixed seed."""
        tc = self.cfg.train
        model = self.ema.module if self.ema is not None else self.model
        return evaluate_nelbo(model, self.data.val, self.objective, loops or self.loop_dist.max(),
                              batch_size=tc.batch_size, max_batches=tc.eval_batches, seed=tc.seed,
                              precision=tc.precision)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Write a checkpoint of everything an exact resume needs. Weights that are no longer finite are never
        saved (the last good checkpoint stays ``latest``)."""
        params = [] if distributed.is_sharded(self.model) else self.model.named_parameters()
        bad = [n for n, p in params if not bool(torch.isfinite(p).all())]
        if bad:  # DDP replicas hold identical weights, so every rank takes this branch together
            raise TrainingDiverged(f"the weights became non-finite ({bad[0]}) at step {self.step}; not saving. "
                                   + self._divergence_message(float("nan"), float("nan")).split("; ", 1)[1])
        tied = self.cfg.model.tie_embeddings
        extra = {"rng": self._rng_tensors()}
        if self.ema is not None:
            extra["ema"] = {k: v for k, v in distributed.full_model_state(self.ema.module).items()
                            if not (tied and k == "lm_head.weight")}
        state = {"step": self.step, "flops": self.flops, "data": self.stream.state(),
                 "scheduler": self.scheduler.state_dict(), "bad_total": self.bad_total, "bad_in_row": self.bad_in_row,
                 "python_random": _jsonable(random.getstate()), "numpy_random": _jsonable(np.random.get_state())}
        if self.ema is not None:
            state["ema_n_averaged"] = int(self.ema.n_averaged)
        model_state = optimizer_state = None
        if distributed.is_sharded(self.model):  # FSDP2: gather full tensors (every rank takes part)
            model_state = distributed.full_model_state(self.model)
            optimizer_state = distributed.full_optimizer_state(self.model, self.optimizer)
        path = self.run_dir / "checkpoints" / f"step_{self.step:06d}"
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir, self.step, self.model, self.cfg, self.data.tokenizer, state,
                                   self.optimizer, extra, keep_last=self.cfg.train.keep_last,
                                   model_state=model_state, optimizer_state=optimizer_state)
        distributed.barrier(self.dist)
        self._saved_step = self.step
        return path

    def _rng_tensors(self) -> dict[str, torch.Tensor]:
        """Generator states. ``noise`` (t, masks) and ``loops`` (S) are identical on every rank by construction
        (same seed, same draws over the global batch: ``distributed.NoiseCursor``), so rank 0's copy restores
        every rank. ``torch`` / ``cuda`` are per-process global states (only dropout draws from them): in a
        torchrun launch every rank's are gathered (a collective: ``save`` runs on all ranks) and saved as
        ``torch_rank{r}`` / ``cuda_rank{r}``."""
        own = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        out = {"noise": self.gen_noise.get_state(), "loops": self.gen_loops.get_state(), **own}
        if self.dist.enabled:
            import torch.distributed as dist

            gathered: list = [None] * self.dist.world_size
            dist.all_gather_object(gathered, own)
            for r, states in enumerate(gathered):
                out.update({f"{k}_rank{r}": v for k, v in states.items()})
        return out

    def resume(self, path: str | Path) -> None:
        """Restore everything from a checkpoint so that training continues exactly as if never stopped:
        weights, optimizer moments, LR schedule, EMA, RNG states, data position, step and FLOP counters.

        Every problem (missing / corrupt file, other model, other tokenizer, damaged state) raises
        ``CheckpointError`` naming the file or field; differences in other settings are logged."""
        folder = resolve_checkpoint(path)
        verify_checkpoint(folder)
        for f in ("trainer_state.json", "rng.safetensors"):
            if not (folder / f).is_file():
                raise CheckpointError(f"checkpoint {str(folder)!r} has no {f}: it holds weights only (an export?) "
                                      "and cannot resume a run exactly; resume from a checkpoint written by "
                                      "`loopmdm train`, or start a new run")
        self._check_resumable(load_config_file(folder), folder)
        state = load_json(folder / "trainer_state.json")
        try:
            self._restore(folder, state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {str(folder)!r} cannot be restored ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:100] if str(e) else 'bad value'}); trainer_state.json "
                                  "or a tensor file is damaged or from another version: use an earlier checkpoint"
                                  ) from None
        self._resumed = True
        if self.dist.is_main:
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        self.log(f"resumed from {folder} at step {self.step}")

    def _check_resumable(self, saved: RunConfig, folder: Path) -> None:
        """The model shape and tokenizer must match the checkpoint; other changed settings are logged."""
        diffs = _config_diff(saved.to_dict(), self.cfg.to_dict())
        model_diffs = [d for d in diffs if d.startswith("model.")]
        if model_diffs:
            raise CheckpointError(f"checkpoint {str(folder)!r} has a different model config "
                                  f"({'; '.join(model_diffs[:3])}); resume with the same --preset / --config / "
                                  "--set model.* as the original run")
        if load_tokenizer_file(folder).tok.get_vocab() != self.data.tokenizer.tok.get_vocab():
            raise CheckpointError(f"the data's tokenizer differs from {str(folder / 'tokenizer.json')!r} (the corpus "
                                  "or data settings changed); keep the checkpoint's tokenizer with --set "
                                  f"data.tokenizer={folder / 'tokenizer.json'}")
        if diffs:
            self.log(f"resuming with changed settings ({'; '.join(diffs[:6])}); the run will not match an "
                     "uninterrupted one exactly (train.max_steps sets the LR schedule)")

    def _restore(self, folder: Path, state: dict) -> None:
        distributed.load_full_model_state(self.model, checked_weights(folder / "model.safetensors", self.cfg))
        if (folder / "optimizer.safetensors").is_file():
            distributed.load_full_optimizer_state(self.model, self.optimizer, unflatten_optimizer(
                load_safetensors(folder / "optimizer.safetensors"), state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and (folder / "ema.safetensors").is_file():
            distributed.load_full_model_state(self.ema.module, checked_weights(folder / "ema.safetensors", self.cfg))
            self.ema.n_averaged.fill_(int(state.get("ema_n_averaged", 0)))
        rng = load_safetensors(folder / "rng.safetensors")
        self.gen_noise.set_state(rng["noise"])
        self.gen_loops.set_state(rng["loops"])
        r = self.dist.rank  # this rank's own global states when the run was distributed, else rank 0's
        torch.set_rng_state(rng.get(f"torch_rank{r}", rng["torch"]))
        if self.device.type == "cuda" and ("cuda" in rng or f"cuda_rank{r}" in rng):
            torch.cuda.set_rng_state(rng.get(f"cuda_rank{r}", rng.get("cuda")), self.device)
        random.setstate(_tupled(state["python_random"]))
        np_state = state["numpy_random"]
        np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
        self.stream.load_state(state["data"])
        self.step, self.flops = int(state["step"]), float(state["flops"])
        self.bad_total, self.bad_in_row = int(state["bad_total"]), int(state.get("bad_in_row", 0))
        self._saved_step = self.step

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self):
        def handler(signum, frame):
            if self._stop_requested:  # second Ctrl-C: stop now (the last checkpoint is intact)
                raise KeyboardInterrupt
            self._stop_requested = True
            self._stop_signal = signal.Signals(signum).name

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
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and isinstance(rec.get("step", 0), int) and rec.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def _config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["train.max_steps: 8 -> 12", ...]`` for every leaf that differs between two config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_fresh_run_dir(run_dir: str | Path) -> None:
    """A new run must not write into a folder that already holds checkpoints (it would mix two runs)."""
    kept = list_checkpoints(Path(run_dir) / "checkpoints")
    if kept:
        raise CheckpointError(f"run folder {str(run_dir)!r} already holds checkpoints (newest {kept[-1].name}); "
                              f"continue it with --resume {run_dir}, or choose a new --out folder")


def train(cfg: RunConfig, run_dir: str | Path, resume: Optional[str | Path] = None, progress: bool = True,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (optionally resuming from a checkpoint or run folder). Without
    ``resume``, ``run_dir`` must not hold checkpoints already."""
    if resume is None:
        check_fresh_run_dir(run_dir)
    trainer = Trainer(cfg, run_dir, progress=progress, log=log)
    try:
        if resume is not None:
            trainer.resume(resume)
        return trainer.fit()
    finally:
        distributed.teardown(trainer.dist)  # leave torchrun's process group (no-op on one process)


if __name__ == "__main__":  # `torchrun --nproc_per_node N -m loopmdm.train --out DIR ...` == `loopmdm train ...`
    import sys

    from .cli import main

    sys.argv = ["loopmdm", "train", *sys.argv[1:]]
    main()
