"""Documents: reading text files and JSONL lines into ``Document``s, with a report of what was skipped.

Files that are not UTF-8 text (binary, UTF-16/32, undecodable) go through ``data.bad_files`` (skip with a count,
or stop naming the file); a malformed JSONL line always stops with its line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from ..errors import DataError

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

BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


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


def bad_file(p: Path, reason: str, cfg, report: ReadReport) -> None:
    """Apply ``data.bad_files``: ``error`` stops with the file and reason named, ``skip`` counts it."""
    if cfg.bad_files == "error":
        raise DataError(
            f"data file {str(p)!r} cannot be used ({reason}); fix or remove it, or set "
            "data.bad_files=skip to skip such files with a count"
        )
    report.skip(p, reason)


def read_file(p: Path, name: str, cfg, report: ReadReport) -> None:
    """One text file -> one document; binary / wrong-encoding / unreadable files go through ``data.bad_files``.
    Empty (or whitespace-only) files carry no text: they are counted as skipped in both modes."""
    try:
        raw = p.read_bytes()
    except OSError as e:
        bad_file(p, f"unreadable: {e.strerror or type(e).__name__}", cfg, report)
        return
    text, problem = decode_text(raw)
    if problem:
        bad_file(p, problem, cfg, report)
    elif not text.strip():
        report.skip(p, "empty")
    else:
        report.documents.append(Document(name, text))


def jsonl_objects(text: str, where) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON value) of every non-blank line of a JSONL text; a line that is not JSON stops
    with a one-line ``DataError`` naming ``where:line``."""
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or a number past int's 4300-digit limit
            raise DataError(
                f"{where}:{i} is not valid JSON; each line of a .jsonl file must be one JSON object"
            ) from None


def read_jsonl(p: Path, cfg, name: str, report: Optional[ReadReport] = None) -> list[Document]:
    """One document per JSON line's ``data.text_field``. A file that is not UTF-8 text goes through
    ``data.bad_files``; a malformed line always stops with its line number."""
    report = report if report is not None else ReadReport()
    try:
        raw = p.read_bytes()
    except OSError as e:
        bad_file(p, f"unreadable: {e.strerror or type(e).__name__}", cfg, report)
        return []
    text, problem = decode_text(raw)
    if problem:
        bad_file(p, problem, cfg, report)
        return []
    docs = []
    for i, row in jsonl_objects(text, p):
        spans = answer_fields(row, getattr(cfg, "answers", None))
        if spans:
            raise DataError(
                f"{p}:{i} is an answers row (fields {', '.join(spans)}), which the text format would train on "
                "as plain text; train on it with --set data.format=answers"
            )
        if not isinstance(row, dict) or not isinstance(row.get(cfg.text_field), str):
            raise DataError(
                f"{p}:{i} has no string field {cfg.text_field!r}; set data.text_field to the text column"
            )
        if row[cfg.text_field].strip():
            docs.append(Document(f"{name}:{i}", row[cfg.text_field]))
    if not docs and report is not None:
        report.skip(p, "empty")
    return docs


def answer_fields(row, acfg) -> list[str]:
    """The ``data.answers`` fields that make ``row`` a prompt / answer or text / targets row ([] if none)."""
    if acfg is None or not isinstance(row, dict):
        return []
    if acfg.targets_field in row:
        return [acfg.targets_field]
    pair = [acfg.prompt_field, acfg.answer_field]
    return pair if all(f in row for f in pair) else []


def chunk_lines(doc: Document) -> list[Document]:
    """A single plain-text file cut into documents of ``LINES_PER_CHUNK`` lines (named ``file:first_line``)."""
    lines = doc.text.splitlines(keepends=True)
    return [
        Document(f"{doc.name}:{i}", "".join(lines[i : i + LINES_PER_CHUNK]))
        for i in range(0, len(lines), LINES_PER_CHUNK)
    ]
