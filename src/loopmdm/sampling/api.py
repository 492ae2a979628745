"""``generate``: the whole sampling API as one pure function (every argument documented, nothing global).

out = generate(model, tokenizer, num_samples=4, steps=64, sampler="cached",
               policy="converge", policy_options={"threshold": 0.05, "s_max": 12}, seed=0)
out.tokens  # [N, L]      out.texts   # decoded
out.report  # ComputeReport: network calls, loop iterations, FLOPs, wall time, loops per step
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..diffusion.schedules import NoiseSchedule, get_schedule
from ..errors import ConfigError
from ..model.fields import check_int
from ..registry import build
from ..runtime import autocast_context
from .conditioning import Canvas, build_canvas
from .filters import TokenFilter
from .policies import LOOP_POLICIES, LoopPolicy
from .report import ComputeMeter, ComputeReport, Trajectory, TrajectoryRecorder
from .runner import Denoiser
from .samplers import SAMPLERS, Sampler
from .session import Session, first_true


@dataclass
class SampleOutput:
    """tokens [N, L] (LongTensor; with ``stop_at_eos`` the positions after the first generated EOS hold the
    pad id, or EOS when the tokenizer has no pad); texts: each row decoded (special tokens skipped; cut at
    the first generated EOS with ``stop_at_eos``); report: the compute spent; trajectory: when recorded;
    lengths [N]: tokens up to (excluding) the first generated EOS, L when there is none."""

    tokens: torch.Tensor
    texts: list[str]
    report: ComputeReport
    trajectory: Optional[Trajectory] = None
    lengths: Optional[torch.Tensor] = None


# denoising steps T beyond this are a typo: T = L already reveals one token per step
MAX_STEPS = 1_000_000
# floats of d_model per position alive at once in a forward pass (a rough floor)
ACTIVATIONS_PER_TOKEN = 12


def _check_steps(steps) -> int:
    steps = check_int(steps, "steps", 1, " (the number of denoising steps T)")
    if steps > MAX_STEPS:
        raise ConfigError(
            f"steps={steps} exceeds the supported maximum of {MAX_STEPS:,} denoising steps; use at most "
            "the number of positions to generate (T = L reveals one token per step)"
        )
    return steps


def sampling_memory(model, num_samples: int, length: int) -> int:
    """A floor of the bytes sampling ``num_samples`` rows of ``length`` tokens takes: the fp32 logits over the
    vocabulary and the activations of every position (``N x L x (V + 12 d_model) x 4``)."""
    cfg = getattr(model, "config", None)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    width = int(getattr(cfg, "d_model", 0) or 0)
    return int(num_samples) * int(length) * (vocab + ACTIVATIONS_PER_TOKEN * width) * 4


def check_sample_memory(model, num_samples: int, length: int, device=None) -> None:
    """Refuse (one-line ``ConfigError``) a batch whose ``sampling_memory`` exceeds the memory available on the
    model's device, before any tensor of that size is allocated; the message gives the largest N that fits."""
    from ..runtime import available_memory

    check_int(num_samples, "num_samples")
    device = device if device is not None else next(model.parameters()).device
    need = sampling_memory(model, num_samples, length)
    have = available_memory(device)
    if have is None:
        have = 1 << 40  # unknown: only absurd requests (a terabyte) are refused
    if need <= have:
        return
    per_row = max(sampling_memory(model, 1, length), 1)
    fit = have // per_row
    how = f"use at most {fit} (--num-samples {fit})" if fit >= 1 else "lower the length L"
    raise ConfigError(
        f"num_samples={num_samples} at L={length} tokens needs about {need / 2**30:,.1f} GiB "
        f"(N x L x (vocabulary + activations) x 4 bytes) but {torch.device(device).type} memory has "
        f"{have / 2**30:,.1f} GiB available; {how}"
    )


@torch.no_grad()
def sample_canvas(
    model,
    canvas: Canvas,
    mask_id: int,
    *,
    steps: int,
    sampler: Sampler,
    policy: LoopPolicy,
    token_filter: TokenFilter,
    schedule: NoiseSchedule,
    gen: torch.Generator,
    eos_id: Optional[int] = None,
    fill_id: Optional[int] = None,
    stop_at_eos: bool = False,
    record_trajectory: bool = False,
    on_step: Optional[Callable] = None,
    precision: str = "fp32",
):
    """Run ``sampler`` on a canvas (tokenizer-free core of ``generate``); ``precision="bf16"``: the network under
    bf16 autocast (the draws stay in float64). Returns (tokens [N, L], lengths [N], ComputeReport,
    Trajectory | None)."""
    steps = _check_steps(steps)
    x, free = canvas.x.clone(), canvas.free.clone()
    N, L = x.shape
    was_training = model.training
    model.eval()
    meter = ComputeMeter(model.config, N, L)
    policy.reset(N, L)
    recorder = TrajectoryRecorder(x, free) if record_trajectory else None
    session = Session(
        x,
        free,
        mask_id,
        Denoiser(model, policy, meter, mask_id, free),
        meter,
        token_filter,
        schedule,
        steps,
        gen,
        eos_id=eos_id,
        stop_at_eos=stop_at_eos,
        recorder=recorder,
        on_step=on_step,
    )
    start = time.perf_counter()
    try:
        with autocast_context(x.device, precision):
            sampler.run(session)
    finally:
        model.train(was_training)
    x = session.x
    lengths = torch.full((N,), L, dtype=torch.long, device=x.device)
    if stop_at_eos and eos_id is not None:
        lengths = first_true((x == eos_id) & free)  # [N]
        after = (torch.arange(L, device=x.device)[None] > lengths[:, None]) & free  # [N, L]
        if recorder is not None:  # still-masked positions after EOS: filled at the last step run
            unrevealed = (after & (x == mask_id)).cpu()
            recorder.reveal_step[unrevealed] = max(len(recorder.loops) - 1, 0)
            recorder.reveal_confidence[unrevealed] = 0.0
        x[after] = eos_id if fill_id is None else fill_id
    if bool((x == mask_id).any()):
        # every sampler ends at t = 0
        raise RuntimeError("sampler left masked positions; this is a bug")
    report = meter.finish(time.perf_counter() - start, generated_tokens=int(free.sum()))
    trajectory = recorder.build() if recorder is not None else None
    if trajectory is not None:
        trajectory.snapshots[-1:] = [x.detach().cpu().clone()] if trajectory.snapshots else []
    return x, lengths, report, trajectory


def generate(
    model,
    tokenizer,
    *,
    num_samples: int = 1,
    length: Optional[int] = None,
    steps: int = 64,
    sampler: str = "ancestral",
    sampler_options: Optional[dict] = None,
    policy: str = "fixed",
    policy_options: Optional[dict] = None,
    prompt: Optional[str] = None,
    template: Optional[str] = None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: int = 0,
    stop_at_eos: bool = False,
    record_trajectory: bool = False,
    on_step: Optional[Callable] = None,
    schedule: str | NoiseSchedule = "loglinear",
    prompt_ids: Optional[Sequence[int]] = None,
    precision: str = "fp32",
) -> SampleOutput:
    """Sample text from a LoopMDM.

    model: a ``LoopMDM`` (its device is used; run in eval mode, gradients off).
    tokenizer: a ``TextTokenizer`` (mask / BOS / EOS / pad ids, encode, decode).
    num_samples: N sequences sampled together in one batch.
    length: the window L in tokens, prompt included (default: model.config.max_seq_len, or the template's
        length); at most max_seq_len.
    steps: T denoising steps (from t = 1, all masked, to t = 0).
    sampler: one of ``SAMPLERS`` (ancestral, cached, confidence, semi_ar); sampler_options: its keyword
        options (cached: granularity; confidence: order, threshold, cache, refresh, delay; semi_ar: block_length
        and the same; see ``loopmdm.sampling.kvcache`` and docs/sampling.md "Fast sampling").
    policy: one of ``LOOP_POLICIES`` (fixed, schedule, converge, per_token, warm): how many mid-block
        iterations S each network call runs; policy_options: its options (fixed: loops; the others:
        s_min, s_max, and threshold / criterion / shape, center, width). Pass the checkpoint's training
        ``diffusion.max_loops`` (the largest S it trained with) as loops / s_max (default 4, the tiny preset's).
    prompt: text kept fixed at the start (after a BOS); template: infill template with ``[MASK:n]`` spans
        (see ``loopmdm.sampling.conditioning``); prompt_ids: a prompt as token ids, used verbatim; at most
        one of the three.
    temperature (>= 0, 0 = greedy), top_k (>= 1), top_p (in (0, 1]): filters of p_theta(x_0 | x_t) applied
        before each draw (``loopmdm.sampling.filters``).
    seed: seeds the CPU generator every random draw comes from (same seed -> same output).
    stop_at_eos: variable-length output: a sample ends at its first generated EOS (later positions are
        filled with pad and not decoded); sampling stops early once every sample's EOS is settled.
    record_trajectory: also return a ``Trajectory`` (reveal step / loops / confidence per token, snapshots).
    on_step: called with a ``StepInfo`` after every denoising step (streaming).
    schedule: the noise schedule alpha_t (name in ``loopmdm.diffusion.SCHEDULES`` or an object); use the
        checkpoint's ``diffusion.schedule``.
    precision: ``"fp32"`` or ``"bf16"`` (the network under bf16 autocast on the model's device; TF32 matmuls on
        CUDA in either case, see ``loopmdm.runtime.pick_device``).

    Returns a ``SampleOutput`` (tokens, texts, report, trajectory, lengths). Bad arguments raise
    ``ConfigError`` with a one-line message.
    """
    steps = _check_steps(steps)
    token_filter = TokenFilter(temperature, top_k, top_p)
    sampler_obj = build(SAMPLERS, sampler, sampler_options)
    policy_obj = build(LOOP_POLICIES, policy, policy_options)
    sched = get_schedule(schedule) if isinstance(schedule, str) else schedule
    if check_int(seed, "seed", 0) >= 2**64:
        raise ConfigError(f"seed={seed!r} must be an integer in [0, 2**64)")
    device = next(model.parameters()).device
    # too long: build_canvas says so
    if length is None or check_int(length, "length") <= model.config.max_seq_len:
        check_sample_memory(model, num_samples, length or model.config.max_seq_len, device)
    canvas = build_canvas(
        tokenizer,
        num_samples,
        length,
        model.config.max_seq_len,
        prompt=prompt,
        template=template,
        device=device,
        prompt_ids=prompt_ids,
    )
    gen = torch.Generator().manual_seed(seed)
    fill = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    x, lengths, report, trajectory = sample_canvas(
        model,
        canvas,
        tokenizer.mask_id,
        steps=steps,
        sampler=sampler_obj,
        policy=policy_obj,
        token_filter=token_filter,
        schedule=sched,
        gen=gen,
        eos_id=tokenizer.eos_id,
        fill_id=fill,
        stop_at_eos=stop_at_eos,
        record_trajectory=record_trajectory,
        on_step=on_step,
        precision=precision,
    )
    texts = [tokenizer.decode(row[: int(n)].tolist()) for row, n in zip(x, lengths)]
    return SampleOutput(
        tokens=x, texts=texts, report=report, trajectory=trajectory, lengths=lengths
    )
