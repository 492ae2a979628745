"""The positions that enter the loss, found on the host where the batch and its noise are drawn.

Reading a device tensor back (a count, ``nonzero``, a boolean mask) makes the host wait for the device, and a loss
over a data-dependent number of positions gives the LM head a new shape every step. So the masked positions are
found from the host copies of the batch and noise the trainer draws, as integer indices padded to one of
``LOSS_BUCKETS`` sizes (weight 0 on the padding), and only they move to the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def on_host(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself on the CPU (the trainer's batches and noise), else copied there (a device sync)."""
    return t if t.device.type == "cpu" else t.cpu()


def host_array(t: torch.Tensor) -> np.ndarray:
    """``t`` as a NumPy array, read on the host (``on_host``)."""
    return on_host(t).numpy()


LOSS_BUCKETS = 32  # the loss positions of a batch are padded to a multiple of 1/32 of its positions


def bucketed(n: int, total: int, buckets: int = LOSS_BUCKETS) -> int:
    """``n`` rounded up to a multiple of ceil(total / buckets), at most ``total``: the padded number of loss
    positions of a batch of ``total`` positions (one of ``buckets`` sizes)."""
    unit = max(-(-total // buckets), 1)
    return min(total, -(-n // unit) * unit)


def model_device(model, default: torch.device) -> torch.device:
    """The device ``model`` (or a data-parallel wrapper) computes on; ``default`` for a model without parameters."""
    p = next(iter(model.parameters()), None)
    return default if p is None else p.device


@dataclass
class LossPositions:
    """The positions that enter the loss, found on the host: ``index`` [K] their flat indices b * L + i in row-major
    order, padded to K = ``bucketed(n, B * L)`` by repeating the last one; ``valid`` [K] True at the ``n`` real
    positions, False at the padding (which gets loss weight 0). Integer indices of a size fixed on the host let
    the model gather the positions without a device sync."""

    index: torch.Tensor
    valid: torch.Tensor
    n: int

    @classmethod
    def of(cls, scored: np.ndarray) -> "LossPositions":
        """The True positions of ``scored`` [B, L] (a host array)."""
        flat = np.flatnonzero(scored)  # [n]
        n, k = len(flat), bucketed(len(flat), scored.size)
        index = np.concatenate([flat, np.full(k - n, flat[-1] if n else 0)]).astype(np.int64)  # [K]
        return cls(torch.from_numpy(index), torch.from_numpy(np.arange(k) < n), n)

    def labels(self, x0: torch.Tensor) -> torch.Tensor:
        """The target token of every position [K] from the host rows x0 [B, L]."""
        return x0.reshape(-1).index_select(0, self.index)

    def to(self, device) -> "LossPositions":
        return LossPositions(
            self.index.to(device, non_blocking=True),
            self.valid.to(device, non_blocking=True),
            self.n,
        )

    def rows(self, length: int) -> torch.Tensor:
        """The row b of every position [K] in rows of ``length`` positions."""
        return torch.div(self.index, length, rounding_mode="floor")
