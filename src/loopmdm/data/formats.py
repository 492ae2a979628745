"""``PreparedData``: what training and evaluation consume, whatever the source: a tokenizer and rows of token
ids, optionally with frozen (given) positions and a per-batch augmentation; and the ``FORMATS`` registry of the
ways a source becomes rows (``text``: BPE + packing; ``sudoku``: 81-cell boards with the givens frozen)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..diffusion import Batch
from ..registry import Registry
from .tokenizer import TextTokenizer

#: (x [B, L] int, frozen [B, L] bool or None, rng) -> (x, frozen): a validity-preserving transform of a batch
Augment = Callable[
    [np.ndarray, Optional[np.ndarray], np.random.Generator], tuple[np.ndarray, Optional[np.ndarray]]
]


@dataclass
class PreparedData:
    """Tokenizer plus train / validation rows [N, L] (int32). ``train_frozen`` / ``val_frozen`` [N, L] (bool)
    mark given positions of conditional data (never masked, never scored); ``augment`` transforms training
    batches (``batch(..., rng=...)``); ``stats`` holds counts for the log and the report."""

    tokenizer: TextTokenizer
    train: np.ndarray
    val: np.ndarray
    stats: dict = field(default_factory=dict)
    train_frozen: Optional[np.ndarray] = None
    val_frozen: Optional[np.ndarray] = None
    augment: Optional[Augment] = None

    @property
    def bytes_per_token(self) -> float:
        return self.stats.get("val_bytes", 0) / max(self.stats.get("val_tokens", 1), 1)

    @property
    def conditional(self) -> bool:
        return self.train_frozen is not None

    @property
    def free_fraction(self) -> float:
        """The share of training positions that are not frozen (1 for unconditional data)."""
        return 1.0 if self.train_frozen is None else float(1.0 - self.train_frozen.mean())

    def batch(
        self, split: str, idx: np.ndarray, rng: Optional[np.random.Generator] = None
    ) -> Batch:
        """Rows ``idx`` of the ``train`` or ``val`` split as a ``Batch`` (int64 x0 [B, L], bool frozen [B, L]);
        with ``rng`` (training) the augmentation, if any, is applied."""
        rows = self.train if split == "train" else self.val
        frozen = self.train_frozen if split == "train" else self.val_frozen
        x, f = rows[idx], None if frozen is None else frozen[idx]
        if rng is not None and self.augment is not None:
            x, f = self.augment(x, f, rng)
        return Batch(
            torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)),
            None if f is None else torch.from_numpy(np.ascontiguousarray(f, dtype=bool)),
        )


#: name -> prepare(cfg: DataConfig, vocab_size, seq_len, use_cache, log) -> PreparedData
FORMATS: Registry[Callable[..., PreparedData]] = Registry("data format")
