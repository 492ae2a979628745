"""Deterministic epochs over the training rows: a seeded permutation per epoch; (epoch, pos) is the position
a checkpoint stores, so a resumed run reads exactly the batches an uninterrupted one would."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


class BatchStream:
    """Global batches of ``batch_size`` row indices out of ``n_rows``, epoch after epoch."""

    def __init__(self, n_rows: int, batch_size: int, seed: int):
        if n_rows < batch_size:
            raise ConfigError(
                f"train.batch_size={batch_size} exceeds the {n_rows} training rows; "
                "lower train.batch_size or add data"
            )
        self.n, self.bs, self.seed = n_rows, batch_size, seed
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self) -> np.ndarray:
        if self.pos + self.bs > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._permutation()
        idx = self._perm[self.pos : self.pos + self.bs]
        self.pos += self.bs
        return idx

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, st: dict) -> None:
        self.epoch, self.pos = int(st["epoch"]), int(st["pos"])
        self._perm = self._permutation()
