"""Hugging Face transformers format: ``LoopMDMConfig`` / ``LoopMDMForMaskedLM`` and conversion both ways.

An exported folder is a standard transformers checkpoint that loads with only torch + transformers::

    HF_DIR/config.json               LoopMDMConfig (+ auto_map, the training RunConfig, the training step)
    HF_DIR/model.safetensors         weights ("model." + the library's parameter names)
    HF_DIR/tokenizer.json, tokenizer_config.json, special_tokens_map.json
    HF_DIR/configuration_loopmdm.py, modeling_loopmdm.py, config.py, layers.py, looped.py, loss.py,
            subs.py, fields.py, errors.py   copied verbatim from loopmdm/model/ (torch-only; they import each other)
    HF_DIR/README.md                 model card (usage, loop knob), ready for ``push_to_hub``

``AutoModelForMaskedLM.from_pretrained(HF_DIR, trust_remote_code=True)`` (or ``AutoModel``) gives the same
logits as ``loopmdm.checkpoint.load_model`` on the source checkpoint (the remote code is the library's own
backbone, copied). ``import_hf`` turns such a folder back
into a library run folder (``loopmdm sample / eval --checkpoint`` then work on it).

A loopified transformers model (``loopmdm loopify``; ``model.backbone`` bert / roberta / modernbert) is exported in
its source family's own format instead: ``save_pretrained`` of the source model (``BertForMaskedLM`` ...), so
plain transformers loads it without remote code and runs its layers once (S = 1); config.json also keeps the
run config (``loopmdm_run_config``, with the loop range) and ``loopmdm_loops.safetensors`` any loop options
(input injection, loop embedding), so ``import_hf`` restores the looped run exactly. Families whose format
needs remote code loopmdm does not ship (Dream) are refused with a one-line error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from .. import __version__
from ..backbones import build_model, get_backbone
from ..backbones.transformers_family import no_progress_bars
from ..checkpoint import load_model, load_safetensors, resolve_checkpoint, save_checkpoint
from ..config import ModelConfig, RunConfig
from ..data import TextTokenizer
from ..errors import CheckpointError, ConfigError, LoopMDMError, install_hint
from ..outputs import check_new_folder

try:  # the transformers classes need the [hf] extra
    from ..model.configuration_loopmdm import MODEL_DEFAULTS, LoopMDMConfig
    from ..model.modeling_loopmdm import LoopMDMForMaskedLM, LoopMDMPreTrainedModel
except ImportError as _e:  # pragma: no cover - exercised only without transformers
    _IMPORT_ERROR: Optional[ImportError] = _e
else:
    _IMPORT_ERROR = None

MODEL_DIR = Path(__file__).parent.parent / "model"
# The remote code: the two transformers files and the backbone files they import, all from loopmdm/model/.
REMOTE_FILES = (
    "configuration_loopmdm.py",
    "modeling_loopmdm.py",
    "config.py",
    "layers.py",
    "looped.py",
    "loss.py",
    "subs.py",
    "fields.py",
    "errors.py",
)
AUTO_MAP = {
    "AutoConfig": "configuration_loopmdm.LoopMDMConfig",
    "AutoModel": "modeling_loopmdm.LoopMDMForMaskedLM",
    "AutoModelForMaskedLM": "modeling_loopmdm.LoopMDMForMaskedLM",
}
WEIGHT_PREFIX = "model."

__all__ = [
    "LoopMDMConfig",
    "LoopMDMForMaskedLM",
    "LoopMDMPreTrainedModel",
    "to_hf_config",
    "to_hf_model",
    "export_hf",
    "import_hf",
    "write_remote_code",
    "REMOTE_FILES",
    "MODEL_DEFAULTS",
]


def _require_transformers() -> None:
    if _IMPORT_ERROR is not None:
        raise ConfigError(
            f"the Hugging Face format needs transformers ({_IMPORT_ERROR}); "
            "install it with: " + install_hint("hf")
        )


# --------------------------------------------------------------------------- library -> transformers


def to_hf_config(
    cfg: RunConfig, tokenizer: TextTokenizer, step: Optional[int] = None
) -> "LoopMDMConfig":
    """A ``LoopMDMConfig`` for a library ``RunConfig``: same model fields, S defaults to the training S_max."""
    _require_transformers()
    return LoopMDMConfig(
        **{name: getattr(cfg.model, name) for name in MODEL_DEFAULTS},
        default_loops=int(cfg.diffusion.max_loops),
        mask_token_id=tokenizer.mask_id,
        pad_token_id=tokenizer.pad_id,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        noise_schedule=cfg.diffusion.schedule,
        t_eps=cfg.diffusion.t_eps,
        loopmdm_run_config=cfg.to_dict(),
        loopmdm_step=step,
        loopmdm_version=__version__,
        auto_map=dict(AUTO_MAP),
        architectures=["LoopMDMForMaskedLM"],
    )


def to_hf_model(
    model: torch.nn.Module, cfg: RunConfig, tokenizer: TextTokenizer, step: Optional[int] = None
) -> "LoopMDMForMaskedLM":
    """Wrap a trained ``loopmdm.model.LoopMDM`` as a ``LoopMDMForMaskedLM`` holding the same weights."""
    hf = LoopMDMForMaskedLM(to_hf_config(cfg, tokenizer, step))
    hf.model.load_state_dict(model.state_dict())
    return hf.eval()


def export_hf(checkpoint: str | Path, out: str | Path, ema: bool = False) -> Path:
    """Write a library checkpoint (run or checkpoint folder) as a transformers folder at ``out``."""
    _require_transformers()
    # a new or empty folder only (loopmdm.outputs), checked before any work
    out = check_new_folder(out)
    model, tokenizer, cfg = load_model(checkpoint, ema=ema)
    step = _checkpoint_step(checkpoint)
    if cfg.model.wrapped:
        return export_source_format(model, cfg, tokenizer, out, step)
    hf = to_hf_model(model, cfg, tokenizer, step)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out, safe_serialization=True)
    write_remote_code(out)
    write_tokenizer(out, tokenizer, cfg.model.max_seq_len)
    (out / "README.md").write_text(_model_card(cfg, hf.config))
    return out


LOOP_WEIGHTS = "loopmdm_loops.safetensors"  # loop options of a loopified model (not part of its source's format)


def export_source_format(
    model, cfg: RunConfig, tokenizer: TextTokenizer, out: Path, step: Optional[int] = None
) -> Path:
    """A loopified transformers model as its source family's own folder (see the module docstring)."""
    family = get_backbone(cfg.model.backbone)
    if not family.exportable:
        raise ConfigError(
            f"loopmdm export cannot write a loopified {family.name} model: its format needs "
            f"{family.name}'s remote code, which loopmdm does not ship; use the run folder with loopmdm "
            "sample / eval / serve"
        )
    from safetensors.torch import save_file

    m = cfg.model
    src = model.source
    src.config.loopmdm_run_config = cfg.to_dict()
    src.config.loopmdm_loop_layers = [m.n_h, m.n_h + m.n_m]
    src.config.loopmdm_default_loops = int(cfg.diffusion.max_loops)
    src.config.loopmdm_step, src.config.loopmdm_version = step, __version__
    out.mkdir(parents=True, exist_ok=True)
    with no_progress_bars():
        src.save_pretrained(out, safe_serialization=True)
    loops = {
        k: v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if not k.startswith("source.")
    }
    if loops:
        save_file(loops, str(out / LOOP_WEIGHTS))
    write_tokenizer(out, tokenizer, m.max_seq_len)
    (out / "README.md").write_text(_source_card(cfg, family.name, src))
    return out


def _source_card(cfg: RunConfig, family: str, src) -> str:
    m = cfg.model
    return f"""---
library_name: transformers
pipeline_tag: fill-mask
tags: [loopmdm, masked-diffusion, looped-transformer, {family}]
---
# Loopified {type(src).__name__}

A {family} masked LM loopified and fine-tuned by loopmdm {__version__}: layers {m.n_h}..{m.n_h + m.n_m - 1} of
{m.n_layers} form a mid block trained to run S times (S up to {cfg.diffusion.max_loops}). The weights are in the
family's own format: `AutoModelForMaskedLM.from_pretrained(PATH)` runs every layer once (S = 1). For the loops:

```bash
loopmdm import --hf PATH --out RUN_DIR && loopmdm sample --checkpoint RUN_DIR --loops {cfg.diffusion.max_loops}
```
"""


def write_remote_code(folder: Path) -> None:
    """Copy the remote code (``REMOTE_FILES`` of loopmdm/model/, verbatim) next to the weights."""
    for name in REMOTE_FILES:
        shutil.copyfile(MODEL_DIR / name, folder / name)


def write_tokenizer(folder: Path, tokenizer: TextTokenizer, max_len: int) -> None:
    """``tokenizer.json`` plus the two small JSON files ``AutoTokenizer`` reads for special tokens."""
    tokenizer.save(folder / "tokenizer.json")
    specials = {
        f"{role}_token": tokenizer.tok.id_to_token(i)
        for role, i in (
            ("mask", tokenizer.mask_id),
            ("pad", tokenizer.pad_id),
            ("bos", tokenizer.bos_id),
            ("eos", tokenizer.eos_id),
        )
        if i is not None
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        **specials,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _checkpoint_step(checkpoint: str | Path) -> Optional[int]:
    state = resolve_checkpoint(checkpoint) / "trainer_state.json"
    try:
        return int(json.loads(state.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _model_card(cfg: RunConfig, hf_config) -> str:
    m = cfg.model
    return f"""---
library_name: transformers
pipeline_tag: fill-mask
tags: [loopmdm, masked-diffusion, looped-transformer]
---
# LoopMDM checkpoint

A looped masked diffusion language model exported by `loopmdm export` (loopmdm {__version__}).
Layers: head n_h={m.n_h} -> mid block n_m={m.n_m} (shared weights, run S times) -> tail n_o={m.n_o};
d_model={m.d_model}, heads={m.n_heads}, vocabulary {m.vocab_size}, context {m.max_seq_len}.
Trained with S up to {hf_config.default_loops} (the default S at inference).

```python
from transformers import AutoModelForMaskedLM, AutoTokenizer
PATH = "path/to/this/folder"  # or its Hub id; trust_remote_code=True runs the modeling code shipped here
model = AutoModelForMaskedLM.from_pretrained(PATH, trust_remote_code=True)
tok = AutoTokenizer.from_pretrained(PATH, trust_remote_code=True)
logits = model(**tok(["some text"], return_tensors="pt"), loops={hf_config.default_loops}).logits
```

`loops` sets the number S of mid-block iterations (more loops: better predictions, more compute);
`timesteps` sets the diffusion time t (default: the masked fraction). The remote code needs only torch and
transformers. Convert back with `loopmdm import --hf PATH --out RUN_DIR`.
"""


# --------------------------------------------------------------------------- transformers -> library


def import_hf(hf_dir: str | Path, out: str | Path) -> Path:
    """Turn an exported transformers folder back into a library run folder at ``out`` (a checkpoint under
    ``out/checkpoints``). Needs no transformers: reads config.json, the safetensors weights and tokenizer.json.
    ``out`` must be new or empty (``loopmdm.outputs``): an import never writes into, prunes or repoints an
    existing run or data folder."""
    hf_dir = Path(hf_dir).expanduser()
    out = check_new_folder(out)  # before any work
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{str(hf_dir)!r} has no config.json; pass a folder written by `loopmdm export` "
            "or save_pretrained"
        )
    try:
        hf_cfg = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{config_path} is not valid JSON") from None
    if not isinstance(hf_cfg, dict):
        raise CheckpointError(
            f"{config_path} is not a JSON object; pass a folder written by `loopmdm export`"
        )
    if not isinstance(hf_cfg.get("model_type"), str):
        raise CheckpointError(
            f"{config_path} has no model_type; `loopmdm export` writes 'loopmdm' (or, for a loopified "
            "model, its source's type such as 'bert'): restore the key"
        )
    looped = hf_cfg.get("model_type") != "loopmdm" and isinstance(
        hf_cfg.get("loopmdm_run_config"), dict
    )
    if hf_cfg.get("model_type") != "loopmdm" and not looped:
        raise CheckpointError(
            f"{config_path} describes a {hf_cfg.get('model_type')!r} model, not 'loopmdm'; "
            "only LoopMDM folders (and loopified models `loopmdm export` wrote) can be imported; "
            "turn a transformers model into a run with `loopmdm loopify --from DIR`"
        )
    cfg = _run_config_from_hf(hf_cfg)
    step = _imported_step(hf_cfg, config_path)
    tokenizer = TextTokenizer.load(hf_dir / "tokenizer.json")
    model = build_model(cfg.model)
    state = _read_hf_weights(hf_dir, strip=not looped)
    # the source's own names, under the wrapper's "source." prefix, plus the loop options
    if looped:
        state = {"source." + k: v for k, v in state.items()}
        if (hf_dir / LOOP_WEIGHTS).is_file():
            state.update(load_safetensors(hf_dir / LOOP_WEIGHTS))
    if cfg.model.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("embed.weight"))
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(
            f"{hf_dir} weights do not match its config.json ({str(e).splitlines()[0][:120]})"
        ) from None
    save_checkpoint(out, step, model, cfg, tokenizer, {"step": step, "imported_from": str(hf_dir)})
    cfg.save(out / "config.json")
    return out


def _imported_step(hf_cfg: dict, config_path: Path) -> int:
    """The training step an export recorded (``loopmdm_step``; 0 when absent): a whole number >= 0."""
    step = hf_cfg.get("loopmdm_step") or 0
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(
            f"{config_path} has loopmdm_step={step!r}, not a training step (an integer >= 0); fix or "
            "remove that key (it only names the imported checkpoint's step)"
        )
    return step


def _run_config_from_hf(hf_cfg: dict) -> RunConfig:
    """The RunConfig stored at export, or (for folders saved by other tools) one built from the model fields."""
    try:
        if hf_cfg.get("loopmdm_run_config"):
            cfg = RunConfig.from_dict(hf_cfg["loopmdm_run_config"])
        else:
            cfg = RunConfig()
            cfg.model = ModelConfig(**{k: hf_cfg[k] for k in MODEL_DEFAULTS if k in hf_cfg})
            cfg.diffusion.schedule = hf_cfg.get("noise_schedule", cfg.diffusion.schedule)
            cfg.diffusion.t_eps = hf_cfg.get("t_eps", cfg.diffusion.t_eps)
            cfg.diffusion.s_max = max(int(hf_cfg.get("default_loops", 1)), 1)
        return cfg.validate()
    except (LoopMDMError, TypeError, ValueError) as e:
        raise CheckpointError(f"config.json does not describe a valid LoopMDM ({e})") from None


def _read_hf_weights(hf_dir: Path, strip: bool = True) -> dict[str, torch.Tensor]:
    """Weights from model.safetensors or a sharded model.safetensors.index.json, without the "model." prefix of
    a LoopMDM export when ``strip`` (a source-format export keeps its own names)."""
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            UnicodeDecodeError,
            RecursionError,
        ):
            raise CheckpointError(
                f"{index} is not a valid shard index (no 'weight_map' of file names)"
            ) from None
        if any(not isinstance(s, str) or "/" in s or "\\" in s for s in shards):
            raise CheckpointError(f"{index} names a shard outside its folder; use files beside it")
        files = [hf_dir / s for s in shards]
    elif (hf_dir / "model.safetensors").is_file():
        files = [hf_dir / "model.safetensors"]
    else:
        raise CheckpointError(
            f"{str(hf_dir)!r} holds no model.safetensors; export with safetensors "
            "(pytorch_model.bin pickles are refused)"
        )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_safetensors(f))
    if not strip:
        return state
    return {
        k[len(WEIGHT_PREFIX) :] if k.startswith(WEIGHT_PREFIX) else k: v for k, v in state.items()
    }
