"""The torch-only core: ``ModelConfig``, the transformer layers, the looped backbone ``LoopMDM`` and FLOP
formulas, plus the error family and typed-value checks they need.

    h_0 = head(embed(x_t), t);   h_k = mid(h_{k-1}) for k = 1..S;   logits = tail(h_S)

Nothing here imports another part of loopmdm: Hugging Face export copies these files (with
``configuration_loopmdm.py`` / ``modeling_loopmdm.py``, which need ``transformers`` and are imported only by
``loopmdm.hf``) into a folder that loads with ``trust_remote_code=True`` and needs only torch and transformers.
"""

from .config import ModelConfig
from .looped import LoopContext, LoopMDM

__all__ = ["ModelConfig", "LoopMDM", "LoopContext"]
