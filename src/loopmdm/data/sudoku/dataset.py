"""The ``sudoku`` data format: boards as 81-token rows for conditional masked diffusion.

A row is the solved grid (digit d -> token id d); its ``frozen`` mask marks the puzzle's givens, which the
objective never masks (the blanks are the generation). The tokenizer is a tiny word-level one (``<pad>``, the
nine digits, ``<mask>``) saved with every checkpoint, so a Sudoku run folder is an ordinary run folder. Boards
come from the built-in generator (``data.source = "generate"``, settings in ``data.sudoku``) or from a puzzle
file / ``hf:`` dataset (``loopmdm.data.sudoku.files``), split into train / validation by a stable hash of the
solution grid (so the splits never share a solution). Training batches get a random symmetry per board.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from ...errors import DataError
from ..cache import cache_root
from ..formats import FORMATS, PreparedData
from ..packing import split_by_key
from ..tokenizer import TextTokenizer
from .augment import AUGMENTS
from .files import read_puzzles
from .grid import N_CELLS, SudokuPair, normalize_grid
from .splits import Splits, load_or_generate

GENERATE = "generate"  # data.source of the built-in generator
# ids: pad 0, digit d -> d, mask 10
TOKENS = ["<pad>"] + [str(d) for d in range(1, 10)] + ["<mask>"]
MASK_ID = TOKENS.index("<mask>")


def sudoku_tokenizer() -> TextTokenizer:
    """The word-level tokenizer of Sudoku boards: one token per cell, '0' / '.' (a blank) -> ``<mask>``."""
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOKENS)}, unk_token="<mask>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "<mask>"])
    return TextTokenizer(tok)


def is_sudoku_tokenizer(tokenizer: TextTokenizer) -> bool:
    """True when ``tokenizer`` has the Sudoku vocabulary (digits 1..9 at ids 1..9, a mask token)."""
    vocab = tokenizer.tok.get_vocab()
    return tokenizer.mask_id == MASK_ID and all(vocab.get(str(d)) == d for d in range(1, 10))


def encode_grids(grids: Sequence[str]) -> np.ndarray:
    """Grid strings -> token ids [N, 81] (int32): digit d -> d, blank -> the mask id."""
    if not grids:
        return np.zeros((0, N_CELLS), dtype=np.int32)
    raw = np.frombuffer("".join(normalize_grid(g) for g in grids).encode("ascii"), dtype=np.uint8)
    ids = raw.astype(np.int32) - ord("0")
    return np.where(ids == 0, MASK_ID, ids).reshape(len(grids), N_CELLS).astype(np.int32)


def decode_grid(ids: Iterable[int]) -> str:
    """81 token ids -> a grid string ('0' for the mask or any non-digit id)."""
    return "".join(str(int(i)) if 1 <= int(i) <= 9 else "0" for i in ids)


def pairs_to_arrays(pairs: Sequence[SudokuPair]) -> tuple[np.ndarray, np.ndarray]:
    """(solutions [N, 81] int32, frozen [N, 81] bool: the givens)."""
    solutions = encode_grids([p.solution for p in pairs])
    frozen = encode_grids([p.puzzle for p in pairs]) != MASK_ID
    return solutions, frozen


def generated_splits(cfg, log: Callable[[str], None] = lambda s: None) -> Splits:
    """The built-in train / validation / test puzzles of ``cfg.sudoku`` (generated once, cached as JSONL)."""
    s = cfg.sudoku
    return load_or_generate(
        cache_root(cfg) / "sudoku", s.n_train, s.n_val, s.n_test, tuple(s.givens), s.seed, log
    )


def split_by_solution(pairs: Sequence[SudokuPair], val_fraction: float) -> tuple[list, list]:
    """Train / validation pairs by a stable hash of the solution grid (at least one of each)."""
    return split_by_key(
        list(pairs), lambda p: p.solution, val_fraction, "the puzzle source", "solution"
    )


@FORMATS.register("sudoku")
def prepare_sudoku(
    cfg,
    vocab_size: int,
    seq_len: int,
    use_cache: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> PreparedData:
    """Rows of solved boards with the givens frozen, from the generator or a puzzle source (``vocab_size`` is
    ignored: the vocabulary is fixed; ``seq_len`` must hold 81 cells)."""
    if seq_len < N_CELLS:
        raise DataError(f"model.max_seq_len={seq_len} is shorter than a Sudoku board; set it to 81")
    if cfg.source == GENERATE:
        sp = generated_splits(cfg, log)
        train, val, skipped = sp.train, sp.val, ""
    else:
        report = read_puzzles(cfg.source, cfg.sudoku.max_rows)
        train, val = split_by_solution(report.pairs, cfg.val_fraction)
        skipped = f"; {report.summary()}" if report.bad else ""
    log(
        f"sudoku data: {len(train)} train / {len(val)} validation boards from {cfg.source}{skipped}"
    )
    (xt, ft), (xv, fv) = pairs_to_arrays(train), pairs_to_arrays(val)
    givens = ft.sum(1)
    stats = {
        "train_boards": len(train),
        "val_boards": len(val),
        "givens_min": int(givens.min()),
        "givens_max": int(givens.max()),
        "train_tokens": int(xt.size),
        "val_tokens": int(xv.size),
    }
    return PreparedData(
        sudoku_tokenizer(),
        xt,
        xv,
        stats,
        train_frozen=ft,
        val_frozen=fv,
        augment=AUGMENTS[cfg.sudoku.augment],
    )
