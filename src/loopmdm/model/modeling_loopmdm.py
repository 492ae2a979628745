"""LoopMDMForMaskedLM: a transformers ``PreTrainedModel`` around the LoopMDM backbone (same weights, same logits).

    from transformers import AutoModelForMaskedLM, AutoTokenizer
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(folder)
    batch = tok(["def f(x):<mask><mask> x"], return_tensors="pt")
    logits = model(**batch, loops=8).logits            # [B, T, V], S = 8 loops of the mid block

``forward`` takes the masked sequence x_t (``input_ids``), optionally the diffusion time t (``timesteps``,
[B] in (0, 1]) and the loop count S (``loops``). Without ``timesteps`` a time-conditioned model uses the
fraction of masked tokens, which is t exactly in expectation under the log-linear schedule alpha_t = 1 - t.
The logits are raw, as the backbone (``looped.LoopMDM``) returns them; ``apply_subs=True`` returns MDLM's SUBS
log-probabilities instead (the mask token gets no probability and unmasked positions copy their input).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .config import ModelConfig
from .configuration_loopmdm import LoopMDMConfig
from .layers import Rotary
from .looped import LoopMDM
from .subs import subs_log_probs

_TRANSFORMERS_V5 = int(transformers.__version__.split(".")[0]) >= 5
_ZERO_INIT = ("modulation", "loop_embed")  # adaLN-Zero gates and the loop embedding start at zero


class LoopMDMPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading rules shared by the LoopMDM transformers classes."""

    config_class = LoopMDMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise what a checkpoint does not hold: the rotary tables (non-persistent buffers, rebuilt from
        the config) and, for missing weights, the backbone's own scheme (normal(0, 0.02), zero adaLN gates)."""
        if isinstance(module, Rotary):
            cfg = self.config
            with torch.device("cpu"):
                fresh = Rotary(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
            with torch.no_grad():
                module.cos.copy_(fresh.cos)
                module.sin.copy_(fresh.sin)
        elif isinstance(module, nn.Linear):
            if getattr(module, "_loopmdm_zero_init", False):
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm) and module.weight is not None:
            nn.init.ones_(module.weight)


class LoopMDMForMaskedLM(LoopMDMPreTrainedModel):
    """Looped masked diffusion LM: head (n_h layers) -> mid block (n_m shared layers, S times) -> tail (n_o)."""

    _tied_weights_keys: Any = (
        {"model.lm_head.weight": "model.embed.weight"}
        if _TRANSFORMERS_V5
        else ["model.lm_head.weight"]
    )

    def __init__(self, config: LoopMDMConfig):
        super().__init__(config)
        self.model = LoopMDM(ModelConfig(**config.backbone_kwargs()))
        for name, module in self.model.named_modules():
            if name.split(".")[-1] in _ZERO_INIT:
                module._loopmdm_zero_init = True
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Module:
        return self.model.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.model.lm_head = value

    def infer_timesteps(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """t [B] from the fraction of masked tokens among real tokens (exact for alpha_t = 1 - t)."""
        cfg = self.config
        if cfg.mask_token_id is None:
            raise ValueError("config.mask_token_id is not set: pass timesteps=t explicitly")
        if cfg.noise_schedule != "loglinear":
            raise ValueError(
                f"the model was trained with the {cfg.noise_schedule!r} schedule: pass timesteps=t "
                "(the masked fraction equals t only for the log-linear schedule)"
            )
        real = (
            torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is None
            else attention_mask.bool()
        )
        masked = (input_ids == cfg.mask_token_id) & real
        t = masked.sum(-1).float() / real.sum(-1).clamp_min(1).float()  # [B]
        return t.clamp(cfg.t_eps, 1.0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        timesteps: Optional[torch.Tensor] = None,
        loops: Optional[int] = None,
        labels: Optional[torch.Tensor] = None,
        apply_subs: bool = False,
        return_dict: Optional[bool] = None,
        **kwargs: Any,
    ) -> MaskedLMOutput:
        """Logits [B, T, V] of x_0 given x_t = ``input_ids`` [B, T], running the mid block S = ``loops`` times
        (default ``config.default_loops``). ``labels`` [B, T] (-100 = ignore) gives the masked-token
        cross-entropy as ``loss``."""
        loops = self.config.default_loops if loops is None else int(loops)
        t = timesteps
        if t is None and self.model.time_embed is not None:
            t = self.infer_timesteps(input_ids, attention_mask)
        if t is not None:
            t = torch.as_tensor(t, dtype=torch.float32, device=input_ids.device).reshape(-1)
            t = t.expand(input_ids.shape[0]) if t.numel() == 1 else t
        keep = (
            attention_mask
            if attention_mask is not None and not bool(attention_mask.all())
            else None
        )
        logits = self.model(input_ids, t, loops=loops, attention_mask=keep)  # [B, T, V]
        if apply_subs and self.config.mask_token_id is not None:
            logits = subs_log_probs(logits, input_ids, self.config.mask_token_id)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
            )
        return MaskedLMOutput(loss=loss, logits=logits)
