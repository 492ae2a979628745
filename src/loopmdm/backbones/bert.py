"""BERT and RoBERTa (``BertForMaskedLM`` / ``RobertaForMaskedLM``): post-LN encoder layers with biases and
learned absolute positions, a prediction-head transform (dense, GELU, LayerNorm) and a decoder tied to the word
embeddings. The embeddings (word + position + token type, LayerNorm) run once in the prelude, so positions
need nothing per layer; RoBERTa counts positions from ``pad_token_id + 1`` as its own embeddings do."""

from __future__ import annotations

from ..errors import ConfigError
from .base import BACKBONES
from .transformers_family import TransformersFamily, first


class BertFamily(TransformersFamily):
    """``model_type = "bert"``: layers ``bert.encoder.layer``, head ``cls.predictions``."""

    name = "bert"
    model_types = ("bert",)
    config_class, model_class = "BertConfig", "BertForMaskedLM"
    core_name = "bert"  # the encoder attribute of the masked-LM model

    def core(self, model):
        return getattr(model, self.core_name)

    def check_source(self, hf_config) -> None:
        if getattr(hf_config, "is_decoder", False):
            raise ConfigError(
                f"this {self.name} model is a decoder (config.is_decoder=true, causal attention); "
                "loopify reads bidirectional masked LMs"
            )
        kind = getattr(hf_config, "position_embedding_type", "absolute")
        if kind not in (None, "absolute"):
            raise ConfigError(
                f"{self.name} position_embedding_type={kind!r} is not supported; loopify reproduces "
                "absolute positions only"
            )

    def layers(self, model):
        return self.core(model).encoder.layer

    def embed(self, model, x_t):
        return self.core(model).embeddings(input_ids=x_t)  # [B, T, D]

    def run_layer(self, model, layer, h, positions, masks):
        return first(layer(h, attention_mask=masks))

    def features(self, model, h):
        return model.cls.predictions.transform(h)

    def decoder(self, model):
        d = model.cls.predictions.decoder
        return d.weight, d.bias


class RobertaFamily(BertFamily):
    """``model_type = "roberta"``: layers ``roberta.encoder.layer``, head ``lm_head`` (dense, GELU, LayerNorm,
    decoder)."""

    name = "roberta"
    model_types = ("roberta",)
    config_class, model_class = "RobertaConfig", "RobertaForMaskedLM"
    core_name = "roberta"

    def usable_positions(self, hf_config) -> int:
        return int(hf_config.max_position_embeddings) - int(hf_config.pad_token_id or 0) - 1

    def features(self, model, h):
        from transformers.activations import gelu  # what RobertaLMHead.forward applies

        head = model.lm_head
        return head.layer_norm(gelu(head.dense(h)))

    def decoder(self, model):
        d = model.lm_head.decoder
        return d.weight, d.bias


BACKBONES.register("bert")(BertFamily())
BACKBONES.register("roberta")(RobertaFamily())
