"""``TransformersFamily``: what a loopify adapter of one transformers family says, and what all of them share.

An adapter is one small class (``bert.py``, ``modernbert.py``, ``dream.py``) that names the family's config and
model classes and answers six questions about a model of that family: where its layer list is (``layers``), how
tokens become the first hidden state (``embed``), which position tables (``positions``, the same for every row)
and attention masks (``masks``, rebuilt per call from the [B, T] padding mask) its layers take, how one layer is
called (``run_layer``), and how the last hidden state becomes logits (``features`` then ``decoder``: weight and
bias). Everything else (building the model from its config, loading a folder with ``from_pretrained``, the
``ModelConfig`` that describes the source for FLOP accounting) is shared here. transformers is imported only
inside these methods: it is an optional extra.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn

from ..errors import CheckpointError, ConfigError, install_hint
from ..model import ModelConfig
from .base import Backbone


def import_transformers():
    """transformers, or a one-line ``ConfigError`` saying how to install a version the adapters support."""
    try:
        import transformers
        from transformers import masking_utils
    except ImportError as e:
        raise ConfigError(
            f"loopified transformers models need transformers >= 5 ({e}); install it with: "
            + install_hint("hf")
        ) from None
    if not hasattr(masking_utils, "create_bidirectional_mask"):
        raise ConfigError(
            f"loopify needs transformers >= 5 (found {transformers.__version__}): the adapters call "
            "the layers as transformers 5 defines them; pip install -U transformers"
        )
    return transformers


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' weight loading / writing progress bars off for a block (stderr stays one line per message)."""
    logging = import_transformers().utils.logging
    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def first(out: Any) -> torch.Tensor:
    """A layer's hidden state, whether it returns it alone or as the first item of a tuple."""
    return out[0] if isinstance(out, (tuple, list)) else out


class TransformersFamily(Backbone):
    """A transformers family whose trained models loopify wraps (see the module docstring)."""

    config_class = ""  # e.g. "BertConfig"
    model_class = ""  # e.g. "BertForMaskedLM"
    shift = False  # True: the logits of position i are read from position i - 1 (Dream)
    # True: the MLP has three d x I matrices (GeGLU / SwiGLU), for the FLOP description
    gated_mlp = False

    # ------------------------------------------------------------------ the questions an adapter answers
    def layers(self, model: nn.Module) -> nn.ModuleList:
        raise NotImplementedError

    def embed(self, model: nn.Module, x_t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def positions(self, model: nn.Module, h: torch.Tensor) -> Any:
        """Position tables every layer call takes (row-independent), or None."""
        return None

    def masks(self, model: nn.Module, h: torch.Tensor, pad: Optional[torch.Tensor]) -> Any:
        """Attention masks in the form the layers take, for h [B, T, D] and padding mask pad [B, T] (or None)."""
        from transformers.masking_utils import create_bidirectional_mask

        return create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=pad)

    def run_layer(
        self, model: nn.Module, layer: nn.Module, h: torch.Tensor, positions: Any, masks: Any
    ) -> torch.Tensor:
        raise NotImplementedError

    def features(self, model: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Per-position features before the decoder (final norm, prediction-head transform)."""
        raise NotImplementedError

    def decoder(self, model: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The output projection: weight [V, D] and bias [V] (or None)."""
        raise NotImplementedError

    def usable_positions(self, hf_config) -> int:
        """The longest sequence the source's position encoding covers."""
        return int(hf_config.max_position_embeddings)

    def check_loop_layers(self, a: int, b: int) -> None:
        """Refuse a mid block [A, B) that the family cannot loop correctly (one-line ``ConfigError``), checked by
        loopify before any weights are read; e.g. ModernBERT's layer 0, which has no attention pre-norm."""

    def local_window(self, hf_config) -> int:
        """The widest local (sliding-window) attention span of the source's layers, 0 when all attend globally;
        loopify's S = 1 probe is longer than it, so a mistake in the local attention is caught."""
        return 0

    def check_source(self, hf_config) -> None:
        """Refuse variants of the family the adapter does not reproduce exactly (one-line ``ConfigError``)."""

    def reference_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The source's own logits for tokens x [B, T], through its ``forward`` (loopify's S = 1 check)."""
        return model(input_ids=x).logits

    # ------------------------------------------------------------------ shared
    def hf_config(self, source_config: dict):
        """The transformers config object of a stored ``source_config`` mapping."""
        tf = import_transformers()
        try:
            return getattr(tf, self.config_class)(**self._config_kwargs(source_config))
        except (TypeError, ValueError, KeyError) as e:
            raise ConfigError(
                f"model.source_config does not make a {self.config_class} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"
            ) from None

    def _config_kwargs(self, source_config: dict) -> dict:
        return dict(source_config)

    def stored_config(self, hf_config, raw: Optional[dict] = None) -> dict:
        """The mapping kept in ``model.source_config`` for a source with config ``hf_config`` (read from ``raw``,
        its config.json, when loaded from a folder): the full config, JSON-able."""
        return json.loads(hf_config.to_json_string(use_diff=False))

    def prepare(self, model: nn.Module) -> nn.Module:
        """Adjust a freshly built or loaded source model (e.g. bidirectional attention); returns it."""
        return model

    def build_source(self, source_config: dict) -> nn.Module:
        """A randomly initialised source model (its weights are then loaded from a checkpoint)."""
        tf = import_transformers()
        return self.prepare(getattr(tf, self.model_class)(self.hf_config(source_config)))

    def load_source(self, folder: str | Path, raw_config: dict) -> nn.Module:
        """The trained source model in a local folder (config.json + safetensors), fp32, through transformers'
        own ``from_pretrained`` (pickled ``.bin`` weights are refused)."""
        tf = import_transformers()
        cls = getattr(tf, self.model_class)
        try:
            with no_progress_bars():
                model = cls.from_pretrained(
                    str(folder),
                    config=self.hf_config(raw_config),
                    use_safetensors=True,
                    dtype=torch.float32,
                )
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise CheckpointError(
                f"{self.model_class}.from_pretrained({str(folder)!r}) failed "
                f"({type(e).__name__}: {str(e).splitlines()[0][:140] if str(e) else ''}); the folder "
                "needs config.json and safetensors weights (pickled .bin files are refused)"
            ) from None
        return self.prepare(model.float())

    def describe(self, hf_config, seq_len: Optional[int]) -> dict:
        """``ModelConfig`` fields that describe the source for FLOP accounting: width, heads, layers, vocabulary,
        window and an MLP ratio with the same multiply count (gated MLPs have three d x I matrices, counted as
        1.5 I / d). Grouped-query attention, local attention windows and prediction-head transforms are not
        modelled (see docs/ecosystem.md)."""
        c = hf_config
        window = self.usable_positions(c)
        ratio = (1.5 if self.gated_mlp else 1.0) * c.intermediate_size / c.hidden_size
        return dict(
            vocab_size=int(c.vocab_size),
            max_seq_len=min(window, seq_len or window),
            d_model=int(c.hidden_size),
            n_heads=int(c.num_attention_heads),
            n_layers=int(c.num_hidden_layers),
            mlp_ratio=float(ratio),
        )

    def model_config(
        self, hf_config, stored: dict, n_h: int, n_m: int, seq_len: Optional[int] = None, **options
    ) -> ModelConfig:
        """The run's ``ModelConfig``: the description above, the split n_h / n_m / n_o and the loop options."""
        self.check_source(hf_config)
        fields = self.describe(hf_config, seq_len)
        window = self.usable_positions(hf_config)
        if seq_len is not None and seq_len > window:
            raise ConfigError(
                f"--seq-len {seq_len} exceeds the {window} positions of the {self.name} source"
            )
        L = fields["n_layers"]
        return ModelConfig(
            **fields,
            n_h=n_h,
            n_m=n_m,
            n_o=L - n_h - n_m,
            time_conditioning="none",
            tie_embeddings=False,
            backbone=self.name,
            source_config=stored,
            **options,
        ).validate()

    def build(self, cfg: ModelConfig) -> nn.Module:
        return self.wrap(cfg, self.build_source(cfg.source_config))

    def wrap(self, cfg: ModelConfig, source: nn.Module) -> nn.Module:
        from .wrapper import WrappedLoopMDM

        return WrappedLoopMDM(cfg, self, source)

    def check(self, cfg: ModelConfig) -> None:
        sc = cfg.source_config or {}
        if sc.get("model_type") not in self.model_types:
            raise ConfigError(
                f"model.backbone={self.name!r} reads {' / '.join(self.model_types)} models but "
                f"model.source_config has model_type={sc.get('model_type')!r}"
            )
        n = sc.get("num_hidden_layers")
        if n != cfg.n_layers:
            raise ConfigError(
                f"model.n_layers={cfg.n_layers} but model.source_config has num_hidden_layers={n!r}"
            )
        window = self.usable_positions(self.hf_config(sc))
        if cfg.max_seq_len > window:
            raise ConfigError(
                f"model.max_seq_len={cfg.max_seq_len} exceeds the {window} positions of the {self.name} "
                "source; use a shorter window"
            )


def accepted_kwargs(cls, source_config: dict) -> dict:
    """The entries of ``source_config`` that ``cls.__init__`` names (for configs whose family renames itself)."""
    names = {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")}
    return {k: v for k, v in source_config.items() if k in names}
