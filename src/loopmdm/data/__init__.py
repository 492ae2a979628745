"""Data, offline by default: sources (the built-in standard-library corpus, files, folders, JSONL, ``hf:``
datasets), formats that turn them into rows (``text``: tokenizer + packing; ``sudoku``: boards with frozen
givens; ``answers``: prompt / answer and infill rows), tokenizers, and the on-disk cache.
``prepare_data(cfg.data, vocab_size, seq_len)`` is the entry point.
"""

from .answers import char_tokenizer, read_rows
from .cache import cache_root
from .documents import Document, ReadReport, decode_text
from .formats import FORMATS, PreparedData
from .packing import cap_bytes, pack, split_documents, stable_fraction
from .prepare import prepare_data
from .sources import SOURCES, read_documents
from .text import load_tokenizer
from .tokenizer import TextTokenizer, train_bpe

__all__ = [
    "prepare_data",
    "PreparedData",
    "FORMATS",
    "SOURCES",
    "read_documents",
    "Document",
    "ReadReport",
    "decode_text",
    "pack",
    "split_documents",
    "cap_bytes",
    "stable_fraction",
    "cache_root",
    "TextTokenizer",
    "train_bpe",
    "load_tokenizer",
    "char_tokenizer",
    "read_rows",
]
