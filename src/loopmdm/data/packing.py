"""From documents to rows: the train / validation split by a stable hash of each document's name, the byte cap
on training text, and packing (every document wrapped as ``<bos> doc <eos>``, concatenated, cut into rows of
the model window: MDLM's "wrap")."""

from __future__ import annotations

import hashlib
from typing import Iterable, Optional

import numpy as np

from ..errors import DataError
from .documents import Document


def stable_fraction(name: str) -> float:
    """A number in [0, 1) from a document's name, identical on every machine and Python version."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_by_key(
    items: list, key, val_fraction: float, what: str, key_name: str = "key"
) -> tuple[list, list]:
    """Train / validation by the stable hash of ``key(item)``: items sharing a key land in the same split; each
    split non-empty (the first item goes to validation when the hash gives it none)."""
    if len(items) < 2:
        raise DataError(
            f"{what} holds {len(items)} valid row; need at least 2 for train / validation"
        )
    if len({key(x) for x in items}) < 2:
        raise DataError(
            f"{what} holds {len(items)} rows that all share one {key_name}; rows that share it stay in one "
            f"split, so train / validation need at least 2 different ones"
        )
    val = [x for x in items if stable_fraction(key(x)) < val_fraction] or list(items[:1])
    names = {key(x) for x in val}
    train = [x for x in items if key(x) not in names]
    if not train:  # the hash sent every key to validation: keep only the first key there
        first = key(items[0])
        val = [x for x in items if key(x) == first]
        train = [x for x in items if key(x) != first]
    return train, val


def split_documents(
    docs: list[Document], val_fraction: float
) -> tuple[list[Document], list[Document]]:
    """Train / validation split by the stable hash of each document's name; each split non-empty."""
    if len(docs) < 2:
        raise DataError(
            f"the corpus has {len(docs)} document; need at least 2 to split train / validation"
        )
    ranked = sorted(docs, key=lambda d: stable_fraction(d.name))
    val = [d for d in ranked if stable_fraction(d.name) < val_fraction] or ranked[:1]
    val_names = {d.name for d in val}
    train = [d for d in docs if d.name not in val_names]
    if not train:
        train, val = val[1:], val[:1]
    return train, val


def cap_bytes(docs: list[Document], max_bytes: Optional[int]) -> list[Document]:
    """The first documents in hash order whose text adds up to at most ``max_bytes`` (at least one)."""
    if max_bytes is None:
        return docs
    out, total = [], 0
    for d in sorted(docs, key=lambda d: stable_fraction(d.name)):
        n = len(d.text.encode("utf-8"))
        if out and total + n > max_bytes:
            break
        out.append(d)
        total += n
    return out


def pack(
    token_lists: Iterable[list[int]], seq_len: int, bos_id: Optional[int], eos_id: Optional[int]
) -> np.ndarray:
    """Wrap every document as [bos] + ids + [eos], concatenate, and cut into rows [N, seq_len] (remainder dropped).
    A tokenizer whose BOS and EOS are one token (GPT-2's ``<|endoftext|>``) gets it once per boundary: [bos] + ids."""
    if eos_id is not None and eos_id == bos_id:
        eos_id = None
    pieces = []
    for ids in token_lists:
        row = (
            ([bos_id] if bos_id is not None else [])
            + list(ids)
            + ([eos_id] if eos_id is not None else [])
        )
        pieces.append(np.asarray(row, dtype=np.int32))
    flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    n = len(flat) // seq_len
    return flat[: n * seq_len].reshape(n, seq_len)


# --------------------------------------------------------------------------- the prepared dataset
