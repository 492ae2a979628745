"""Starting a run from another checkpoint's weights (``loopmdm train --init DIR``): fine-tuning a loopified (or
any) checkpoint with a fresh optimizer, learning-rate schedule and step counter.

The new run takes DIR's model (it must: the weights fix it), and by default every other setting of DIR's
config, which ``--config`` / ``--set`` then change (a new ``train.lr``, ``train.max_steps``, loop-count
distribution, ...). ``train.init`` records the checkpoint folder the weights came from and
``train.init_weights`` which of its weights (EMA when present, by default). A resumed run takes its weights
from its own checkpoint; ``train.init`` is then only the record.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from ..checkpoint import (
    load_config_file,
    load_tokenizer_file,
    resolve_checkpoint,
    verify_checkpoint,
)
from ..config import RunConfig, load_config
from ..errors import CheckpointError, DataError, LoopMDMError
from ..model import ModelConfig
from .resume import config_diff

# Model settings a fine-tuning run may change: they do not change which weights exist (the window may shrink or
# grow within what the position encoding covers: not with learned positions of the library's own model).
CHANGEABLE = ("checkpoint_loops", "backprop_depth", "dropout", "max_seq_len")


def init_folder(path: str | Path) -> Path:
    """The verified checkpoint folder ``--init`` names (a run folder resolves to its latest checkpoint)."""
    try:
        folder = resolve_checkpoint(path)
        verify_checkpoint(folder)
    except LoopMDMError as e:
        raise CheckpointError(f"--init {str(path)!r}: {e}") from None
    return folder


def init_run_config(
    init: str | Path, config_file: Optional[str | Path] = None, overrides: Optional[list] = None
) -> RunConfig:
    """The config of a run started from ``init``'s weights: its config, then ``config_file`` and ``--set``
    overrides; ``train.init`` names the resolved checkpoint folder. Model changes that would change the set of
    weights are refused."""
    folder = init_folder(init)
    base = load_config_file(folder)
    base.train.init, base.train.init_weights = str(folder), "auto"
    cfg = load_config(config_file=config_file, overrides=overrides, base=base)
    check_init_model(base.model, cfg.model, folder)
    return cfg


def check_init_model(saved: ModelConfig, new: ModelConfig, folder: Path) -> None:
    """The run's model must be the checkpoint's (up to ``CHANGEABLE`` settings)."""
    fixed = CHANGEABLE if not (saved.learned_positions and not saved.wrapped) else CHANGEABLE[:-1]
    diffs = [
        d
        for d in config_diff(dataclasses.asdict(saved), dataclasses.asdict(new))
        if d.split(":")[0].split(".")[0] not in fixed
    ]
    if diffs:
        raise CheckpointError(
            f"--init {str(folder)!r}: the run's model differs from the checkpoint's "
            f"({'; '.join(d[:80] for d in diffs[:2])}); --init keeps the checkpoint's model "
            "(re-split its layers with `loopmdm loopify`)"
        )


def check_init_tokenizer(folder: Path, tokenizer) -> None:
    """The data must be tokenised with the checkpoint's tokenizer (same vocabulary, same ids)."""
    if load_tokenizer_file(folder).tok.get_vocab() != tokenizer.tok.get_vocab():
        raise DataError(
            f"the data's tokenizer differs from --init's {str(folder / 'tokenizer.json')!r}; train with "
            f"that tokenizer: --set data.tokenizer={folder / 'tokenizer.json'}"
        )


def fit_vocabulary(cfg: RunConfig, tokenizer) -> None:
    """A model trained from scratch gets the tokenizer's vocabulary size; a model whose weights come from
    elsewhere (``train.init``, a loopified transformers model) keeps its own, which must hold the tokenizer."""
    if not cfg.model.wrapped and cfg.train.init is None:
        cfg.model.vocab_size = tokenizer.vocab_size
    elif tokenizer.vocab_size > cfg.model.vocab_size:
        raise DataError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is "
            f"model.vocab_size={cfg.model.vocab_size}; use the checkpoint's tokenizer (data.tokenizer)"
        )
