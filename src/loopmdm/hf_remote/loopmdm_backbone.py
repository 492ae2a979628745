"""Inside the installed package the backbone is the library's own code (exported folders get a generated,
self-contained copy of the same classes; see ``loopmdm.hf_model.backbone_source``)."""

from ..blocks import Rotary  # noqa: F401
from ..config import ModelConfig  # noqa: F401
from ..errors import ConfigError  # noqa: F401
from ..model import LoopMDM  # noqa: F401
