"""LoopMDMConfig: the transformers configuration of a looped masked diffusion language model.

The model fields are those of ``ModelConfig`` (``config.py`` beside this file) under the same names (the layers split into a
head of n_h layers run once, a mid block of n_m shared layers run S times, and a tail of n_o layers);
``hidden_size`` / ``num_attention_heads`` / ``num_hidden_layers`` / ``max_position_embeddings`` are
aliases, as transformers tooling expects. Inference settings: ``default_loops`` (S when ``forward`` is not
given ``loops``), ``mask_token_id``, ``noise_schedule`` and ``t_eps``. ``loopmdm_run_config`` keeps the full
training configuration so that ``loopmdm import`` restores a library checkpoint exactly.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Optional

from transformers import PretrainedConfig

from .config import ModelConfig

# Field -> default of the backbone's ModelConfig (one source: the dataclass itself).
MODEL_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(ModelConfig)}


class LoopMDMConfig(PretrainedConfig):
    """Configuration of ``LoopMDMForMaskedLM``: the backbone shape plus the default loop count S."""

    model_type = "loopmdm"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_seq_len",
    }

    def __init__(
        self,
        default_loops: int = 1,
        mask_token_id: Optional[int] = None,
        noise_schedule: str = "loglinear",
        t_eps: float = 1e-3,
        loopmdm_run_config: Optional[dict] = None,
        **kwargs: Any,
    ):
        for name, default in MODEL_DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, default))
        self.default_loops = default_loops
        self.mask_token_id = mask_token_id
        self.noise_schedule = noise_schedule
        self.t_eps = t_eps
        self.loopmdm_run_config = loopmdm_run_config
        kwargs["tie_word_embeddings"] = self.tie_embeddings
        super().__init__(**kwargs)

    def backbone_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the backbone's ``ModelConfig``."""
        return {name: getattr(self, name) for name in MODEL_DEFAULTS}
