"""The ``text`` data format: documents from a source -> train / validation split by name -> a tokenizer (a
byte-level BPE trained on the training split, or ``data.tokenizer``) -> packed rows of the model window,
cached on disk keyed by a fingerprint of the source and the settings."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

from ..errors import DataError
from .cache import cache_root, read_cache, write_cache
from .documents import LINES_PER_CHUNK
from .formats import FORMATS, PreparedData
from .hub import tokenizer_from_hub
from .packing import cap_bytes, pack, split_documents
from .sources import read_documents, source_fingerprint
from .tokenizer import TextTokenizer, train_bpe

CACHE_VERSION = 3  # bump when reading, splitting or packing changes


def load_tokenizer(name_or_path: str) -> TextTokenizer:
    """A tokenizer from a local ``tokenizer.json`` / folder, or a Hugging Face Hub name (needs the network)."""
    return tokenizer_from_hub(name_or_path)


def fingerprint(cfg, vocab_size: int, seq_len: int) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                cfg.source,
                cfg.text_field,
                cfg.val_fraction,
                cfg.max_train_bytes,
                cfg.tokenizer,
                cfg.bad_files,
                vocab_size,
                seq_len,
                LINES_PER_CHUNK,
                CACHE_VERSION,
            ]
        ).encode()
    )
    h.update(source_fingerprint(cfg).encode())
    return h.hexdigest()[:16]


@FORMATS.register("text")
def prepare_text(
    cfg,
    vocab_size: int,
    seq_len: int,
    use_cache: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> PreparedData:
    """Read, split, tokenize (training a BPE of ``vocab_size`` unless ``cfg.tokenizer`` names one) and pack into
    rows of ``seq_len``; cached under ``cache_root(cfg)/data``."""
    folder = cache_root(cfg) / "data" / fingerprint(cfg, vocab_size, seq_len)
    if use_cache:
        try:
            cached = read_cache(folder)
        except (OSError, ValueError, KeyError, DataError):
            cached = None
            log(f"data cache {folder} unreadable; rebuilding it")
        if cached is not None:
            tok, arrays, stats = cached
            return PreparedData(tok, arrays["train"], arrays["val"], stats)
    report = read_documents(cfg)
    train_docs, val_docs = split_documents(report.documents, cfg.val_fraction)
    train_docs = cap_bytes(train_docs, cfg.max_train_bytes)
    skipped = (
        f", {report.summary()} (data.bad_files={cfg.bad_files}), e.g. {report.skipped[0]}"
        if report.skipped
        else ""
    )
    log(f"{len(train_docs)} train / {len(val_docs)} validation documents{skipped}")
    tokenizer = (
        load_tokenizer(cfg.tokenizer)
        if cfg.tokenizer
        else train_bpe((d.text for d in train_docs), vocab_size)
    )
    train = pack(
        tokenizer.encode_batch([d.text for d in train_docs]),
        seq_len,
        tokenizer.bos_id,
        tokenizer.eos_id,
    )
    val_ids = tokenizer.encode_batch([d.text for d in val_docs])
    val = pack(val_ids, seq_len, tokenizer.bos_id, tokenizer.eos_id)
    if len(train) == 0 or len(val) == 0:
        raise DataError(
            f"the corpus is too small: {len(train)} train / {len(val)} validation rows of length {seq_len}; "
            "add text or lower model.max_seq_len"
        )
    stats = {
        "train_docs": len(train_docs),
        "val_docs": len(val_docs),
        "skipped_files": len(report.skipped),
        "skipped_by_reason": report.skipped_by_reason(),
        "train_tokens": int(train.size),
        "val_tokens": int(val.size),
        "val_bytes": int(
            sum(len(d.text.encode("utf-8")) for d in val_docs)
            * val.size
            / max(sum(len(x) + 2 for x in val_ids), 1)
        ),
    }
    if use_cache:
        write_cache(folder, tokenizer, {"train": train, "val": val}, stats)
    return PreparedData(tokenizer, train, val, stats)
