"""Where documents come from, behind the ``SOURCES`` registry: ``stdlib`` (the running interpreter's standard
library, offline on every machine), ``path`` (a text file, a folder, a ``.jsonl`` file) and ``hf`` (``hf:NAME``:
Hugging Face datasets, local or Hub, see ``loopmdm.data.hf``).

``data.source`` picks one: its text before the first ``:`` when that names a source (``hf:openwebtext``), the
whole value when it does (``stdlib``), otherwise a path. Each source reads ``Document``s and gives the
fingerprint a cache of its content must change with.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

from ..errors import DataError
from ..fileio import path_kind
from ..registry import Registry
from . import hf
from .cache import files_fingerprint
from .documents import ReadReport, bad_file, chunk_lines, read_file, read_jsonl


class Source:
    """``read(spec, cfg)`` -> ReadReport; ``fingerprint(spec, cfg)`` -> str. ``spec`` is ``data.source`` without
    the source's ``name:`` prefix."""

    def read(self, spec: str, cfg) -> ReadReport:
        raise NotImplementedError

    def fingerprint(self, spec: str, cfg) -> str:
        raise NotImplementedError


SOURCES: Registry[type[Source]] = Registry("data source")


def _stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and "dist-packages" not in p.parts and p.is_file()
    )
    return root, files


@SOURCES.register("stdlib")
class StdlibSource(Source):
    """The interpreter's standard-library ``*.py`` files, sorted by relative path (site-packages excluded)."""

    def read(self, spec, cfg):
        root, files = _stdlib_files()
        report = ReadReport()
        for p in files:
            read_file(p, p.relative_to(root).as_posix(), cfg, report)
        return report

    def fingerprint(self, spec, cfg):
        root, files = _stdlib_files()
        h = hashlib.sha256(str(root).encode())
        for p in files:
            h.update(f"{p.relative_to(root)}:{p.stat().st_size}".encode())
        return h.hexdigest()


@SOURCES.register("path")
class PathSource(Source):
    """A text file (cut into chunks of lines), a folder of text files (recursively, hidden files skipped), or a
    JSONL file (one document per line's ``data.text_field``)."""

    def read(self, spec, cfg):
        path = Path(spec).expanduser()
        kind = path_kind(path)
        if kind is None:
            raise DataError(
                f"data path {spec!r} does not exist; pass a file, a folder, a .jsonl file or 'stdlib'"
            )
        if kind not in ("a file", "a folder"):
            raise DataError(
                f"data path {spec!r} is {kind}, not a regular file or folder; pass a file, a folder, "
                "a .jsonl file or 'stdlib'"
            )
        report = ReadReport()
        if path.is_dir():
            for p, rel in self._folder_files(path, spec, cfg, report):
                if p.suffix == ".jsonl":
                    report.documents.extend(read_jsonl(p, cfg, rel, report))
                else:
                    read_file(p, rel, cfg, report)
        elif not path.is_file():
            raise DataError(
                f"data path {spec!r} is not a regular file or folder (a device or pipe?); "
                "pass a text file, a folder or a .jsonl file"
            )
        elif path.suffix == ".jsonl":
            report.documents.extend(read_jsonl(path, cfg, path.name, report))
        else:
            read_file(path, path.name, cfg, report)
            if report.documents:
                report.documents = chunk_lines(report.documents[0])
        return report

    @staticmethod
    def _folder_files(path: Path, spec: str, cfg, report: ReadReport) -> list[tuple[Path, str]]:
        try:
            entries = sorted(
                p
                for p in path.rglob("*")
                if not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        except OSError as e:
            raise DataError(
                f"data folder {spec!r} cannot be listed ({e.strerror or e}); check its permissions"
            ) from None
        files = []
        for p in entries:
            if p.is_symlink() and not p.exists():
                bad_file(p, "broken link", cfg, report)
            elif p.is_file():
                files.append((p, p.relative_to(path).as_posix()))
        return files

    def fingerprint(self, spec, cfg):
        path = Path(spec).expanduser()
        files = (
            [path]
            if path.is_file()
            else sorted(p for p in path.rglob("*") if p.is_file())
            if path.exists()
            else []
        )
        return files_fingerprint(files)


@SOURCES.register("hf")
class HFSource(Source):
    """``hf:NAME``: a named corpus, any Hub dataset, or local files through ``datasets`` (``loopmdm.data.hf``)."""

    def read(self, spec, cfg):
        if not spec.strip():
            raise DataError("data.source='hf:' names no dataset; use hf:NAME, e.g. hf:openwebtext")
        return hf.read_hf_dataset(spec, cfg)

    def fingerprint(self, spec, cfg):
        return hf.source_fingerprint(spec, cfg)


def resolve_source(source: str) -> tuple[Source, str]:
    """The source that reads ``data.source`` and the rest of the string it gets."""
    prefix, sep, rest = source.partition(":")
    if sep and prefix in SOURCES and prefix != "path":
        return SOURCES.get(prefix)(), rest
    if source in SOURCES and source != "path":
        return SOURCES.get(source)(), ""
    return SOURCES.get("path")(), source


def read_documents(cfg) -> ReadReport:
    """Read the documents ``cfg.source`` names; a source with no text stops with a one-line ``DataError``."""
    source, spec = resolve_source(cfg.source)
    report = source.read(spec, cfg)
    if not report.documents:
        skipped = report.summary() or "no files skipped"
        raise DataError(
            f"no text found in data source {cfg.source!r}: {skipped}; point data.source at UTF-8 "
            "text files"
        )
    return report


def source_fingerprint(cfg) -> str:
    source, spec = resolve_source(cfg.source)
    return source.fingerprint(spec, cfg)
