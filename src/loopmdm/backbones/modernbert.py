"""ModernBERT (``ModernBertForMaskedLM``): pre-LN layers without biases, GeGLU MLPs, rotary positions with a
different base for global and local (sliding-window) layers, a final norm, a prediction head and a decoder tied
to the token embeddings. The layers take, by their ``attention_type``, the global or the sliding-window mask and
that type's rotary table, exactly as ``ModernBertModel.forward`` hands them out.

Layer 0 has no attention pre-norm (transformers builds its ``attn_norm`` as ``nn.Identity``: the embeddings end
in a LayerNorm, so at S = 1 its input is already normalised). Looped from the second iteration on, it would
read the un-normalised residual stream of the mid block's last layer instead, which the source never saw. So the
mid block may not start at layer 0: ``--loop-layers 0:B`` (``model.n_h = 0``) is refused with a one-line
``ConfigError`` asking for ``--loop-layers 1:B``. That is the simplest correct choice: adding a norm for loops
k >= 1 would be exact at S = 1 too, but it adds weights that the source does not have, that need an
initialisation of their own, and that a plain ``ModernBertForMaskedLM`` export could not hold; layer 0 in the
head costs one layer of the loop."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import BACKBONES
from .transformers_family import TransformersFamily, first


class ModernBertFamily(TransformersFamily):
    """``model_type = "modernbert"``: layers ``model.layers``, head ``head`` + ``decoder``."""

    name = "modernbert"
    model_types = ("modernbert",)
    config_class, model_class = "ModernBertConfig", "ModernBertForMaskedLM"
    gated_mlp = True

    def check_loop_layers(self, a: int, b: int) -> None:
        if a == 0:
            raise ConfigError(
                f"--loop-layers 0:{b} loops ModernBERT's layer 0, which has no attention pre-norm (it "
                "reads the normalised embeddings), so from the second loop on it would get an "
                "un-normalised residual stream; start the loop at layer 1, e.g. "
                f"--loop-layers 1:{max(b, 2)}"
            )

    def check(self, cfg) -> None:
        super().check(cfg)
        if cfg.n_h == 0:
            raise ConfigError(
                "model.n_h=0 loops ModernBERT's layer 0, which has no attention pre-norm (it reads the "
                "normalised embeddings), so from the second loop on it would get an un-normalised "
                "residual stream; use model.n_h >= 1 (loopify --loop-layers 1:B)"
            )

    def local_window(self, hf_config) -> int:
        # the whole sliding window (half each side)
        return int(getattr(hf_config, "local_attention", 0) or 0)

    def layers(self, model):
        return model.model.layers

    def embed(self, model, x_t):
        return model.model.embeddings(input_ids=x_t)  # [B, T, D]

    def positions(self, model, h):
        core = model.model
        pos = torch.arange(h.shape[1], device=h.device)[None]  # [1, T]
        # (cos, sin) [1, T, hd]
        return {kind: core.rotary_emb(h, pos, kind) for kind in set(core.config.layer_types)}

    def masks(self, model, h, pad):
        from transformers.masking_utils import (
            create_bidirectional_mask,
            create_bidirectional_sliding_window_mask,
        )

        kw = dict(config=model.config, inputs_embeds=h, attention_mask=pad)
        return {
            "full_attention": create_bidirectional_mask(**kw),
            "sliding_attention": create_bidirectional_sliding_window_mask(**kw),
        }

    def run_layer(self, model, layer, h, positions, masks):
        kind = layer.attention_type
        return first(layer(h, attention_mask=masks[kind], position_embeddings=positions[kind]))

    def features(self, model, h):
        return model.head(model.model.final_norm(h))

    def decoder(self, model):
        return model.decoder.weight, model.decoder.bias


BACKBONES.register("modernbert")(ModernBertFamily())
