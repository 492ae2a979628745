"""ModernBERT (``ModernBertForMaskedLM``): pre-LN layers without biases, GeGLU MLPs, rotary positions with a
different base for global and local (sliding-window) layers, a final norm, a prediction head and a decoder tied
to the token embeddings. The layers take, by their ``attention_type``, the global or the sliding-window mask and
that type's rotary table, exactly as ``ModernBertModel.forward`` hands them out."""

from __future__ import annotations

import torch

from .base import BACKBONES
from .transformers_family import TransformersFamily, first


class ModernBertFamily(TransformersFamily):
    """``model_type = "modernbert"``: layers ``model.layers``, head ``head`` + ``decoder``."""

    name = "modernbert"
    model_types = ("modernbert",)
    config_class, model_class = "ModernBertConfig", "ModernBertForMaskedLM"
    gated_mlp = True

    def layers(self, model):
        return model.model.layers

    def embed(self, model, x_t):
        return model.model.embeddings(input_ids=x_t)  # [B, T, D]

    def positions(self, model, h):
        core = model.model
        pos = torch.arange(h.shape[1], device=h.device)[None]  # [1, T]
        return {kind: core.rotary_emb(h, pos, kind) for kind in set(core.config.layer_types)}  # (cos, sin) [1, T, hd]

    def masks(self, model, h, pad):
        from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask

        kw = dict(config=model.config, inputs_embeds=h, attention_mask=pad)
        return {"full_attention": create_bidirectional_mask(**kw),
                "sliding_attention": create_bidirectional_sliding_window_mask(**kw)}

    def run_layer(self, model, layer, h, positions, masks):
        kind = layer.attention_type
        return first(layer(h, attention_mask=masks[kind], position_embeddings=positions[kind]))

    def features(self, model, h):
        return model.head(model.model.final_norm(h))

    def decoder(self, model):
        return model.decoder.weight, model.decoder.bias


BACKBONES.register("modernbert")(ModernBertFamily())
