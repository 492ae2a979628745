"""Zero-shot perplexity bound of a checkpoint on another corpus, packed exactly as in training.

The corpus (local file, folder, ``.jsonl``, or ``hf:NAME`` when the network and the [hf] extra allow) is
read with ``loopmdm.data.read_documents``, tokenized with the *checkpoint's* tokenizer, wrapped as
``<bos> doc <eos>``, packed into rows of model.max_seq_len and scored with the validation NELBO
estimator (``loopmdm.eval.nelbo``) at every requested S. Bits per byte are computed over the text of the
rows actually scored, so models with different tokenizers are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..config import DataConfig
from ..data import pack, read_documents
from ..diffusion import make_objective
from ..errors import DataError
from .nelbo import nelbo_sweep


@dataclass
class Corpus:
    """Packed rows [N, L] of a corpus plus counts for the report."""

    source: str
    rows: np.ndarray
    documents: int
    skipped_files: int


def load_corpus(
    source: str,
    tokenizer,
    seq_len: int,
    text_field: str = "text",
    max_documents: Optional[int] = None,
) -> Corpus:
    """Read ``source`` and pack it into rows [N, seq_len] with ``tokenizer`` (training's packing: every document
    wrapped as [bos] + ids + [eos], concatenated, remainder dropped). ``max_documents`` keeps the first ones."""
    cfg = DataConfig(source=source, text_field=text_field, bad_files="skip")
    try:
        report = read_documents(cfg)
    except ImportError as e:  # 'hf:NAME' without the optional reader / `datasets`
        raise DataError(
            f"cannot read {source!r}: {e}; install the [hf] extra or use a local file"
        ) from None
    docs = report.documents[:max_documents] if max_documents else report.documents
    ids = tokenizer.encode_batch([d.text for d in docs])
    rows = pack(ids, seq_len, tokenizer.bos_id, tokenizer.eos_id)  # [N, L]
    if len(rows) == 0:
        n = sum(len(x) for x in ids)
        raise DataError(
            f"corpus {source!r} has {n} tokens, fewer than one sequence of {seq_len} tokens; "
            "add text (zero-shot rows are packed to the model window, as in training)"
        )
    return Corpus(source, rows, len(docs), len(report.skipped))


def zero_shot(
    model,
    tokenizer,
    cfg,
    source: str,
    loops: Sequence[int],
    *,
    text_field: str = "text",
    batch_size: int = 32,
    max_batches: Optional[int] = None,
    seed: int = 0,
    repeats: int = 1,
    target_rel_stderr: Optional[float] = None,
    max_repeats: int = 64,
    precision: str = "fp32",
    max_documents: Optional[int] = None,
    log=lambda s: None,
) -> dict:
    """Zero-shot NELBO / perplexity bound / bits per byte of ``model`` on ``source`` at every S in ``loops``.

    cfg: the checkpoint's RunConfig (objective, schedule, window); the other arguments are those of
    ``loopmdm.eval.nelbo.evaluate_nelbo``. Returns ``{"source", "documents", "rows", "results": [...]}``."""
    corpus = load_corpus(source, tokenizer, cfg.model.max_seq_len, text_field, max_documents)
    log(
        f"zero-shot corpus {source}: {corpus.documents} documents -> {len(corpus.rows)} rows of "
        f"{cfg.model.max_seq_len} tokens"
        + (f" ({corpus.skipped_files} files skipped)" if corpus.skipped_files else "")
    )
    # the lowest-variance estimate
    objective = make_objective(cfg.diffusion, tokenizer.mask_id, antithetic=True)
    results = nelbo_sweep(
        model,
        corpus.rows,
        objective,
        loops,
        batch_size=batch_size,
        max_batches=max_batches,
        seed=seed,
        repeats=repeats,
        target_rel_stderr=target_rel_stderr,
        max_repeats=max_repeats,
        precision=precision,
        tokenizer=tokenizer,
        log=log,
    )
    return {
        "source": source,
        "documents": corpus.documents,
        "rows": int(len(corpus.rows)),
        "results": results,
    }
