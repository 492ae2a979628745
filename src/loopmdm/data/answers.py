"""The ``answers`` data format: prompt / answer and infill rows for conditional masked diffusion (supervised
fine-tuning, reasoning tasks), the way LLaDA and Dream train SFT data: only answer tokens are masked and scored.

A JSONL row is either

    {"prompt": "k=3;b=k+q;q=7?b", "answer": "0", "depth": 2}          # the answer follows the prompt
    {"text": "k=3:3;b=k+q:0;q=7:7", "targets": [[4, 5], [12, 13], [18, 19]]}   # infill: answer spans in the text

(field names set by ``data.answers``; ``targets`` are character offsets, half-open, sorted, non-overlapping).
A row becomes segments of text, each given (prompt) or a target; each segment is tokenized on its own, so a
target never shares a token with its context. The row is padded on the right with the pad token up to the
model window (``model.max_seq_len``); no packing across rows. Given tokens and padding are ``frozen``: never
masked, never scored; the pads are fixed, identical at training and evaluation (every row is padded to the same
window), so they carry no information. Integer fields (``depth``, ``size``) are kept for ``--group-by``.

Tokenizers: ``char`` (one token per character, built from the training file, saved with every checkpoint like
any tokenizer), ``bpe`` (a byte-level BPE of ``model.vocab_size`` trained on the training rows), or
``data.tokenizer`` (a ``tokenizer.json`` or a Hub name, e.g. for a GSM8K fine-tune of a pre-trained model).

``data.source`` is a ``.jsonl`` file (validation: ``data.answers.val_source``, else a stable-hash split of the
rows by ``data.val_fraction``), a folder holding ``train.jsonl`` and ``val.jsonl`` (what ``loopmdm task make``
writes), or ``hf:...``, rows read through Hugging Face ``datasets`` (the ``[hf]`` extra): a Hub dataset
``hf:OWNER/NAME[:CONFIG][@SPLIT]`` or local files ``hf:json:PATH`` (``loopmdm.data.hf.read_hf_rows``). GSM8K:

    data.source=hf:openai/gsm8k:main  data.answers.prompt_field=question
    data.answers.val_source=hf:openai/gsm8k:main@test  data.answers.tokenizer=bpe  model.vocab_size=8192
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from ..errors import ConfigError, DataError
from .documents import decode_text, jsonl_objects
from .formats import FORMATS, PreparedData
from .packing import split_by_key
from .text import load_tokenizer
from .tokenizer import SPECIALS, TextTokenizer, train_bpe

UNK = "<unk>"


@dataclass
class AnswerRow:
    """One example as segments ``(text, is_target)`` in order, the JSON object it came from (its other fields:
    ``depth``, ``task``, ...) and where (``file:line``)."""

    segments: list[tuple[str, bool]]
    raw: dict = field(default_factory=dict)
    where: str = ""

    @property
    def context(self) -> str:
        """The given text with each target replaced by a marker: the row's identity for overlap checks."""
        return "\x00".join(s if not tgt else "" for s, tgt in self.segments)

    @property
    def answer(self) -> str:
        """The target segments joined with a space (one string for exact match)."""
        return " ".join(s for s, tgt in self.segments if tgt)

    @property
    def text(self) -> str:
        return "".join(s for s, _ in self.segments)


# --------------------------------------------------------------------------- reading rows


def _segments_from_spans(text: str, spans, where: str) -> list[tuple[str, bool]]:
    if not isinstance(spans, list) or not spans:
        raise DataError(
            f"{where}: targets must be a non-empty list of [start, end] character spans"
        )
    out, pos = [], 0
    for sp in spans:
        ok = isinstance(sp, (list, tuple)) and len(sp) == 2 and all(type(v) is int for v in sp)
        if not ok:
            raise DataError(f"{where}: target {sp!r} is not a [start, end] pair of integers")
        a, b = sp
        if not 0 <= a < b <= len(text):
            raise DataError(
                f"{where}: target [{a}, {b}] is out of range for a text of {len(text)} characters "
                "(spans are half-open character offsets with start < end)"
            )
        if a < pos:
            raise DataError(
                f"{where}: target [{a}, {b}] overlaps or precedes the previous one; sort the spans "
                "and make them disjoint"
            )
        if a > pos:
            out.append((text[pos:a], False))
        out.append((text[a:b], True))
        pos = b
    if pos < len(text):
        out.append((text[pos:], False))
    return out


def parse_row(row, acfg, text_field: str, where: str) -> AnswerRow:
    """A JSON object -> ``AnswerRow`` (prompt / answer or text / targets), with one-line errors naming the row."""
    parsed = _parse_row(row, acfg, text_field, where)
    for text, _ in parsed.segments:
        _check_unicode(text, where)
    return parsed


def _check_unicode(text: str, where: str) -> None:
    """JSON can spell a lone surrogate (``"\\ud800"``), which is no character: no tokenizer or file takes it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            f"{where} holds a lone surrogate U+{ord(text[e.start]):04X} (a \\uD800-\\uDFFF escape without "
            "its pair), which is not text; fix or drop the row"
        ) from None


def _parse_row(row, acfg, text_field: str, where: str) -> AnswerRow:
    if not isinstance(row, dict):
        raise DataError(
            f"{where} is not a JSON object; each line must be an object such as "
            f'{{"{acfg.prompt_field}": "...", "{acfg.answer_field}": "..."}}'
        )
    if acfg.answer_field in row:
        prompt, answer = row.get(acfg.prompt_field, ""), row[acfg.answer_field]
        if not isinstance(prompt, str) or not isinstance(answer, str):
            raise DataError(
                f"{where}: {acfg.prompt_field!r} and {acfg.answer_field!r} must be strings"
            )
        if not answer:
            raise DataError(
                f"{where}: the answer is empty; every row needs at least one answer character"
            )
        return AnswerRow(
            [(prompt, False), (answer, True)] if prompt else [(answer, True)], row, where
        )
    if acfg.targets_field in row and isinstance(row.get(text_field), str):
        return AnswerRow(
            _segments_from_spans(row[text_field], row[acfg.targets_field], where), row, where
        )
    raise DataError(
        f"{where} has neither {acfg.prompt_field!r} / {acfg.answer_field!r} nor {text_field!r} / "
        f"{acfg.targets_field!r}; set data.answers.prompt_field / answer_field / targets_field or "
        "data.text_field to the row's field names"
    )


def read_rows(
    path: str | Path, acfg, text_field: str = "text", limit: Optional[int] = None
) -> list[AnswerRow]:
    """Every row of a JSONL file (UTF-8; blank lines skipped) as ``AnswerRow``s."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(
            f"answer file {str(path)!r} does not exist or is not a file; pass a .jsonl file of "
            "prompt / answer or text / targets rows"
        )
    text, problem = decode_text(p.read_bytes())
    if problem:
        raise DataError(
            f"answer file {str(path)!r} is not UTF-8 text ({problem}); save it as UTF-8"
        )
    rows = []
    for i, obj in jsonl_objects(text, p):
        rows.append(parse_row(obj, acfg, text_field, f"{p}:{i}"))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"answer file {str(path)!r} holds no rows")
    return rows


def rows_of(source: str, cfg, limit: Optional[int] = None) -> list[AnswerRow]:
    """The rows (the first ``limit``) of a .jsonl file, or of ``hf:...`` (a Hugging Face dataset, or local files
    through ``datasets``); ``cfg``: the data config (``answers``, ``text_field``)."""
    if not source.startswith("hf:"):
        return read_rows(source, cfg.answers, cfg.text_field, limit)
    from .hf import read_hf_rows

    found = read_hf_rows(source[3:], cfg)[:limit]
    rows = [parse_row(obj, cfg.answers, cfg.text_field, w) for obj, w in found]
    if not rows:
        raise DataError(f"data source {source!r} holds no rows")
    return rows


def source_files(source: str, acfg) -> tuple[Path | str, Optional[Path | str]]:
    """(training file, validation file or None) of ``data.source`` for this format; an ``hf:`` source and
    ``val_source`` are returned as they are (``rows_of`` reads them)."""
    if source.startswith("hf:"):
        return source, acfg.val_source
    p = Path(source).expanduser()
    if p.is_dir():
        train, val = p / "train.jsonl", p / "val.jsonl"
        if not train.is_file():
            raise DataError(
                f"data folder {source!r} has no train.jsonl; point data.source at a .jsonl file or "
                "a folder written by `loopmdm task make`"
            )
        return train, Path(acfg.val_source).expanduser() if acfg.val_source else (
            val if val.is_file() else None
        )
    if not p.is_file():
        raise DataError(
            f"data.source={source!r} does not exist; the answers format reads a .jsonl file or a "
            "folder with train.jsonl"
        )
    return p, Path(acfg.val_source).expanduser() if acfg.val_source else None


# --------------------------------------------------------------------------- tokenizers and encoding


def char_tokenizer(texts: Sequence[str]) -> TextTokenizer:
    """One token per character seen in ``texts`` (sorted), after the special tokens and ``<unk>``."""
    chars = sorted({c for t in texts for c in t})
    vocab = {tok: i for i, tok in enumerate([*SPECIALS.values(), UNK, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([*SPECIALS.values(), UNK])
    return TextTokenizer(tok)


def is_char_tokenizer(tokenizer: TextTokenizer) -> bool:
    return tokenizer.tok.token_to_id(UNK) is not None and isinstance(
        tokenizer.tok.model, models.WordLevel
    )


def unknown_characters(text: str, tokenizer: TextTokenizer) -> str:
    """The characters of ``text`` (sorted, once each) that a character-level tokenizer has never seen and would
    turn into ``<unk>``; '' for other tokenizers."""
    if not is_char_tokenizer(tokenizer):
        return ""
    vocab = tokenizer.tok.get_vocab()
    return "".join(sorted({c for c in text if c not in vocab}))


def check_characters(rows: Sequence[AnswerRow], tokenizer: TextTokenizer) -> None:
    """A one-line error naming characters a character-level tokenizer has never seen (and a row with them)."""
    for r in rows:
        unknown = unknown_characters(r.text, tokenizer)
        if unknown:
            raise DataError(
                f"{r.where}: characters {unknown!r} are not in the model's character "
                "vocabulary (built from its training file); remove them or retrain with rows that "
                "contain them"
            )


def pad_id_of(tokenizer: TextTokenizer) -> int:
    if tokenizer.pad_id is not None:
        return tokenizer.pad_id
    if tokenizer.eos_id is not None:
        return tokenizer.eos_id
    raise ConfigError(
        "the tokenizer has neither a pad nor an EOS token to pad answer rows with; add '<pad>'"
    )


def encode_rows(
    rows: Sequence[AnswerRow], tokenizer: TextTokenizer, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [N, length] (int32) and target flags [N, length] (bool); each segment tokenized on its own,
    each row right-padded to ``length``. A row longer than ``length`` is a one-line error giving its length."""
    pad = pad_id_of(tokenizer)
    flat = [s for r in rows for s, _ in r.segments]
    enc = iter(tokenizer.encode_batch(flat)) if flat else iter(())
    ids = np.full((len(rows), length), pad, dtype=np.int32)
    target = np.zeros((len(rows), length), dtype=bool)
    for i, r in enumerate(rows):
        pieces = [(next(enc), tgt) for _, tgt in r.segments]
        n = sum(len(p) for p, _ in pieces)
        if n > length:
            raise DataError(
                f"{r.where} is {n} tokens long but model.max_seq_len={length}; set "
                f"model.max_seq_len >= {n} (the longest row) or shorten the row"
            )
        pos = 0
        for p, tgt in pieces:
            if tgt and not p:
                raise DataError(
                    f"{r.where}: a target span encodes to no tokens; give it visible characters"
                )
            ids[i, pos : pos + len(p)] = p
            target[i, pos : pos + len(p)] = tgt
            pos += len(p)
    return ids, target


def longest_row(rows: Sequence[AnswerRow], tokenizer: TextTokenizer) -> int:
    flat = [s for r in rows for s, _ in r.segments]
    lens = iter(len(e) for e in tokenizer.encode_batch(flat))
    return max(sum(next(lens) for _ in r.segments) for r in rows)


def build_tokenizer(cfg, rows: Sequence[AnswerRow], vocab_size: int) -> TextTokenizer:
    """``data.tokenizer`` when set, else the ``data.answers.tokenizer`` kind built from the training rows."""
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    texts = [r.text for r in rows]
    return (
        char_tokenizer(texts) if cfg.answers.tokenizer == "char" else train_bpe(texts, vocab_size)
    )


@FORMATS.register("answers")
def prepare_answers(
    cfg,
    vocab_size: int,
    seq_len: int,
    use_cache: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> PreparedData:
    """Training / validation rows of prompt / answer or infill data, padded to the model window ``seq_len``, with
    everything but the answer tokens frozen (``vocab_size``: the size of a BPE to train; the cache is not used:
    these files are small and encode in seconds)."""
    train_file, val_file = source_files(cfg.source, cfg.answers)
    rows = rows_of(str(train_file), cfg)
    if val_file is None:
        train_rows, val_rows = split_by_key(
            rows,
            lambda r: r.context,
            cfg.val_fraction,
            "the answer file (set data.answers.val_source or add rows)",
            "prompt / text",
        )
    else:
        train_rows, val_rows = rows, rows_of(str(val_file), cfg)
    tokenizer = build_tokenizer(cfg, train_rows, vocab_size)
    check_characters(val_rows, tokenizer)
    xt, tt = encode_rows(train_rows, tokenizer, seq_len)
    xv, tv = encode_rows(val_rows, tokenizer, seq_len)
    longest = max(longest_row(train_rows, tokenizer), longest_row(val_rows, tokenizer))
    log(
        f"answers data: {len(train_rows)} train / {len(val_rows)} validation rows from {cfg.source}; longest "
        f"{longest} tokens, padded to {seq_len}; {tt.sum(1).mean():.1f} answer tokens per row"
    )
    stats = {
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "longest_row": longest,
        "answer_tokens_per_row": float(tt.sum(1).mean()),
        "train_tokens": int(xt.size),
        "val_tokens": int(xv.size),
        "train_file": str(train_file),
        "val_file": None if val_file is None else str(val_file),
    }
    return PreparedData(tokenizer, xt, xv, stats, train_frozen=~tt, val_frozen=~tv)
