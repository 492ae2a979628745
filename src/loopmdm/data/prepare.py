"""``prepare_data``: the one entry point from a ``DataConfig`` to ``PreparedData``, dispatched on
``data.format`` through the ``FORMATS`` registry (``text``, ``sudoku``, ``answers``)."""

from __future__ import annotations

from typing import Callable

from . import answers, text  # noqa: F401  (register the "answers" and "text" formats)
from .formats import FORMATS, PreparedData
from .sudoku import dataset  # noqa: F401  (registers the "sudoku" format)


def prepare_data(
    cfg,
    vocab_size: int,
    seq_len: int,
    use_cache: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> PreparedData:
    """Rows for training and validation as ``cfg.format`` builds them from ``cfg.source`` (``vocab_size``: the
    size of a BPE to train, when the format trains one; ``seq_len``: the model window)."""
    return FORMATS.get(cfg.format)(cfg, vocab_size, seq_len, use_cache=use_cache, log=log)
