"""Backbones: where a model's layers come from, and ``build_model``, the one function that turns a run's
``ModelConfig`` into a network (the trainer, the EMA copy, ``checkpoint.load_model`` and the exporters call it).

* ``loopmdm``: the library's own ``LoopMDM`` (``loopmdm.model``);
* ``bert``, ``roberta``, ``modernbert``, ``dream``: transformers families, one small adapter class each
  (``bert.py``, ``modernbert.py``, ``dream.py``), whose trained models ``loopmdm loopify`` wraps: a
  ``WrappedLoopMDM`` runs the source's own layers as head -> mid block (S times) -> tail, exact at S = 1.

Place in the layers of the package: above ``loopmdm.model`` and below ``loopmdm.diffusion`` (it imports only
``loopmdm.model``, ``loopmdm.errors`` and ``loopmdm.registry``; transformers is imported lazily, inside the
adapters' methods, since it is an optional extra). ``loopmdm.config`` checks ``model.backbone`` against
``BACKBONES``.
"""

from . import bert, dream, modernbert  # noqa: F401  (register the transformers families)
from .base import (
    BACKBONES,
    Backbone,
    OwnBackbone,
    build_model,
    family_for,
    get_backbone,
    known_architectures,
)
from .transformers_family import TransformersFamily
from .wrapper import LayerRange, WrappedLoopMDM

__all__ = [
    "BACKBONES",
    "Backbone",
    "OwnBackbone",
    "TransformersFamily",
    "WrappedLoopMDM",
    "LayerRange",
    "build_model",
    "get_backbone",
    "family_for",
    "known_architectures",
]
