"""What ``loopmdm loopify --from`` can read: a library run / checkpoint folder, a local transformers folder, or a
Hugging Face Hub id (downloaded with ``huggingface_hub``: config, safetensors weights and tokenizer files only;
no remote code is run). Each becomes a ``Source``: the loaded model, its family, its tokenizer (mask token
checked) and, for library runs, its run config."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch.nn as nn

from ..backbones import Backbone, TransformersFamily, family_for, get_backbone, known_architectures
from ..checkpoint import load_config_file, load_model, resolve_checkpoint
from ..config import RunConfig
from ..data import TextTokenizer
from ..data.hub import has_mask_token, hub_offline, load_hf_tokenizer, require_hub
from ..data.tokenizer import ALIASES
from ..errors import CheckpointError, ConfigError, DataError, install_hint
from .ranges import check_loop_range

# config, weights, tokenizer: never code or pickles
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5")


@dataclass
class Source:
    """A model to loopify. ``kind``: "library" (a run of this package: ``model`` is built from ``cfg``) or
    "transformers" (``model`` is the transformers model itself, ``raw_config`` its config.json)."""

    kind: str
    spec: str  # what --from named
    family: Backbone
    model: nn.Module
    tokenizer: TextTokenizer
    n_layers: int
    cfg: Optional[RunConfig] = None
    raw_config: Optional[dict] = None
    # data.tokenizer of the loopified run (transformers sources)
    tokenizer_spec: Optional[str] = None
    folder: Optional[Path] = None


def open_source(
    spec: str,
    loop_layers: tuple[int, int],
    family: Optional[str] = None,
    tokenizer: Optional[str] = None,
    ema: Optional[bool] = None,
    log=print,
) -> Source:
    """Load what ``spec`` names (see the module docstring), once ``loop_layers`` (A, B) is known to fit its layer
    count (checked from its config, before any weights are read). ``family`` forces the adapter (``--family``);
    ``tokenizer`` replaces the source's tokenizer (``--tokenizer``); ``ema`` picks a library run's weights
    (None: EMA when present)."""
    path = Path(spec).expanduser()
    if path.exists():
        if _is_library(path):
            if family is not None or tokenizer is not None:
                raise ConfigError(
                    "--family / --tokenizer apply to transformers sources; a library run keeps its own"
                )
            return _library_source(spec, path, loop_layers, ema)
        return _transformers_source(spec, path, loop_layers, family, tokenizer, hub_id=None)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or not spec.strip():
        raise DataError(
            f"--from {spec!r} does not exist; pass a run / checkpoint folder, a transformers folder or "
            "a Hugging Face Hub id (e.g. bert-base-uncased)"
        )
    return _transformers_source(
        spec, _download(spec, log), loop_layers, family, tokenizer, hub_id=spec
    )


# --------------------------------------------------------------------------- library runs


def _is_library(path: Path) -> bool:
    """A run folder (``checkpoints/``) or a checkpoint folder whose config.json is a run config."""
    if path.is_dir() and (path / "checkpoints").is_dir():
        return True
    config = (path if path.is_dir() else path.parent) / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return (
        isinstance(data, dict) and isinstance(data.get("model"), dict) and "model_type" not in data
    )


def _library_source(
    spec: str, path: Path, loop_layers: tuple[int, int], ema: Optional[bool]
) -> Source:
    check_loop_range(*loop_layers, load_config_file(resolve_checkpoint(path)).model.n_layers)
    model, tok, cfg = load_model(path, ema=ema)
    m = cfg.model
    if cfg.diffusion.objective != "mdm" or m.causal:
        raise ConfigError(
            f"--from {spec!r} is an autoregressive model (diffusion.objective="
            f"{cfg.diffusion.objective!r}); loopify reads masked diffusion models"
        )
    if m.input_injection or m.loop_embedding:
        raise ConfigError(
            f"--from {spec!r} was trained with input injection / a loop embedding around its mid block "
            f"(layers {m.n_h}..{m.n_h + m.n_m - 1}); moving the loop would break it: loopify a plain MDM"
        )
    return Source(
        "library",
        spec,
        get_backbone(m.backbone),
        model,
        tok,
        m.n_layers,
        cfg=cfg,
        folder=resolve_checkpoint(path),
    )


# --------------------------------------------------------------------------- transformers folders / Hub ids


def _download(hub_id: str, log) -> Path:
    """A local snapshot of a Hub repository's config, safetensors and tokenizer files (the cache when offline)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise ConfigError(
            "loading a Hub model needs huggingface_hub: " + install_hint("hf")
        ) from None
    offline = hub_offline()
    if offline:
        try:
            return Path(snapshot_download(hub_id, allow_patterns=HUB_FILES, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            raise DataError(
                f"model {hub_id!r} is not a local folder and not in the Hugging Face cache, and "
                "HF_HUB_OFFLINE=1 forbids downloading it; unset HF_HUB_OFFLINE on a machine with a network "
                "(or pass a local folder)"
            ) from None
    require_hub(f"model {hub_id!r}")
    log(f"downloading {hub_id} (config, safetensors weights, tokenizer) from the Hugging Face Hub")
    try:
        return Path(snapshot_download(hub_id, allow_patterns=HUB_FILES))
    except RepositoryNotFoundError:
        raise DataError(
            f"model {hub_id!r} is not a Hub repository (or it is gated / private: log in with "
            "`huggingface-cli login`); check the name"
        ) from None
    except (OSError, ValueError) as e:
        raise DataError(
            f"could not download {hub_id!r} from the Hugging Face Hub ({str(e).splitlines()[0][:100]}); "
            "check the network, or pass a local folder"
        ) from None


def _transformers_source(
    spec: str,
    folder: Path,
    loop_layers: tuple[int, int],
    family: Optional[str],
    tokenizer: Optional[str],
    hub_id: Optional[str],
) -> Source:
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise CheckpointError(
            f"--from {spec!r} has no config.json; pass a library run / checkpoint folder, a "
            "transformers folder (config.json + safetensors) or a Hub id"
        )
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{folder / 'config.json'} is not valid JSON") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{folder / 'config.json'} is not a JSON object")
    fam = get_backbone(family) if family is not None else family_for(raw.get("model_type"))
    if not isinstance(fam, TransformersFamily):
        raise ConfigError(
            f"--family {family!r} is not a transformers family; use one of: {known_architectures()}"
        )
    if isinstance(raw.get("num_hidden_layers"), int):
        check_loop_range(*loop_layers, raw["num_hidden_layers"])
    # e.g. ModernBERT's layer 0 (no attention pre-norm) may not be looped
    fam.check_loop_layers(*loop_layers)
    _check_weights(spec, folder)
    model = fam.load_source(folder, raw)
    check_loop_range(*loop_layers, len(fam.layers(model)))
    tok_spec = tokenizer or hub_id or str(folder.resolve())
    tok = source_tokenizer(
        tok_spec, raw, folder if tokenizer is None else None, int(model.config.vocab_size)
    )
    return Source(
        "transformers",
        spec,
        fam,
        model,
        tok,
        len(fam.layers(model)),
        raw_config=raw,
        tokenizer_spec=tok_spec,
        folder=folder,
    )


def _check_weights(spec: str, folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickled = [n for n in PICKLED if (folder / n).exists()]
    if pickled:
        raise CheckpointError(
            f"--from {spec!r} holds only pickled weights ({pickled[0]}); loopify reads safetensors "
            "because unpickling can run code: convert it once where you trust it with "
            "model.save_pretrained(DIR, safe_serialization=True)"
        )
    raise CheckpointError(f"--from {spec!r} holds no *.safetensors weights")


def source_tokenizer(
    spec: str, raw_config: dict, folder: Optional[Path], model_vocab: int
) -> TextTokenizer:
    """The source's tokenizer, which must have the mask token the model was trained with and fit its vocabulary.
    Without a mask token the one-line error says how to add one to both the tokenizer and the model."""
    try:
        tok = load_hf_tokenizer(spec)
    except DataError as e:
        raise DataError(f"{e}; pass the tokenizer with --tokenizer PATH_OR_HUB_ID") from None
    if not has_mask_token(tok):
        raise DataError(
            f"the tokenizer of {spec!r} has no mask token (looked for {', '.join(ALIASES['mask'])}); masked diffusion "
            "needs one. Add it to the tokenizer and the model and save both: tok.add_special_tokens({'mask_token': "
            "'[MASK]'}); model.resize_token_embeddings(len(tok)); tok.save_pretrained(DIR); "
            "model.save_pretrained(DIR); then loopify --from DIR"
        )
    text = TextTokenizer(tok)
    expected = _declared_mask_id(raw_config, folder, tok)
    if expected is not None and expected != text.mask_id:
        raise DataError(
            f"the tokenizer's mask token {tok.id_to_token(text.mask_id)!r} (id {text.mask_id}) is not the "
            f"model's (id {expected}, from its config); pass the model's own tokenizer with --tokenizer"
        )
    if text.vocab_size > model_vocab:
        raise DataError(
            f"the tokenizer of {spec!r} has {text.vocab_size} tokens but the model only {model_vocab}; "
            "pass the model's own tokenizer with --tokenizer"
        )
    return text


def _declared_mask_id(raw_config: dict, folder: Optional[Path], tok) -> Optional[int]:
    """The mask id the source declares: config.json ``mask_token_id``, else tokenizer_config.json ``mask_token``."""
    if isinstance(raw_config.get("mask_token_id"), int):
        return raw_config["mask_token_id"]
    if folder is None or not (folder / "tokenizer_config.json").is_file():
        return None
    try:
        mask = json.loads((folder / "tokenizer_config.json").read_text()).get("mask_token")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    if isinstance(mask, dict):
        mask = mask.get("content")
    return tok.token_to_id(mask) if isinstance(mask, str) else None
