"""Data, offline by default: documents -> train / validation split -> tokenizer -> packed sequences.

The built-in corpus is the running interpreter's standard library (``*.py`` under
``sysconfig.get_paths()["stdlib"]``, not site-packages): it exists on every machine without a
download. Documents are split by a stable hash of their name, wrapped as ``<bos> doc <eos>`` and
packed into fixed-length rows (MDLM's "wrap"). The same pipeline reads a user's files, folders or
JSONL; tokenization is cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from .config import DataConfig
from .errors import DataError
from .registry import Registry
from .tokenizer import TextTokenizer, train_bpe

LINES_PER_CHUNK = 200  # a single plain-text file is cut into documents of this many lines


@dataclass
class Document:
    name: str  # stable identifier (relative path, or path:line) used for the split hash
    text: str


@dataclass
class ReadReport:
    """Documents read and files skipped, for the user to see. ``skipped`` holds ``"path (reason)"`` strings;
    the reasons are: binary, not UTF-8, UTF-16/32, empty, unreadable, broken link."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def skip(self, path: Path | str, reason: str) -> None:
        self.skipped.append(f"{path} ({reason})")

    def skipped_by_reason(self) -> dict[str, int]:
        """``{"binary": 2, "empty": 1}``: how many files were skipped for each kind of reason."""
        counts: dict[str, int] = {}
        for item in self.skipped:
            reason = item.rsplit(" (", 1)[-1].rstrip(")").split(":")[0]
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def summary(self) -> str:
        """``"3 files skipped (2 binary, 1 empty)"``, or ``""`` when none were."""
        if not self.skipped:
            return ""
        parts = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped_by_reason().items()))
        return f"{len(self.skipped)} file{'s' if len(self.skipped) != 1 else ''} skipped ({parts})"


# --------------------------------------------------------------------------- sources

SOURCES: Registry[Callable[[str, DataConfig], ReadReport]] = Registry("data source")


@SOURCES.register("stdlib")
def read_stdlib(_: str, cfg: DataConfig) -> ReadReport:
    """The interpreter's standard-library ``*.py`` files, sorted by relative path (site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if "site-packages" not in p.parts and "dist-packages" not in p.parts and p.is_file())
    report = ReadReport()
    for p in files:
        _read_file(p, p.relative_to(root).as_posix(), cfg, report)
    return report


@SOURCES.register("path")
def read_path(source: str, cfg: DataConfig) -> ReadReport:
    """A text file, a folder of text files (recursively, hidden files skipped), or a JSONL file."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"data path {source!r} does not exist; pass a file, a folder, a .jsonl file or 'stdlib'")
    report = ReadReport()
    if path.is_dir():
        try:
            entries = sorted(p for p in path.rglob("*")
                             if not any(part.startswith(".") for part in p.relative_to(path).parts))
        except OSError as e:
            raise DataError(f"data folder {source!r} cannot be listed ({e.strerror or e}); "
                            "check its permissions") from None
        files = []
        for p in entries:
            if p.is_symlink() and not p.exists():
                _bad_file(p, "broken link", cfg, report)
            elif p.is_file():
                files.append(p)
        for p in files:
            rel = p.relative_to(path).as_posix()
            if p.suffix == ".jsonl":
                report.documents.extend(_read_jsonl(p, cfg, rel, report))
            else:
                _read_file(p, rel, cfg, report)
    elif not path.is_file():
        raise DataError(f"data path {source!r} is not a regular file or folder (a device or pipe?); "
                        "pass a text file, a folder or a .jsonl file")
    elif path.suffix == ".jsonl":
        report.documents.extend(_read_jsonl(path, cfg, path.name, report))
    else:
        _read_file(path, path.name, cfg, report)
        if report.documents:
            report.documents = _chunk_lines(report.documents[0])
    return report


BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


def decode_text(raw: bytes) -> tuple[Optional[str], Optional[str]]:
    """``(text, None)`` for UTF-8 text (a leading BOM dropped), else ``(None, reason)``: UTF-16/32, binary,
    not UTF-8 (naming the first bad byte)."""
    for bom, name in BOMS.items():
        if raw.startswith(bom):
            return None, f"{name} text, convert it to UTF-8"
    if b"\x00" in raw[:8192]:
        return None, "binary: NUL bytes"
    try:
        return raw.decode("utf-8").removeprefix("\ufeff"), None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}"


def _bad_file(p: Path, reason: str, cfg: DataConfig, report: ReadReport) -> None:
    """Apply ``data.bad_files``: ``error`` stops with the file and reason named, ``skip`` counts it."""
    if cfg.bad_files == "error":
        raise DataError(f"data file {str(p)!r} cannot be used ({reason}); fix or remove it, or set "
                        "data.bad_files=skip to skip such files with a count")
    report.skip(p, reason)


def _read_file(p: Path, name: str, cfg: DataConfig, report: ReadReport) -> None:
    """One text file -> one document; binary / wrong-encoding / unreadable files go through ``data.bad_files``.
    Empty (or whitespace-only) files carry no text: they are counted as skipped in both modes."""
    try:
        raw = p.read_bytes()
    except OSError as e:
        _bad_file(p, f"unreadable: {e.strerror or type(e).__name__}", cfg, report)
        return
    text, problem = decode_text(raw)
    if problem:
        _bad_file(p, problem, cfg, report)
    elif not text.strip():
        report.skip(p, "empty")
    else:
        report.documents.append(Document(name, text))


def _read_jsonl(p: Path, cfg: DataConfig, name: str, report: Optional[ReadReport] = None) -> list[Document]:
    """One document per JSON line's ``data.text_field``. A file that is not UTF-8 text goes through
    ``data.bad_files``; a malformed line always stops with its line number."""
    report = report if report is not None else ReadReport()
    try:
        raw = p.read_bytes()
    except OSError as e:
        _bad_file(p, f"unreadable: {e.strerror or type(e).__name__}", cfg, report)
        return []
    text, problem = decode_text(raw)
    if problem:
        _bad_file(p, problem, cfg, report)
        return []
    docs = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise DataError(f"{p}:{i} is not valid JSON; each line of a .jsonl file must be one JSON object") from None
        if not isinstance(row, dict) or not isinstance(row.get(cfg.text_field), str):
            raise DataError(f"{p}:{i} has no string field {cfg.text_field!r}; set data.text_field to the text column")
        if row[cfg.text_field].strip():
            docs.append(Document(f"{name}:{i}", row[cfg.text_field]))
    if not docs and report is not None:
        report.skip(p, "empty")
    return docs


def _chunk_lines(doc: Document) -> list[Document]:
    lines = doc.text.splitlines(keepends=True)
    return [Document(f"{doc.name}:{i}", "".join(lines[i:i + LINES_PER_CHUNK]))
            for i in range(0, len(lines), LINES_PER_CHUNK)]


def read_documents(cfg: DataConfig) -> ReadReport:
    """Read the documents named by ``cfg.source`` ('stdlib', a path, or 'hf:NAME' with the [hf] extra)."""
    source = cfg.source
    if source.startswith("hf:"):
        try:
            from .hf_data import read_hf_dataset  # optional: needs the `datasets` package
        except ImportError as e:
            raise DataError(f"data.source={source!r} needs the Hugging Face extra ({e.name or e}); "
                            "pip install 'loopmdm[hf]', or use a local path") from None
        report = read_hf_dataset(source[3:], cfg)
    else:
        report = SOURCES.get("stdlib" if source == "stdlib" else "path")(source, cfg)
    if not report.documents:
        skipped = report.summary() or "no files skipped"
        raise DataError(f"no text found in data source {source!r}: {skipped}; point data.source at UTF-8 text files")
    return report


# --------------------------------------------------------------------------- split and pack

def stable_fraction(name: str) -> float:
    """A number in [0, 1) from a document's name, identical on every machine and Python version."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Train / validation split by the stable hash of each document's name; each split non-empty."""
    if len(docs) < 2:
        raise DataError(f"the corpus has {len(docs)} document; need at least 2 to split train / validation")
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


def pack(token_lists: Iterable[list[int]], seq_len: int, bos_id: Optional[int], eos_id: Optional[int]) -> np.ndarray:
    """Wrap every document as [bos] + ids + [eos], concatenate, and cut into rows [N, seq_len] (remainder dropped)."""
    pieces = []
    for ids in token_lists:
        row = ([bos_id] if bos_id is not None else []) + list(ids) + ([eos_id] if eos_id is not None else [])
        pieces.append(np.asarray(row, dtype=np.int32))
    flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    n = len(flat) // seq_len
    return flat[: n * seq_len].reshape(n, seq_len)


# --------------------------------------------------------------------------- the prepared dataset

@dataclass
class PreparedData:
    """Tokenizer plus packed train / validation rows [N, L] (int32) and a few counts."""

    tokenizer: TextTokenizer
    train: np.ndarray
    val: np.ndarray
    stats: dict

    @property
    def bytes_per_token(self) -> float:
        return self.stats.get("val_bytes", 0) / max(self.stats.get("val_tokens", 1), 1)


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir or os.environ.get("LOOPMDM_CACHE", Path.home() / ".cache" / "loopmdm")).expanduser()


def _fingerprint(cfg: DataConfig, vocab_size: int, seq_len: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([cfg.source, cfg.text_field, cfg.val_fraction, cfg.max_train_bytes, cfg.tokenizer,
                         cfg.bad_files, vocab_size, seq_len, LINES_PER_CHUNK, 2]).encode())
    if cfg.source == "stdlib":
        h.update(sysconfig.get_paths()["stdlib"].encode())
        root = Path(sysconfig.get_paths()["stdlib"])
        for p in sorted(root.rglob("*.py")):
            if "site-packages" not in p.parts:
                h.update(f"{p.relative_to(root)}:{p.stat().st_size}".encode())
    elif cfg.source.startswith("hf:"):
        from .hf_data import source_fingerprint  # local files' stats, or the dataset entry and byte cap

        h.update(source_fingerprint(cfg.source[3:], cfg).encode())
    else:
        path = Path(cfg.source).expanduser()
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
        for p in files:
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def prepare_data(cfg: DataConfig, vocab_size: int, seq_len: int, use_cache: bool = True,
                 log: Callable[[str], None] = lambda s: None) -> PreparedData:
    """Read, split, tokenize (training a BPE of ``vocab_size`` unless ``cfg.tokenizer`` names one) and pack.
    Results are cached under ``cache_root(cfg)`` keyed by a fingerprint of the source and settings."""
    key = _fingerprint(cfg, vocab_size, seq_len)
    folder = cache_root(cfg) / "data" / key
    if use_cache and (folder / "meta.json").is_file():
        try:
            return PreparedData(
                TextTokenizer.load(folder / "tokenizer.json"),
                np.load(folder / "train.npy", allow_pickle=False),
                np.load(folder / "val.npy", allow_pickle=False),
                json.loads((folder / "meta.json").read_text()),
            )
        except (OSError, ValueError, DataError):
            log(f"data cache {folder} unreadable; rebuilding it")
    report = read_documents(cfg)
    train_docs, val_docs = split_documents(report.documents, cfg.val_fraction)
    train_docs = cap_bytes(train_docs, cfg.max_train_bytes)
    skipped = f", {report.summary()} (data.bad_files={cfg.bad_files}), e.g. {report.skipped[0]}" \
        if report.skipped else ""
    log(f"{len(train_docs)} train / {len(val_docs)} validation documents{skipped}")
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else train_bpe((d.text for d in train_docs), vocab_size)
    train = pack(tokenizer.encode_batch([d.text for d in train_docs]), seq_len, tokenizer.bos_id, tokenizer.eos_id)
    val_ids = tokenizer.encode_batch([d.text for d in val_docs])
    val = pack(val_ids, seq_len, tokenizer.bos_id, tokenizer.eos_id)
    if len(train) == 0 or len(val) == 0:
        raise DataError(
            f"the corpus is too small: {len(train)} train / {len(val)} validation rows of length {seq_len}; "
            "add text or lower model.max_seq_len"
        )
    stats = {
        "train_docs": len(train_docs), "val_docs": len(val_docs), "skipped_files": len(report.skipped),
        "skipped_by_reason": report.skipped_by_reason(),
        "train_tokens": int(train.size), "val_tokens": int(val.size),
        "val_bytes": int(sum(len(d.text.encode("utf-8")) for d in val_docs) * val.size
                         / max(sum(len(x) + 2 for x in val_ids), 1)),
    }
    if use_cache:
        _write_cache(folder, tokenizer, train, val, stats)
    return PreparedData(tokenizer, train, val, stats)


def load_tokenizer(name_or_path: str) -> TextTokenizer:
    """A tokenizer from a local ``tokenizer.json`` / folder, or a Hugging Face Hub name (needs the network)."""
    from .hub import tokenizer_from_hub  # local tokenizer.json / folders (also vocab.txt, merges.txt) and Hub ids

    return tokenizer_from_hub(name_or_path)


def _write_cache(folder: Path, tokenizer: TextTokenizer, train: np.ndarray, val: np.ndarray, stats: dict) -> None:
    """Write into a temporary sibling folder, then rename: a killed run never leaves a half-written cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        tokenizer.save(tmp / "tokenizer.json")
        np.save(tmp / "train.npy", train)
        np.save(tmp / "val.npy", val)
        (tmp / "meta.json").write_text(json.dumps(stats))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # the cache is an optimisation: never fail a run over it
