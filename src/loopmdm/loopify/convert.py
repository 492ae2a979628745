"""``loopify``: a trained MDM or masked LM -> a library run folder whose layers [A, B) are the looped mid block.

    head = layers [0, A) (once)  ->  mid = layers [A, B) (S times)  ->  tail = layers [B, L) (once)

A library run of the plain MDM (``loopmdm``) is mapped into a ``LoopMDM`` with n_h = A, n_m = B - A by
renaming its block keys; a transformers model (BERT, RoBERTa, ModernBERT, Dream) keeps its own modules inside a
``WrappedLoopMDM`` (``loopmdm.backbones``). Either way the result computes, at S = 1, exactly what the source
computed: ``loopify`` checks it on a probe input (fp32, relative difference of the logits below 1e-4, recorded
in ``loopify.json``; the probe runs past the source's local attention window, if any) and refuses to write a
model that fails. A family may refuse a mid block it cannot loop correctly: ModernBERT's layer 0 has no
attention pre-norm, so its loop starts at layer 1 or later (``backbones/modernbert.py``). Input injection and a
loop embedding may be added; they start as the identity, so S = 1 stays exact. The run folder holds one
checkpoint (step 0, weights only), the source's tokenizer and a config whose ``diffusion`` section is the
training distribution of S; fine-tune it with ``loopmdm train --init OUT``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Callable, Optional

import torch

from ..backbones import build_model
from ..checkpoint import save_checkpoint
from ..config import RunConfig
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_text
from ..outputs import check_new_folder
from .ranges import parse_loop_layers
from .sources import Source, open_source

TOLERANCE = 1e-4  # largest relative logit difference at S = 1 that loopify accepts (measured: 0.0 in the tests)
DEFAULT_S_MAX = 4
DEFAULT_SEQ_LEN = 1024  # training window of a transformers source unless --seq-len says otherwise
PROBE_TOKENS = 16  # shortest probe of the S = 1 check ...
PROBE_MARGIN = 16  # ... which runs past the source's local attention window by this many tokens, when it has one
# train.lr written for a transformers source (pretrained models: a fine-tuning rate)
FINETUNE_LR = 1e-4
# keys a loopified model may add (identity-initialised)
LOOP_OPTIONS = ("injection.", "loop_embed.")


def loopify(
    source: str,
    loop_layers: str | tuple[int, int],
    out: str | Path,
    s_max: Optional[int] = None,
    *,
    family: Optional[str] = None,
    tokenizer: Optional[str] = None,
    seq_len: Optional[int] = None,
    input_injection: bool = False,
    loop_embedding: bool = False,
    curriculum_steps: int = 0,
    ema: Optional[bool] = None,
    verify: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Loopify ``source`` (a library run / checkpoint folder, a transformers folder or a Hub id) with layers
    ``loop_layers`` = A:B as the mid block, into the new run folder ``out``. ``s_max``: training S ~ U{1..S_max}
    (default: a library LoopMDM's own, else 4); ``curriculum_steps``: ramp S_max up over that many steps of the
    fine-tuning (``diffusion.loop_curriculum_steps``); ``seq_len``: training window of a transformers source
    (default min(its positions, 1024)); ``family`` / ``tokenizer``: force the adapter / the tokenizer; ``ema``: a
    library run's weights (None = EMA when present). Returns the summary written to ``out/loopify.json``."""
    # a new or empty folder only (loopmdm.outputs), checked before any work
    out = check_new_folder(out)
    a, b = parse_loop_layers(loop_layers) if isinstance(loop_layers, str) else tuple(loop_layers)
    if s_max is not None and s_max < 1:
        raise ConfigError(f"--s-max {s_max} must be >= 1 (S ~ U{{1..S_max}})")
    if curriculum_steps < 0:
        raise ConfigError(f"--curriculum-steps {curriculum_steps} must be >= 0")
    src = open_source(source, (a, b), family=family, tokenizer=tokenizer, ema=ema, log=log)
    options = dict(input_injection=input_injection, loop_embedding=loop_embedding)
    cfg, model = (_from_library if src.kind == "library" else _from_transformers)(
        src, a, b, seq_len, options
    )
    d = cfg.diffusion
    if s_max is not None or d.loop_dist == "fixed":
        d.loop_dist, d.s_max = "uniform", s_max or DEFAULT_S_MAX
    d.loop_curriculum_steps = curriculum_steps
    cfg.train.init = None
    cfg.validate()
    model.eval()
    diff = check_exact(src, model) if verify else None
    summary = {
        "source": source,
        "kind": src.kind,
        "family": src.family.name,
        "loop_layers": [a, b],
        "n_h": cfg.model.n_h,
        "n_m": cfg.model.n_m,
        "n_o": cfg.model.n_o,
        "s_max": d.s_max,
        "loop_curriculum_steps": curriculum_steps,
        "s1_max_rel_diff": diff,
        "s1_probe_tokens": probe_length(src, model) if verify else None,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "tokenizer": cfg.data.tokenizer,
        "mask_token_id": src.tokenizer.mask_id,
    }
    save_checkpoint(
        out,
        0,
        model,
        cfg,
        src.tokenizer,
        {"step": 0, "loopified_from": source, "loop_layers": [a, b]},
        keep_last=1,
    )
    cfg.save(out / "config.json")
    atomic_write_text(out / "loopify.json", json.dumps(summary, indent=2))
    log(
        f"loopified {source} ({src.family.name}, {src.n_layers} layers): head {a}, mid block layers {a}..{b - 1} "
        f"(S ~ U{{1..{d.s_max}}}), tail {src.n_layers - b}"
        + (
            f"; S = 1 logits match the source (max relative difference {diff:.1e})"
            if diff is not None
            else ""
        )
    )
    return summary


def _from_library(src: Source, a: int, b: int, seq_len: Optional[int], options: dict):
    """A library run: same run config, new split; the weights renamed into it."""
    if seq_len is not None:
        raise ConfigError(
            "--seq-len applies to transformers sources; a library run keeps model.max_seq_len"
        )
    cfg = copy.deepcopy(src.cfg)
    old = cfg.model
    cfg.model = dataclasses.replace(
        old, n_h=a, n_m=b - a, n_o=old.n_layers - b, **options
    ).validate()
    model = build_model(cfg.model)
    state = src.family.resplit(src.model.state_dict(), old, cfg.model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(LOOP_OPTIONS)] + list(unexpected)
    if bad:
        raise CheckpointError(
            f"the weights of {src.spec!r} do not map onto the new split ({bad[0]})"
        )
    return cfg, model


def _from_transformers(src: Source, a: int, b: int, seq_len: Optional[int], options: dict):
    """A transformers model: a run config describing it, and its own modules wrapped (no copy)."""
    fam = src.family
    window = fam.usable_positions(src.model.config)
    cfg = RunConfig()
    cfg.model = fam.model_config(
        src.model.config,
        fam.stored_config(src.model.config, src.raw_config),
        a,
        b - a,
        seq_len or min(window, DEFAULT_SEQ_LEN),
        **options,
    )
    cfg.data.tokenizer = src.tokenizer_spec
    cfg.train.lr = FINETUNE_LR
    return cfg, fam.wrap(cfg.model, src.model)


@torch.no_grad()
def check_exact(src: Source, model: torch.nn.Module, tolerance: float = TOLERANCE) -> float:
    """max |loopified - source| / max |source| of the logits at S = 1 on a probe (a third of the tokens masked);
    ``CheckpointError`` above ``tolerance``. The probe has ``probe_length`` tokens: longer than a local attention
    window of the source (ModernBERT's sliding-window layers), so those layers really slide and a mistake in
    their masks or rotary tables shows."""
    T = probe_length(src, model)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, src.tokenizer.vocab_size, (2, T), generator=g)
    x[:, ::3] = src.tokenizer.mask_id
    t = torch.full((2,), 0.5)
    src.model.eval()
    if src.kind == "library":
        ref = src.model(x, t, loops=1)
    else:
        ref = src.family.reference_logits(src.model, x)
    got = model(x, t, loops=1)
    diff = float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30))
    if not diff <= tolerance:
        raise CheckpointError(
            f"at S = 1 the loopified model's logits differ from the source's by {diff:.2e} "
            f"(relative; tolerance {tolerance:.0e}): this {src.family.name} variant is not "
            "reproduced exactly; nothing was written"
        )
    return diff


def probe_length(src: Source, model: torch.nn.Module) -> int:
    """Tokens in ``check_exact``'s probe: 16, or the source's whole local attention window + 16 when it has one
    (ModernBERT: 128 + 16 = 144), capped by ``model.max_seq_len``, the longest input the loopified model takes
    (by default min(the source's positions, 1024); a shorter --seq-len never runs longer inputs)."""
    window = src.family.local_window(src.model.config) if src.kind == "transformers" else 0
    return min(max(PROBE_TOKENS, window + PROBE_MARGIN if window else 0), model.config.max_seq_len)
