"""The one script to run when a GPU (H100 / H200) is lent for a few minutes: seven sections of evidence, each held
to a time cap, the JSON rewritten after every section so a timeout or a failure keeps what was measured.

    python benchmarks/gpu_evidence.py --out benchmarks/results/gpu_evidence             # one GPU, no network
    python benchmarks/gpu_evidence.py --sections throughput,profile --budget-s 120      # a subset, a smaller budget
    python benchmarks/gpu_evidence.py --smoke --out /tmp/gpu_smoke                       # all sections, CPU, toy sizes

Sections (``--sections``, comma-separated; default all, always run in this order):

- ``throughput``: training tokens/s of the ``paper`` preset (d 768, 12 layers, n_h / n_m / n_o = 1 / 2 / 9,
  vocabulary 50258, length 1024) through the library's ``train_step`` + fused AdamW, bf16, at S = 1 and S = 12
  (``--loops``), eager and with ``torch.compile`` of the blocks (``--compile``). One fixed batch for every run:
  the largest of ``--batches`` that fits at the largest S (out of memory: the next smaller one). Per run: first
  step and compile seconds, seconds per step, tokens/s, model TFLOP/s, MFU = model FLOPs
  (``loopmdm.model.flops.train_flops_per_token``, LM head at the expected masked share) x tokens/s / the card's
  dense bf16 peak (``loopmdm.runtime.peak_flops``; unlisted card: MFU null with a note, or ``--peak-tflops``),
  peak memory (``torch.cuda.max_memory_allocated``).
- ``syncs``: host-device synchronisations of one training step and of denoising (ancestral sampling at T = 1
  and T = 4: per step and fixed), counted by the library's ``SyncCounter`` with the source lines that caused
  them (on a CPU every tensor stands for the device's), and on CUDA also by
  ``torch.cuda.set_sync_debug_mode("warn")`` (``cuda_syncs``).
- ``profile``: ``torch.profiler`` over a few training steps: the SDPA kernel actually used (flash / efficient /
  cuDNN / math, from the aten ops and kernel names), GPU busy time (union of kernel and copy intervals) against
  the wall time, the top kernels; the key-average table is saved as ``profile_top.txt``.
- ``loss``: ``loopmdm.model.loss.linear_cross_entropy`` forward + backward against the three plain GEMMs it
  contains (h W^T, G W, G^T h) and against ``F.cross_entropy`` on materialised logits, N = 16384 positions at
  the paper's vocabulary and width, bf16: seconds, TFLOP/s, the ratio LCE / GEMMs, peak memory.
- ``sampling``: seconds per denoising step of ancestral sampling (``loopmdm.sampling.sample_canvas``, the ``generate`` core) with
  the ``paper`` model at S = 12, 8 sequences of 1024 tokens, fp32 (TF32 matmuls) against bf16 autocast.
- ``trio``: the compute-matched trio (``experiments.compute_matched``: same-size MDM, LoopMDM with
  S ~ U{1..4}, deeper MDM, equal training FLOPs; d 512 x 8 layers, length 256, batch 128, bf16) on the standard
  library with a fixed byte-level vocabulary (260 tokens: no BPE is trained); its steps are sized from a
  measured step so the three runs, evaluations included, fit what is left of the section's cap.
- ``sudoku``: the ``gpu`` config of ``experiments.sudoku`` (d 256, batch 256, bf16) with the generated boards,
  the test boards and the MDM steps sized to the cap (boards generate on one CPU core).

Budget: ``--budget-s`` (default 420 s) is split into fixed shares: throughput 30 %, syncs 5 %, profile 10 %,
loss 10 %, sampling 15 %, trio 15 %, sudoku 15 % (renormalised over the sections asked for). A section's cap is
its share plus what the earlier sections left unused (minus what they overran); a section whose cap is used up
is recorded as ``skipped: time cap``. Sections size their loops from measured step times; a single compile or
step cannot be cut short, so a section may overrun its cap by that much. Keep about two minutes of device time
beyond the budget for the start-up and the overrun.

Output: ``OUT/gpu_evidence.json``, rewritten atomically when each section starts and ends::

    {"script", "command", "smoke", "device", "cuda", "torch", "machine", "budget_s", "shares_s",
     "sections_requested", "finished", "wall_s",
     "sections": {NAME: {"status": "ok" | "skipped: time cap" | "error: ONE LINE" | "running" | "pending",
                         "share_s", "cap_s", "wall_s", "result": {...}, "traceback": [...] (errors only)}}}

with, in ``result``: throughput ``runs`` [{loops, compile, batch, oom_batches, first_step_s, compile_s,
sec_per_step, tokens_per_s, model_tflops_per_s, mfu, peak_mem_gib, status}], ``batch``, ``peak_bf16_flops``,
``peak_note``; syncs ``train_step`` {syncs, where[, cuda_syncs, cuda_where]}, ``denoising`` {per_step, fixed, T1, T4}; profile
``sdpa_backend``, ``sdpa_ops``, ``attention_kernels``, ``gpu_busy_s``, ``gpu_busy_fraction``, ``top``; loss
``linear_cross_entropy`` / ``gemms`` / ``plain_cross_entropy`` {sec, tflops_per_s, extra_peak_mem_gib},
``ratio_lce_over_gemms``; sampling ``runs`` {fp32, bf16: {steps, sec_per_step}}, ``bf16_speedup``; trio and
sudoku the plan (steps per model), the sizing (``probe_sec_per_step``, ``baseline_steps``), the experiment's
summary and ``summary_md``.

A section that raises is recorded as ``error: ...`` (one line, the traceback's last lines kept) and the next
section runs; the exit code is then 1 (0 when every section is ok or skipped). ``OUT/trio`` and ``OUT/sudoku``
hold the experiments' own folders (``results.json``, ``summary.md``, figures). A short table per section is
printed as it finishes. Without CUDA and without ``--smoke`` the script says so in one line and exits with code
2, as it does for an unknown section name.

``--smoke``: every section on CPU at toy sizes (a 3-layer width-32 model; the trio and Sudoku at their minimum
steps, whatever the cap), bf16 autocast and ``torch.compile`` of the blocks included (a cold inductor compile is
most of the smoke's time; later runs reuse the inductor cache), a simulated out-of-memory error at the largest
batch to run the fallback, and a nominal 1 TFLOP/s peak so the MFU arithmetic runs. Test hook:
``GPU_EVIDENCE_FAIL=NAME[,NAME:kill]`` makes section NAME raise (or, with ``:kill``, end the process at once) to
check that the JSON keeps the other sections.

Other options: ``--batches 64,32,16,8``, ``--loops 1,12``, ``--compile off,on``, ``--steps 10`` (measured steps
per throughput run at most), ``--warmup 2``, ``--sdpa flash|efficient|cudnn|math`` (pin the backend of every
training step), ``--peak-tflops`` (the dense bf16 peak of a card the table does not list).
"""

from __future__ import annotations

import os

# fewer OOMs from fragmentation
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import gc  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import typer  # noqa: E402

from bench_hardware import peak_flops, sdpa_backend  # noqa: E402
from loopmdm.config import DataConfig, DiffusionConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from loopmdm.config import preset as get_preset  # noqa: E402
from loopmdm.diffusion import Batch, get_schedule, make_objective, predicted_fraction  # noqa: E402
from loopmdm.errors import ConfigError  # noqa: E402
from loopmdm.fileio import jsonable, write_json  # noqa: E402
from loopmdm.model import LoopMDM  # noqa: E402
from loopmdm.model.flops import train_flops_per_token  # noqa: E402
from loopmdm.model.loss import linear_cross_entropy  # noqa: E402
from loopmdm.runtime import autocast_context, compile_blocks, machine_info  # noqa: E402
from loopmdm.runtime_syncs import SyncCounter  # noqa: E402
from loopmdm.sampling import SAMPLERS, Canvas, TokenFilter, sample_canvas  # noqa: E402
from loopmdm.sampling.policies import Fixed  # noqa: E402
from loopmdm.train.distributed import DistEnv  # noqa: E402
from loopmdm.train.step import train_step  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

SECTIONS = ("throughput", "syncs", "profile", "loss", "sampling", "trio", "sudoku")
SHARES = {
    "throughput": 0.30,
    "syncs": 0.05,
    "profile": 0.10,
    "loss": 0.10,
    "sampling": 0.15,
    "trio": 0.15,
    "sudoku": 0.15,
}
FAIL_ENV = "GPU_EVIDENCE_FAIL"
SMOKE_MODEL = dict(
    vocab_size=512,
    max_seq_len=32,
    d_model=32,
    n_heads=2,
    n_layers=3,
    n_h=1,
    n_m=1,
    n_o=1,
    cond_dim=16,
)
SMOKE_BATCHES = [8, 4]  # 8 raises a simulated out-of-memory error: the fallback to 4 runs on CPU
SMOKE_PEAK_FLOPS = 1e12  # nominal: exercises the MFU arithmetic on CPU; the number means nothing
# generation on one CPU core (unique-solution boards), for sizing only
SUDOKU_SECONDS_PER_BOARD = 0.0035


# --------------------------------------------------------------------------- budget


def parse_sections(text: str) -> list[str]:
    """The sections named in ``text`` (comma-separated), in the script's order; an unknown name is a one-line
    ``ConfigError`` listing the known ones."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        what = (
            f"unknown section{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
            if unknown
            else "no section named"
        )
        raise ConfigError(f"--sections: {what}; choose among: {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names]


def split_budget(total_s: float, sections: list[str]) -> dict[str, float]:
    """Each section's fixed share of ``total_s`` seconds (``SHARES`` renormalised over ``sections``)."""
    weight = sum(SHARES[s] for s in sections)
    return {s: total_s * SHARES[s] / weight for s in sections}


class Budget:
    """Time caps per section: a section's cap is its share plus what the earlier ones left unused (negative when
    they overran): cap_i = share_i + sum_{j<i} (cap_j - wall_j) with a skipped section's wall = 0."""

    def __init__(self, total_s: float, sections: list[str]):
        self.total_s = total_s
        self.shares = split_budget(total_s, sections)
        self.leftover = 0.0

    def cap(self, name: str) -> float:
        return self.shares[name] + self.leftover

    def charge(self, name: str, wall_s: float) -> None:
        """Section ``name`` used ``wall_s`` seconds (0 when skipped): its unused cap carries to the next one."""
        self.leftover = self.cap(name) - wall_s


class Clock:
    """The time left of one section's cap."""

    def __init__(self, cap_s: float):
        self.cap_s, self.t0 = cap_s, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.cap_s - self.elapsed()


def fit_count(seconds: float, sec_each: float, lo: int, hi: int) -> int:
    """How many repeats of ``sec_each`` seconds fit in ``seconds``, clamped to [lo, hi]."""
    n = int(seconds // sec_each) if sec_each > 0 else hi
    return max(lo, min(hi, n))


# --------------------------------------------------------------------------- shared pieces


@dataclass
class Ctx:
    """What every section gets: the device, the mode, the output folder and the command-line settings."""

    device: torch.device
    smoke: bool
    out: Path
    batches: list[int] = field(default_factory=lambda: [64, 32, 16, 8])
    loops: list[int] = field(default_factory=lambda: [1, 12])
    compile: list[bool] = field(default_factory=lambda: [False, True])
    steps: int = 10
    warmup: int = 2
    sdpa: Optional[str] = None
    peak_tflops: Optional[float] = None
    # facts a section leaves for later ones (the batch that fitted)
    shared: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def log(self, text: str) -> None:
        print(f"    {text}", flush=True)

    def peak(self) -> tuple[Optional[float], str]:
        """(dense bf16 peak FLOP/s or None, where it comes from)."""
        if self.peak_tflops:
            return self.peak_tflops * 1e12, "--peak-tflops"
        if self.smoke:
            return (
                SMOKE_PEAK_FLOPS,
                "nominal 1 TFLOP/s (--smoke on CPU: the MFU arithmetic only, not a measurement)",
            )
        p = peak_flops(self.device)
        name = device_name(self.device)
        if p is None:
            return None, (
                f"{name!r} is not in loopmdm.runtime.PEAK_BF16_FLOPS: MFU is null; pass --peak-tflops "
                "with the card's dense bf16 peak"
            )
        return p, f"loopmdm.runtime.PEAK_BF16_FLOPS for {name!r}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn: Callable[[], object], device: torch.device, n: int = 1) -> float:
    """Seconds per call of ``fn`` over ``n`` calls (the device synchronised at both ends)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


def is_out_of_memory(e: BaseException) -> bool:
    """``torch.OutOfMemoryError`` or a RuntimeError that reports running out of memory (cuBLAS, cuDNN)."""
    return (
        isinstance(e, torch.OutOfMemoryError)
        or "out of memory" in str(e).lower()
        or "ALLOC_FAILED" in str(e)
    )


def peak_mem_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def model_config(ctx: Ctx) -> tuple[ModelConfig, DiffusionConfig]:
    """The ``paper`` preset's model and diffusion settings (toy model with ``--smoke``)."""
    run = get_preset("paper")
    if ctx.smoke:
        return ModelConfig(**SMOKE_MODEL), DiffusionConfig(s_max=2)
    return run.model, run.diffusion


class TrainStep:
    """One training step as the trainer runs it (``loopmdm.train.step.train_step``: forward and backward under
    autocast of host rows, clipping; the loss and gradient norm stay on the device) plus fused AdamW, on random
    token rows [batch, L] at loop count S = ``loops``. ``simulate_oom_above``: a batch above it raises
    ``torch.OutOfMemoryError`` at once (``--smoke``: runs the fallback on CPU)."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        diffusion: DiffusionConfig,
        loops: int,
        batch: int,
        ctx: Ctx,
        precision: str = "bf16",
        compiled: bool = False,
        simulate_oom_above: Optional[int] = None,
    ):
        if simulate_oom_above is not None and batch > simulate_oom_above:
            raise torch.OutOfMemoryError(f"simulated out of memory at batch {batch} (--smoke)")
        torch.manual_seed(0)
        self.device, self.loops, self.batch, self.precision, self.sdpa = (
            ctx.device,
            loops,
            batch,
            precision,
            ctx.sdpa,
        )
        self.model = LoopMDM(model_cfg).to(ctx.device)
        self.compiled_blocks = compile_blocks(self.model) if compiled else 0
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=3e-4,
            betas=(0.9, 0.999),
            fused=ctx.device.type in ("cpu", "cuda"),
        )
        self.mask_id = model_cfg.vocab_size - 1
        self.seq_len = model_cfg.max_seq_len
        self.objective = make_objective(diffusion, self.mask_id)
        self.gen = torch.Generator().manual_seed(0)
        # on the host
        self.x0 = torch.randint(0, self.mask_id, (batch, self.seq_len), generator=self.gen)
        self.dist = DistEnv(device=ctx.device)

    def __call__(self) -> torch.Tensor:
        noise = self.objective.draw(self.batch, self.seq_len, self.gen)
        with sdpa_backend(self.sdpa):
            loss, _ = train_step(
                self.model,
                self.model,
                self.objective,
                Batch(self.x0),
                noise,
                self.loops,
                grad_accum=1,
                precision=self.precision,
                grad_clip=1.0,
                device=self.device,
                dist=self.dist,
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss


def probe_step_seconds(
    model_cfg: ModelConfig, diffusion: DiffusionConfig, batch: int, precision: str, ctx: Ctx
) -> float:
    """Seconds of one training step at S = 1 (after a warm-up step): what the experiments are sized from."""
    step = TrainStep(model_cfg, diffusion, 1, batch, ctx, precision)
    step()
    sec = timed(step, ctx.device, 2)
    return sec


def fmt(x, spec: str = ".3g", none: str = "-") -> str:
    return none if x is None else format(x, spec)


# --------------------------------------------------------------------------- (A) throughput


def throughput_run(
    model_cfg: ModelConfig,
    diffusion: DiffusionConfig,
    loops: int,
    compiled: bool,
    batches: list[int],
    ctx: Ctx,
    run_cap: float,
    pf: float,
    peak: Optional[float],
) -> dict:
    """The first batch of ``batches`` (largest first) that fits, measured for about ``run_cap`` seconds."""
    t_run = time.perf_counter()
    oom: list[int] = []
    row = {"loops": loops, "compile": compiled}
    for batch in batches:
        free_memory(ctx.device)
        failed = False
        try:
            step = TrainStep(
                model_cfg,
                diffusion,
                loops,
                batch,
                ctx,
                "bf16",
                compiled,
                simulate_oom_above=min(SMOKE_BATCHES) if ctx.smoke else None,
            )
            first = timed(step, ctx.device)  # compilation happens here (forward and backward)
            steady = timed(step, ctx.device)
            for _ in range(max(0, ctx.warmup - 2)):
                steady = timed(step, ctx.device)
            n = fit_count(
                run_cap - (time.perf_counter() - t_run), steady, 1, 3 if ctx.smoke else ctx.steps
            )
            sec = timed(step, ctx.device, n)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            failed = True
        if failed:  # outside the except block: the traceback's tensors are released first
            oom.append(batch)
            step = None
            free_memory(ctx.device)
            continue
        tokens = batch * model_cfg.max_seq_len
        flops = train_flops_per_token(model_cfg, loops, predicted_fraction=pf) * tokens / sec
        row.update(
            status="ok",
            batch=batch,
            oom_batches=oom,
            compiled_blocks=step.compiled_blocks,
            first_step_s=first,
            compile_s=max(0.0, first - sec) if compiled else None,
            sec_per_step=sec,
            measured_steps=n,
            tokens_per_s=tokens / sec,
            model_tflops_per_s=flops / 1e12,
            mfu=flops / peak if peak else None,
            peak_mem_gib=peak_mem_gib(ctx.device),
            wall_s=time.perf_counter() - t_run,
        )
        del step
        free_memory(ctx.device)
        return row
    row.update(
        status=f"error: out of memory at every batch of {batches}",
        batch=None,
        oom_batches=oom,
        wall_s=time.perf_counter() - t_run,
    )
    return row


def section_throughput(ctx: Ctx, clock: Clock) -> dict:
    model_cfg, diffusion = model_config(ctx)
    loops = [1, 2] if ctx.smoke else sorted(set(ctx.loops), reverse=True)
    loops = sorted(loops, reverse=True)  # the largest S first: it decides the batch every run uses
    batches = sorted(set(SMOKE_BATCHES if ctx.smoke else ctx.batches), reverse=True)
    peak, peak_note = ctx.peak()
    pf = predicted_fraction(diffusion)
    plan = [(s, c) for c in ctx.compile for s in loops]
    runs: list[dict] = []
    fixed: Optional[int] = None
    for i, (s, compiled) in enumerate(plan):
        if runs and clock.left() <= 0:
            runs.append({"loops": s, "compile": compiled, "status": "skipped: time cap"})
            continue
        candidates = batches if fixed is None else [b for b in batches if b <= fixed]
        try:
            row = throughput_run(
                model_cfg,
                diffusion,
                s,
                compiled,
                candidates,
                ctx,
                clock.left() / (len(plan) - i),
                pf,
                peak,
            )
        except Exception as e:  # noqa: BLE001 - e.g. a compiler failure: recorded, the other runs go on
            row = {"loops": s, "compile": compiled, "status": one_line(e), "batch": None}
            free_memory(ctx.device)
        if fixed is None and row.get("batch"):
            fixed = row["batch"]
        runs.append(row)
        ctx.log(
            f"S={s} compile={compiled}: {row['status']}, batch {row.get('batch')}, "
            f"{fmt(row.get('tokens_per_s'), '.0f')} tok/s"
        )
    if fixed:
        ctx.shared["batch"] = fixed
    return {
        "model": "toy (--smoke)" if ctx.smoke else "paper preset",
        "d_model": model_cfg.d_model,
        "n_layers": model_cfg.n_layers,
        "seq_len": model_cfg.max_seq_len,
        "vocab_size": model_cfg.vocab_size,
        "precision": "bf16 autocast",
        "sdpa": ctx.sdpa or "automatic",
        "batches_tried": batches,
        "batch": fixed,
        "predicted_fraction": pf,
        "peak_bf16_flops": peak,
        "peak_note": peak_note,
        "mfu_note": None if peak else peak_note,
        "runs": runs,
    }


def throughput_table(res: dict) -> str:
    lines = [
        f"{'S':>4}{'compile':>9}{'batch':>7}{'1st s':>8}{'compile s':>11}{'s/step':>9}{'tok/s':>10}"
        f"{'TFLOP/s':>9}{'MFU':>7}{'mem GiB':>9}  status"
    ]
    for r in res["runs"]:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        lines.append(
            f"{r['loops']:>4}{str(r['compile']):>9}{fmt(r.get('batch'), 'd'):>7}"
            f"{fmt(r.get('first_step_s'), '.2f'):>8}{fmt(r.get('compile_s'), '.1f'):>11}"
            f"{fmt(r.get('sec_per_step'), '.4f'):>9}{fmt(r.get('tokens_per_s'), '.0f'):>10}"
            f"{fmt(r.get('model_tflops_per_s'), '.2f'):>9}{mfu:>7}{fmt(r.get('peak_mem_gib'), '.1f'):>9}"
            f"  {r['status']}" + (f" (OOM at {r['oom_batches']})" if r.get("oom_batches") else "")
        )
    lines.append(f"peak: {res['peak_note']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- (B) syncs


def short_path(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/benchmarks/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def audit_syncs(fn: Callable[[], object], device: torch.device) -> dict:
    """Synchronisations ``fn()`` triggers: ``syncs`` / ``where`` from the library's ``SyncCounter`` (the ops that
    force one, on any device: on a CPU every tensor stands for the accelerator's), and on CUDA also what the
    driver reports (``set_sync_debug_mode("warn")``: ``cuda_syncs`` / ``cuda_where``)."""
    cuda = device.type == "cuda"
    counter = SyncCounter("cuda" if cuda else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with counter:
                fn()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
    sync(device)
    out = {"syncs": counter.total, "where": dict(counter.where.most_common(12))}
    if cuda:
        found = [w for w in caught if "synchroniz" in str(w.message).lower()]
        where = Counter(f"{short_path(w.filename)}:{w.lineno}" for w in found)
        out.update(cuda_syncs=len(found), cuda_where=dict(where.most_common(12)))
    return out


def ancestral(
    model, mask_id: int, n: int, length: int, steps: int, loops: int, schedule, gen: torch.Generator
) -> torch.Tensor:
    """``n`` unconditional samples [n, length] by ancestral sampling with T = ``steps`` at a fixed S."""
    # [N, L]
    x = torch.full((n, length), mask_id, dtype=torch.long, device=next(model.parameters()).device)
    out, _, _, _ = sample_canvas(
        model,
        Canvas(x, torch.ones_like(x, dtype=torch.bool)),
        mask_id,
        steps=steps,
        sampler=SAMPLERS.get("ancestral")(),
        policy=Fixed(loops),
        token_filter=TokenFilter(1.0),
        schedule=schedule,
        gen=gen,
    )
    return out


def section_syncs(ctx: Ctx, clock: Clock) -> dict:
    model_cfg, diffusion = model_config(ctx)
    batch, loops = 2, 2
    step = TrainStep(model_cfg, diffusion, loops, batch, ctx, "bf16")
    step()  # warm-up outside the audit (cuBLAS handles, allocator)
    sched = get_schedule("loglinear")
    L = model_cfg.max_seq_len

    def denoise(T: int) -> Callable[[], object]:
        def run():
            with autocast_context(ctx.device, "bf16"):
                return ancestral(
                    step.model,
                    step.mask_id,
                    batch,
                    L,
                    T,
                    loops,
                    sched,
                    torch.Generator().manual_seed(0),
                )

        return run

    train = audit_syncs(step, ctx.device)
    d1 = audit_syncs(denoise(1), ctx.device)
    d4 = audit_syncs(denoise(4), ctx.device)
    per_step = (d4["syncs"] - d1["syncs"]) / 3
    return {
        "batch": batch,
        "loops": loops,
        "seq_len": L,
        "train_step": train,
        "denoising": {"T1": d1, "T4": d4, "per_step": per_step, "fixed": d1["syncs"] - per_step},
    }


def syncs_table(res: dict) -> str:
    t, d = res["train_step"], res["denoising"]

    def cuda(r: dict) -> str:
        return f" (CUDA reports {r['cuda_syncs']})" if "cuda_syncs" in r else ""

    lines = [f"training step (S={res['loops']}, batch {res['batch']}): {t['syncs']} syncs{cuda(t)}"]
    lines += [f"    {n:>4}  {w}" for w, n in t["where"].items()]
    lines.append(
        f"denoising: {d['per_step']:.1f} syncs per step + {d['fixed']:.1f} per call "
        f"(T=1: {d['T1']['syncs']}{cuda(d['T1'])}, T=4: {d['T4']['syncs']}{cuda(d['T4'])})"
    )
    lines += [f"    {n:>4}  {w}" for w, n in d["T4"]["where"].items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- (C) profile

SDPA_OPS = (  # aten op -> backend (the op PyTorch dispatched scaled_dot_product_attention to)
    ("_scaled_dot_product_flash_attention_for_cpu", "flash (CPU)"),
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_scaled_dot_product_efficient_attention", "efficient"),
    ("_scaled_dot_product_cudnn_attention", "cudnn"),
    ("_scaled_dot_product_fused_attention_overrideable", "fused (overrideable)"),
    ("_scaled_dot_product_attention_math", "math"),
)
ATTENTION_KERNEL_HINTS = ("flash", "fmha", "attention", "sdpa", "attn")


def sdpa_backend_used(op_counts: dict[str, int]) -> tuple[str, dict]:
    """(the SDPA backend(s) seen, {aten op: calls}) from the profiled op names (backward ops included)."""
    seen: dict[str, int] = {}
    backends = []
    for key, n in op_counts.items():
        for op, backend in SDPA_OPS:
            if op in key and "backward" not in key:
                seen[key] = seen.get(key, 0) + n
                if backend not in backends:
                    backends.append(backend)
                break
    return (", ".join(backends) if backends else "none seen"), seen


def busy_seconds(events) -> float:
    """Seconds during which at least one device event (kernel, copy, memset) ran: the union of their intervals."""
    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in events
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
        and not getattr(e, "is_user_annotation", False)
        and not e.name.startswith("ProfilerStep")
    )
    busy, end = 0.0, None
    for s, e in spans:
        if end is None or s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy / 1e6


def device_time_us(avg) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(avg, name):
            return float(getattr(avg, name))
    return 0.0


def averages_table(averages, cuda: bool) -> str:
    """The profiler's key-average table, by self device time on CUDA (the sort key's name varies by release)."""
    for key in (
        ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)
    ):
        try:
            return averages.table(sort_by=key, row_limit=40)
        except (KeyError, AttributeError, ValueError):
            continue
    return averages.table(row_limit=40)


def section_profile(ctx: Ctx, clock: Clock) -> dict:
    from torch.profiler import ProfilerActivity, profile

    model_cfg, diffusion = model_config(ctx)
    batch = 4 if ctx.smoke else min(ctx.shared.get("batch", 8), 16)
    loops = 2
    step = TrainStep(model_cfg, diffusion, loops, batch, ctx, "bf16")
    step()
    sec = timed(step, ctx.device)
    # the profiler slows steps and its parsing takes time
    n = fit_count(clock.left() * 0.4, sec * 3, 1, 3)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    with profile(activities=activities) as prof:
        wall = timed(step, ctx.device, n) * n
    averages = prof.key_averages()
    ops = {a.key: int(a.count) for a in averages}
    backend, sdpa_ops = sdpa_backend_used(ops)
    by = device_time_us if ctx.cuda else (lambda a: float(a.self_cpu_time_total))
    top = sorted(averages, key=by, reverse=True)[:12]
    res = {
        "batch": batch,
        "loops": loops,
        "seq_len": model_cfg.max_seq_len,
        "steps": n,
        "sec_per_step_unprofiled": sec,
        "wall_s": wall,
        "sdpa_backend": backend,
        "sdpa_ops": sdpa_ops,
        "ranked_by": "self device time" if ctx.cuda else "self CPU time",
        "top": [{"name": a.key[:120], "calls": int(a.count), "ms": by(a) / 1e3} for a in top],
    }
    if ctx.cuda:
        kernels = {
            a.key[:120]: int(a.count)
            for a in averages
            if device_time_us(a) > 0 and any(h in a.key.lower() for h in ATTENTION_KERNEL_HINTS)
        }
        busy = busy_seconds(prof.events())
        res.update(
            attention_kernels=kernels,
            gpu_busy_s=busy,
            gpu_busy_fraction=busy / wall if wall else None,
        )
    else:
        res.update(
            attention_kernels="n/a: no CUDA", gpu_busy_s="n/a: no CUDA", gpu_busy_fraction=None
        )
    (ctx.out / "profile_top.txt").write_text(averages_table(averages, ctx.cuda))
    return res


def profile_table(res: dict) -> str:
    lines = [f"SDPA backend: {res['sdpa_backend']} {res['sdpa_ops']}"]
    if isinstance(res["gpu_busy_s"], float):
        lines.append(
            f"GPU busy {res['gpu_busy_s']:.3f} s of {res['wall_s']:.3f} s wall "
            f"({res['gpu_busy_fraction']:.0%}) over {res['steps']} steps (batch {res['batch']}, "
            f"S={res['loops']}); attention kernels: {res['attention_kernels']}"
        )
    else:
        lines.append(
            f"GPU busy: {res['gpu_busy_s']}; {res['steps']} steps in {res['wall_s']:.3f} s"
        )
    lines.append(f"top by {res['ranked_by']}:")
    lines += [f"  {t['ms']:>9.2f} ms {t['calls']:>6}x  {t['name'][:90]}" for t in res["top"][:8]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- (D) loss


def section_loss(ctx: Ctx, clock: Clock) -> dict:
    N, V, D = (512, 4096, 64) if ctx.smoke else (16384, 50258, 768)
    dev = ctx.device
    torch.manual_seed(0)  # drawn on the device: N x V values on the CPU would take seconds
    h = torch.randn(N, D, device=dev).requires_grad_()
    W = (torch.randn(V, D, device=dev) * 0.02).requires_grad_()
    y = torch.randint(0, V, (N,), device=dev)
    hb, Wb = h.detach().bfloat16(), W.detach().bfloat16()
    G = torch.randn(N, V, device=dev, dtype=torch.bfloat16) * 1e-3

    def lce():
        with autocast_context(dev, "bf16"):
            total, _ = linear_cross_entropy(h, W, y)
        total.backward()
        h.grad = W.grad = None

    def gemms():
        hb @ Wb.t()
        G @ Wb
        G.t() @ hb

    def plain_ce():
        with autocast_context(dev, "bf16"):
            logits = h @ W.t()
        F.cross_entropy(logits.float(), y, reduction="sum").backward()
        h.grad = W.grad = None

    flops = 3 * 2 * N * V * D
    out = {"positions": N, "vocab_size": V, "d_model": D, "precision": "bf16", "gemm_flops": flops}
    fns = {"linear_cross_entropy": lce, "gemms": gemms, "plain_cross_entropy": plain_ce}
    for i, (name, fn) in enumerate(fns.items()):
        free_memory(dev)
        base = torch.cuda.memory_allocated(dev) if ctx.cuda else 0
        first = timed(fn, dev)
        n = fit_count(clock.left() * 0.8 / (len(fns) - i), first, 1, 3 if ctx.smoke else 20)
        sec = timed(fn, dev, n)
        out[name] = {
            "sec": sec,
            "repeats": n,
            "tflops_per_s": flops / sec / 1e12,
            "extra_peak_mem_gib": (torch.cuda.max_memory_allocated(dev) - base) / 2**30
            if ctx.cuda
            else None,
        }
    out["ratio_lce_over_gemms"] = out["linear_cross_entropy"]["sec"] / out["gemms"]["sec"]
    out["ratio_lce_over_plain_ce"] = (
        out["linear_cross_entropy"]["sec"] / out["plain_cross_entropy"]["sec"]
    )
    return out


def loss_table(res: dict) -> str:
    lines = [
        f"N={res['positions']} V={res['vocab_size']} D={res['d_model']} bf16 (forward + backward)",
        f"{'':<22}{'ms':>9}{'TFLOP/s':>9}{'extra GiB':>11}",
    ]
    for name in ("linear_cross_entropy", "gemms", "plain_cross_entropy"):
        r = res[name]
        lines.append(
            f"{name:<22}{r['sec'] * 1e3:>9.2f}{r['tflops_per_s']:>9.2f}"
            f"{fmt(r['extra_peak_mem_gib'], '.2f'):>11}"
        )
    lines.append(
        f"LCE / GEMMs {res['ratio_lce_over_gemms']:.2f}x, "
        f"LCE / plain CE {res['ratio_lce_over_plain_ce']:.2f}x"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------- (E) sampling


def section_sampling(ctx: Ctx, clock: Clock) -> dict:
    model_cfg, _ = model_config(ctx)
    loops, N = (2, 2) if ctx.smoke else (12, 8)
    L = model_cfg.max_seq_len
    torch.manual_seed(0)
    model = LoopMDM(model_cfg).to(ctx.device).eval()
    mask_id = model_cfg.vocab_size - 1
    sched = get_schedule("loglinear")
    out = {
        "model": "toy (--smoke)" if ctx.smoke else "paper preset (random weights)",
        "num_samples": N,
        "length": L,
        "loops": loops,
        "sampler": "ancestral",
        "runs": {},
    }
    for i, precision in enumerate(("fp32", "bf16")):

        def run(T: int, precision: str = precision) -> None:
            with autocast_context(ctx.device, precision):
                ancestral(model, mask_id, N, L, T, loops, sched, torch.Generator().manual_seed(0))

        free_memory(ctx.device)
        warm = timed(lambda: run(2), ctx.device) / 2  # the first call includes one-off set-up
        T = fit_count(clock.left() * 0.85 / (2 - i), warm, 2, 8 if ctx.smoke else 64)
        sec = timed(partial(run, T), ctx.device) / T
        out["runs"][precision] = {
            "steps": T,
            "sec_per_step": sec,
            "tokens_per_s": N * L / (sec * T),
            "peak_mem_gib": peak_mem_gib(ctx.device),
        }
    out["bf16_speedup"] = out["runs"]["fp32"]["sec_per_step"] / out["runs"]["bf16"]["sec_per_step"]
    out["note"] = "fp32 runs with TF32 matmuls on CUDA" if ctx.cuda else "CPU"
    return out


def sampling_table(res: dict) -> str:
    lines = [
        f"N={res['num_samples']} L={res['length']} S={res['loops']} ({res['model']})",
        f"{'':<6}{'T':>5}{'ms/step':>10}{'mem GiB':>9}",
    ]
    for p, r in res["runs"].items():
        lines.append(
            f"{p:<6}{r['steps']:>5}{r['sec_per_step'] * 1e3:>10.2f}{fmt(r['peak_mem_gib'], '.1f'):>9}"
        )
    lines.append(f"bf16 speed-up {res['bf16_speedup']:.2f}x ({res['note']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- (F) trio


def byte_tokenizer(path: Path) -> Path:
    """A byte-level tokenizer with no merges (256 byte tokens + pad / bos / eos / mask) saved to ``path``: a fixed
    vocabulary, so no BPE is trained on the GPU machine."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from loopmdm.data.tokenizer import SPECIALS

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS.values()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def trio_config(ctx: Ctx, tokenizer: Path):
    from loopmdm.experiments.compute_matched_config import ComputeMatchedConfig

    if ctx.smoke:
        asyncio_dir = Path(sysconfig.get_paths()["stdlib"]) / "asyncio"  # ~0.5 MB: a quick CPU read
        model = ModelConfig(
            vocab_size=260,
            max_seq_len=32,
            d_model=32,
            n_heads=2,
            n_layers=3,
            n_h=1,
            n_m=1,
            n_o=1,
            cond_dim=16,
        )
        data = DataConfig(source=str(asyncio_dir), val_fraction=0.2, tokenizer=str(tokenizer))
        train = TrainConfig(
            batch_size=8,
            precision="fp32",
            device="cpu",
            eval_batches=1,
            log_every=5,
            threads=1,
            keep_last=1,
        )
        s_max, n_evals, final_batches = 3, 4, 2
    else:
        model = ModelConfig(
            vocab_size=260,
            max_seq_len=256,
            d_model=512,
            n_heads=8,
            n_layers=8,
            n_h=1,
            n_m=2,
            n_o=5,
            cond_dim=128,
        )
        data = DataConfig(source="stdlib", max_train_bytes=8_000_000, tokenizer=str(tokenizer))
        train = TrainConfig(
            batch_size=128,
            lr=1e-3,
            precision="bf16",
            device=str(ctx.device),
            eval_batches=8,
            log_every=20,
            keep_last=1,
        )
        s_max, n_evals, final_batches = 4, 8, 16
    run = RunConfig(model=model, diffusion=DiffusionConfig(s_max=s_max), data=data, train=train)
    return ComputeMatchedConfig(
        name="gpu-evidence-smoke" if ctx.smoke else "gpu-evidence",
        run=run,
        seeds=[0],
        n_evals=n_evals,
        final_eval_batches=final_batches,
        warmup_frac=0.05,
    )


def section_trio(ctx: Ctx, clock: Clock) -> dict:
    from loopmdm.data import prepare_data
    from loopmdm.experiments.compute_matched import baseline_run_config, run_compute_matched

    folder = ctx.out / "trio"
    cfg = trio_config(ctx, byte_tokenizer(folder / "byte_tokenizer.json"))
    run = cfg.run
    t0 = time.perf_counter()
    # cached for the runs
    data = prepare_data(run.data, run.model.vocab_size, run.model.max_seq_len, log=ctx.log)
    run.model.vocab_size = data.tokenizer.vocab_size
    prep_s = time.perf_counter() - t0
    sec = probe_step_seconds(
        baseline_run_config(run).model,
        run.diffusion,
        run.train.batch_size,
        run.train.precision,
        ctx,
    )
    left = clock.left()
    # evaluations, final NELBO over S, checkpoints, figures
    overhead = 5.0 if ctx.smoke else 10.0 + 0.2 * left
    lo = 40 if ctx.smoke else 60  # fewer steps miss the 2 % FLOPs matching after rounding
    cfg.baseline_steps = fit_count(left - overhead, 3 * 1.3 * sec, lo, lo if ctx.smoke else 50_000)
    ctx.log(
        f"data ready in {prep_s:.1f} s; MDM step {sec * 1e3:.1f} ms -> {cfg.baseline_steps} MDM steps"
    )
    res = run_compute_matched(cfg.validate(), folder, progress=False, log=ctx.log)
    s = res["summary"]
    return {
        "folder": str(folder),
        "tokenizer": "byte-level, 260 tokens (fixed, no BPE trained)",
        "data_prep_s": prep_s,
        "probe_sec_per_step": sec,
        "baseline_steps": cfg.baseline_steps,
        "plan": res["plan"],
        "final_nelbo": s["final_nelbo"],
        "flops_ratio_mdm_over_loopmdm": s["flops_ratio_mdm_over_loopmdm"],
        "flops_ratio_mdm_over_deeper": s["flops_ratio_mdm_over_deeper"],
        "flops_agreement": s["flops_agreement"],
        "loopmdm_smax_beats_mdm": s["loopmdm_smax_beats_mdm"],
        "loopmdm_smax_beats_deeper": s["loopmdm_smax_beats_deeper"],
        "experiment_wall_s": res["wall_s"],
        "summary_md": (folder / "summary.md").read_text(),
    }


def trio_table(res: dict) -> str:
    steps = ", ".join(f"{r['name']} {r['steps']}" for r in res["plan"]["runs"])
    return (
        f"steps {steps} "
        f"(MDM step {res['probe_sec_per_step'] * 1e3:.1f} ms probed, data {res['data_prep_s']:.1f} s)\n"
        + res["summary_md"].rstrip()
    )


# --------------------------------------------------------------------------- (G) sudoku


def sudoku_config(ctx: Ctx, cap_s: float):
    from loopmdm.experiments.sudoku import load_sudoku_config

    cfg = load_sudoku_config("gpu")
    r = cfg.run
    if ctx.smoke:
        cfg.name, cfg.test_boards, cfg.steps = "gpu-evidence-smoke", 8, [1, 0]
        r.model.d_model, r.model.n_heads = 32, 2
        r.data.sudoku.n_train, r.data.sudoku.n_val, r.data.sudoku.n_test = 64, 8, 8
        r.train.batch_size, r.train.precision, r.train.device, r.train.threads = 8, "fp32", "cpu", 1
        r.train.eval_batches = 1
    else:
        cfg.name = "gpu-evidence"
        r.train.device = str(ctx.device)
        # boards are generated on one CPU core: a fifth of the cap at most (the gpu config's 50k take minutes)
        r.data.sudoku.n_train = fit_count(0.2 * cap_s, SUDOKU_SECONDS_PER_BOARD, 1000, 50_000)
        cfg.test_boards = r.data.sudoku.n_test = 1000 if cap_s > 240 else 200
    return cfg


def section_sudoku(ctx: Ctx, clock: Clock) -> dict:
    from loopmdm.data.sudoku import generated_splits
    from loopmdm.experiments.sudoku import run_sudoku

    folder = ctx.out / "sudoku"
    cfg = sudoku_config(ctx, clock.cap_s)
    r = cfg.run
    t0 = time.perf_counter()
    generated_splits(r.data, ctx.log)  # the boards, cached for run_sudoku
    gen_s = time.perf_counter() - t0
    sec = probe_step_seconds(r.model, r.diffusion, r.train.batch_size, r.train.precision, ctx)
    left = clock.left()
    # solving the test boards over T x S, figures
    reserve = 4.0 if ctx.smoke else max(10.0, 0.25 * left)
    lo = 40 if ctx.smoke else 100
    cfg.baseline_steps = fit_count(left - reserve, 3 * 1.5 * sec, lo, lo if ctx.smoke else 12_000)
    ctx.log(
        f"{r.data.sudoku.n_train} boards in {gen_s:.1f} s; MDM step {sec * 1e3:.1f} ms -> "
        f"{cfg.baseline_steps} MDM steps"
    )
    res = run_sudoku(cfg.validate(), folder, log=ctx.log)
    return {
        "folder": str(folder),
        "train_boards": r.data.sudoku.n_train,
        "test_boards": cfg.test_boards,
        "generate_s": gen_s,
        "probe_sec_per_step": sec,
        "baseline_steps": cfg.baseline_steps,
        "plan": res["plan"],
        "checks": res["checks"],
        "summary": res["summary"],
        "experiment_wall_s": res["wall_s"],
        "summary_md": (folder / "summary.md").read_text(),
    }


def sudoku_table(res: dict) -> str:
    steps = ", ".join(f"{r['name']} {r['steps']}" for r in res["plan"]["runs"])
    return (
        f"{res['train_boards']} train boards ({res['generate_s']:.1f} s), {res['test_boards']} test boards, "
        f"steps {steps}\n" + res["summary_md"].rstrip()
    )


# --------------------------------------------------------------------------- driver

RUNNERS: dict[str, tuple[Callable[[Ctx, Clock], dict], Callable[[dict], str]]] = {
    "throughput": (section_throughput, throughput_table),
    "syncs": (section_syncs, syncs_table),
    "profile": (section_profile, profile_table),
    "loss": (section_loss, loss_table),
    "sampling": (section_sampling, sampling_table),
    "trio": (section_trio, trio_table),
    "sudoku": (section_sudoku, sudoku_table),
}


def forced_failure(name: str) -> None:
    """Test hook: ``GPU_EVIDENCE_FAIL=name`` raises in that section, ``name:kill`` ends the process at once."""
    for item in os.environ.get(FAIL_ENV, "").split(","):
        target, _, how = item.strip().partition(":")
        if target == name:
            if how == "kill":
                os._exit(3)
            raise RuntimeError(f"forced failure ({FAIL_ENV}={item.strip()})")


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or "(no message)"
    return f"error: {type(e).__name__}: {text}"[:400]


class Report:
    """The JSON, rewritten atomically after every change."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data, self.t0 = path, data, time.perf_counter()

    def write(self) -> None:
        self.data["wall_s"] = time.perf_counter() - self.t0
        write_json(self.path, jsonable_plain(self.data))


def jsonable_plain(obj):
    """``obj`` as JSON types (NaN -> null, anything else unknown -> its string)."""
    obj = jsonable(obj)
    if isinstance(obj, dict):
        return {k: jsonable_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [jsonable_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def run_sections(ctx: Ctx, names: list[str], budget_s: float, report: Report) -> bool:
    """Run ``names`` in order under the budget; True when none failed."""
    budget = Budget(budget_s, names)
    entries = report.data["sections"]
    ok = True
    for name in names:
        cap = budget.cap(name)
        entry = entries[name]
        entry.update(share_s=budget.shares[name], cap_s=cap)
        if cap <= 0:
            entry.update(status="skipped: time cap", wall_s=0.0)
            budget.charge(name, 0.0)
            report.write()
            print(f"\n== {name}: skipped (time cap used up by earlier sections)", flush=True)
            continue
        entry["status"] = "running"
        report.write()
        print(f"\n== {name} (cap {cap:.0f} s)", flush=True)
        clock = Clock(cap)
        fn, table = RUNNERS[name]
        try:
            forced_failure(name)
            entry["result"] = fn(ctx, clock)
            entry["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - recorded; the next section runs
            ok = False
            entry["status"] = one_line(e)
            entry["traceback"] = traceback.format_exc().strip().splitlines()[-12:]
            print(f"{name}: {entry['status']}", file=sys.stderr, flush=True)
        # the section's tensors are gone once it returned (closures included)
        free_memory(ctx.device)
        entry["wall_s"] = clock.elapsed()
        budget.charge(name, entry["wall_s"])
        report.write()
        if entry["status"] == "ok":
            try:
                text = table(entry["result"])
            except Exception as e:  # noqa: BLE001 - a table bug must not lose the section
                text = f"(table failed: {one_line(e)})"
            print(text, flush=True)
        print(f"-- {name}: {entry['status']}, {entry['wall_s']:.1f} s of {cap:.0f} s", flush=True)
    return ok


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what}={text!r} must be comma-separated integers") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{what}={text!r} must list integers >= 1")
    return values


def parse_compile(text: str) -> list[bool]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in ("off", "on") for m in modes):
        raise ConfigError(f"--compile={text!r}: use off, on or off,on")
    return [m == "on" for m in dict.fromkeys(modes)]


@app.command()
def main(
    out: Path = typer.Option(Path("benchmarks/results/gpu_evidence"), help="Output folder."),
    smoke: bool = typer.Option(
        False, "--smoke", help="Every section on CPU at toy sizes (about 2 minutes)."
    ),
    sections: str = typer.Option(
        ",".join(SECTIONS), help="Comma-separated sections to run (in the script's order)."
    ),
    budget_s: float = typer.Option(
        420.0, "--budget-s", help="Seconds for all sections, split in fixed shares."
    ),
    batches: str = typer.Option(
        "64,32,16,8", help="Throughput batches to try, the largest that fits is used."
    ),
    loops: str = typer.Option("1,12", help="Throughput loop counts S."),
    compile: str = typer.Option(
        "off,on", help="Throughput with torch.compile of the blocks: off, on or both."
    ),
    steps: int = typer.Option(10, help="At most this many measured steps per throughput run."),
    warmup: int = typer.Option(
        2,
        help="Warm-up steps per throughput run, at least 2 (the first compiles, the "
        "second sizes the measurement).",
    ),
    sdpa: Optional[str] = typer.Option(
        None, help="Pin one SDPA backend: flash, efficient, cudnn or math."
    ),
    peak_tflops: Optional[float] = typer.Option(
        None, help="The card's dense bf16 peak, TFLOP/s (unlisted cards)."
    ),
) -> None:
    """Throughput / MFU, sync audit, profile, loss kernel, sampling, the compute-matched trio and Sudoku on one GPU,
    each section under a time cap, the JSON rewritten after each."""
    names = parse_sections(sections)
    if budget_s < 0:
        raise ConfigError(f"--budget-s={budget_s} must be >= 0")
    if steps < 1 or warmup < 1:
        raise ConfigError("--steps and --warmup must be >= 1")
    if sdpa is not None:
        with sdpa_backend(sdpa):  # an unknown name is a one-line error now, not inside a section
            pass
    ctx = Ctx(
        device=torch.device("cpu"),
        smoke=smoke,
        out=out,
        batches=parse_ints(batches, "--batches"),
        loops=parse_ints(loops, "--loops"),
        compile=parse_compile(compile),
        steps=steps,
        warmup=warmup,
        sdpa=sdpa,
        peak_tflops=peak_tflops,
    )
    if not smoke:
        if not torch.cuda.is_available():
            raise ConfigError(
                "no CUDA device here; gpu_evidence.py needs one GPU (run it where a GPU is lent), or "
                "pass --smoke for the CPU check of the script"
            )
        ctx.device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(
        out / "gpu_evidence.json",
        {
            "script": "benchmarks/gpu_evidence.py",
            "command": " ".join(sys.argv),
            "smoke": smoke,
            "device": device_name(ctx.device),
            "cuda": ctx.cuda,
            "torch": torch.__version__,
            "machine": machine_info(),
            "budget_s": budget_s,
            "shares_s": split_budget(budget_s, names),
            "sections_requested": names,
            "finished": False,
            "wall_s": 0.0,
            "sections": {n: {"status": "pending"} for n in names},
        },
    )
    report.write()
    print(
        f"gpu_evidence on {report.data['device']} (torch {torch.__version__}), budget {budget_s:.0f} s: "
        f"{', '.join(names)}",
        flush=True,
    )
    ok = run_sections(ctx, names, budget_s, report)
    report.data["finished"] = True
    report.write()
    entries = report.data["sections"]
    print(
        "\nwall time per section: "
        + ", ".join(
            f"{n} {e.get('wall_s', 0):.0f}s ({e['status'].split(':')[0]})"
            for n, e in entries.items()
        )
    )
    print(f"wrote {report.path} ({report.data['wall_s']:.0f} s)")
    if not ok:
        failed = [n for n, e in entries.items() if e["status"].startswith("error")]
        print(
            f"error: section{'s' if len(failed) > 1 else ''} {', '.join(failed)} failed; see {report.path}",
            file=sys.stderr,
        )
        raise typer.Exit(1)


def run_app() -> None:
    code = app(standalone_mode=False)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


if __name__ == "__main__":
    from loopmdm.cli import one_line_errors

    one_line_errors(run_app)
