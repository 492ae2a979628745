"""Errors the library raises: one family, each message one line naming the problem and the fix.

The classes live in the backbone package because ``loopmdm/model/`` is exported verbatim as Hugging Face
remote code and may import only torch, the standard library and its own files; the rest of the library and
its users import them from ``loopmdm.errors`` (or ``loopmdm``).
"""


class LoopMDMError(Exception):
    """Base class of every error the library raises on bad input."""


class ConfigError(LoopMDMError):
    """A configuration value, option or CLI argument is invalid."""


class DataError(LoopMDMError):
    """A data path, file or corpus is missing, empty or unreadable."""


class CheckpointError(LoopMDMError):
    """A checkpoint folder or file is missing, corrupt or unsafe."""


class InputError(LoopMDMError, ValueError):
    """Token ids or diffusion times passed to the model have the wrong dtype, shape or values."""
