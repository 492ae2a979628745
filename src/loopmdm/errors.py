"""The library's errors (defined in ``loopmdm.model.errors``, the torch-only core): ``LoopMDMError`` and its
``ConfigError`` / ``DataError`` / ``CheckpointError`` / ``InputError`` (bad tensors passed to the model). Every message is one line naming the problem and the fix;
the CLI prints it as ``error: ...`` and exits with code 2."""

from .model.errors import CheckpointError, ConfigError, DataError, InputError, LoopMDMError

__all__ = [
    "LoopMDMError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "InputError",
    "install_hint",
]


def install_hint(extra: str) -> str:
    """How to install an optional extra, from PyPI or from a clone of the repository."""
    return f"pip install 'loopmdm[{extra}]' (from a clone: pip install -e '.[{extra}]')"
