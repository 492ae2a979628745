"""The library's errors (defined in ``loopmdm.model.errors``, the torch-only core): ``LoopMDMError`` and its
``ConfigError`` / ``DataError`` / ``CheckpointError`` / ``InputError`` (bad tensors passed to the model). Every message is one line naming the problem and the fix;
the CLI prints it as ``error: ...`` and exits with code 2."""

from .model.errors import CheckpointError, ConfigError, DataError, InputError, LoopMDMError

__all__ = ["LoopMDMError", "ConfigError", "DataError", "CheckpointError", "InputError"]
