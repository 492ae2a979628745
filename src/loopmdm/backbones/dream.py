"""Dream (Dream-org/Dream-v0-Base-7B and its kin): a diffusion LM in the Qwen2 layout (``model.layers[i]`` with
q / k / v / o projections, q / k / v biases, RMSNorm, SwiGLU, rotary positions), run with bidirectional
attention, whose logit for position i is read from position i - 1 (Dream's generation code shifts the logits
right by one). Its checkpoints use transformers' own Qwen2 names, so the adapter builds a
``Qwen2ForCausalLM`` from Dream's config, makes every attention bidirectional and loads the weights: no remote
code is run (``trust_remote_code`` is not needed). Sliding-window layers are refused (Dream uses none)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import BACKBONES
from .transformers_family import TransformersFamily, accepted_kwargs, first, import_transformers

# Dream's own class names; the Qwen2 classes replace them
DROP = ("model_type", "architectures", "auto_map")


class DreamFamily(TransformersFamily):
    """``model_type = "Dream"``: layers ``model.layers``, final ``model.norm``, decoder ``lm_head``, shift by one."""

    name = "dream"
    model_types = ("Dream",)
    config_class, model_class = "Qwen2Config", "Qwen2ForCausalLM"
    shift = True
    gated_mlp = True
    exportable = False  # an export would need Dream's remote code, which this package does not ship

    def _config_kwargs(self, source_config):
        tf = import_transformers()
        kept = {k: v for k, v in source_config.items() if k not in DROP}
        known = accepted_kwargs(tf.Qwen2Config, kept)
        # e.g. rope_theta, mask_token_id: kwargs
        extra = {k: v for k, v in kept.items() if k not in known}
        return {**known, **extra}

    def check_source(self, hf_config) -> None:
        if any(t != "full_attention" for t in getattr(hf_config, "layer_types", None) or []):
            raise ConfigError(
                "this Dream config enables sliding-window layers (use_sliding_window=true); Dream "
                "itself uses none and loopify does not reproduce them"
            )

    def stored_config(self, hf_config, raw=None):
        # Dream's own config.json
        return dict(raw) if raw is not None else super().stored_config(hf_config)

    def prepare(self, model):
        for layer in self.layers(model):
            layer.self_attn.is_causal = False  # Dream attends both ways
        return model

    def layers(self, model):
        return model.model.layers

    def embed(self, model, x_t):
        return model.model.embed_tokens(x_t)  # [B, T, D]

    def positions(self, model, h):
        pos = torch.arange(h.shape[1], device=h.device)[None]  # [1, T]
        return model.model.rotary_emb(h, pos)  # (cos, sin) [1, T, hd]

    def run_layer(self, model, layer, h, positions, masks):
        return first(layer(h, attention_mask=masks, position_embeddings=positions))

    def features(self, model, h):
        return model.model.norm(h)

    def decoder(self, model):
        return model.lm_head.weight, None

    def reference_logits(self, model, x):
        # bidirectional: no mask
        logits = model(input_ids=x, attention_mask={"full_attention": None}).logits
        # Dream: position i reads position i - 1
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


BACKBONES.register("dream")(DreamFamily())
