"""``data.source='hf:NAME'``: documents through Hugging Face ``datasets``, into the built-in split / pack pipeline.

NAME is one of

* a named dataset of the paper (``HF_DATASETS``): ``lm1b`` (sequence length 128, ``bert-base-uncased``),
  ``openwebtext`` and ``fineweb-edu`` (length 1024, ``gpt2`` tokenizer, which gets a ``<|mask|>`` token).
  The large ones are streamed and read up to a byte cap (``data.max_train_bytes`` / (1 - val_fraction), or
  the entry's ``default_max_bytes`` of 2 GB when that is unset), so a run never downloads 40 GB by accident;
* ``json:PATH``, ``text:PATH``, ``csv:PATH``, ``parquet:PATH``: local files (a file, a folder or a glob)
  through the ``datasets`` loader of that format; the text column is ``data.text_field``;
* ``OWNER/NAME`` or ``OWNER/NAME:CONFIG``: any Hub dataset's ``train`` split, streamed under the same cap.

Documents get the same names as the built-in reader gives the same files (``file.jsonl:LINE`` for JSON
lines, the relative path for text files), so the hash split, the tokenizer and the packed rows are the same
as with ``data.source=PATH``; ``prepare_data`` caches the packed arrays keyed by ``source_fingerprint``.
Offline (``HF_HUB_OFFLINE=1``) local files work, Hub datasets are read from the local ``datasets`` cache, and
anything missing stops at once with a one-line ``DataError``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import DataError, install_hint
from ..registry import Registry
from .cache import cache_root, files_fingerprint
from .documents import Document, ReadReport, chunk_lines
from .hub import hub_offline, require_hub

LOCAL_FORMATS = ("json", "text", "csv", "parquet")
GB = 1_000_000_000


# --------------------------------------------------------------------------- named datasets


def lm1b_detokenize(text: str) -> str:
    """LM1B ships tokenised text ("it 's a test ."); rejoin punctuation and clitics before re-tokenising."""
    text = re.sub(r" ([.,;:!?%)\]}])", r"\1", text)
    text = re.sub(r"([(\[{$]) ", r"\1", text)
    text = re.sub(r" (n't|'s|'re|'ve|'m|'ll|'d)\b", r"\1", text)
    text = re.sub(r'" ([^"]*?) "', r'"\1"', text)
    return text.replace(" @-@ ", "-").replace(" - ", "-")


@dataclass(frozen=True)
class HFDataset:
    """A named corpus: Hub id / config / split / text column, whether to stream, the byte cap used when
    ``data.max_train_bytes`` is unset, and the paper's tokenizer and sequence length for it."""

    hub_id: str
    config: Optional[str] = None
    split: str = "train"
    text_field: str = "text"
    streaming: bool = False
    default_max_bytes: Optional[int] = None
    tokenizer: Optional[str] = None  # what the paper uses: --set data.tokenizer=...
    seq_len: Optional[int] = None  # ... and --set model.max_seq_len=...
    clean: Optional[Callable[[str], str]] = None


HF_DATASETS: Registry[HFDataset] = Registry("Hugging Face dataset")
HF_DATASETS.register("lm1b")(
    HFDataset("dvruette/lm1b", tokenizer="bert-base-uncased", seq_len=128, clean=lm1b_detokenize)
)
HF_DATASETS.register("openwebtext")(
    HFDataset(
        "Skylion007/openwebtext",
        streaming=True,
        default_max_bytes=2 * GB,
        tokenizer="gpt2",
        seq_len=1024,
    )
)
HF_DATASETS.register("fineweb-edu")(
    HFDataset(
        "HuggingFaceFW/fineweb-edu",
        config="sample-10BT",
        streaming=True,
        default_max_bytes=2 * GB,
        tokenizer="gpt2",
        seq_len=1024,
    )
)


def resolve(name: str, cfg) -> tuple[str, object]:
    """Classify NAME: ``("local", (format, files, root))``, ``("named", HFDataset)`` or ``("hub", HFDataset)``."""
    fmt, _, rest = name.partition(":")
    if fmt in LOCAL_FORMATS and rest:
        files, root = _local_files(rest)
        return "local", (fmt, files, root)
    if name in HF_DATASETS:
        return "named", HF_DATASETS.get(name)
    if "/" in name and not name.startswith((".", "/", "~")):
        hub_id, _, config = name.partition(":")
        return "hub", HFDataset(
            hub_id,
            config=config or None,
            text_field=cfg.text_field,
            streaming=True,
            default_max_bytes=2 * GB,
        )
    raise DataError(
        f"unknown dataset hf:{name}; use one of hf:{', hf:'.join(HF_DATASETS.names())}, "
        f"hf:OWNER/NAME[:CONFIG] for a Hub dataset, or hf:FORMAT:PATH with FORMAT in "
        f"{', '.join(LOCAL_FORMATS)} for local files"
    )


def _local_files(spec: str) -> tuple[list[Path], Path]:
    """Files named by a path, folder or glob, sorted, and the root their document names are relative to."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        root = path
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else path.parent
    if not files:
        raise DataError(
            f"hf data path {spec!r} matches no files; pass an existing file, folder or glob"
        )
    return files, root


# --------------------------------------------------------------------------- reading


def read_hf_dataset(name: str, cfg) -> ReadReport:
    """Documents of ``hf:NAME`` (see the module docstring) as a ``ReadReport`` for ``prepare_data``."""
    kind, spec = resolve(name, cfg)
    datasets = _import_datasets()
    if kind == "local":
        fmt, files, root = spec  # type: ignore[misc]
        return _read_local(datasets, fmt, files, root, cfg)
    return _read_hub(datasets, name, spec, cfg)  # type: ignore[arg-type]


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            "data.source='hf:...' needs the `datasets` package: " + install_hint("hf")
        ) from None
    datasets.disable_progress_bars()
    return datasets


def _read_local(datasets, fmt: str, files: list[Path], root: Path, cfg) -> ReadReport:
    """One ``load_dataset(fmt, data_files=file)`` per file, so every row knows its file and line."""
    report = ReadReport()
    single = len(files) == 1
    for f in files:
        rel = f.name if single else f.relative_to(root).as_posix()
        ds = _load_local(datasets, fmt, f, cfg)
        field = "text" if fmt == "text" else cfg.text_field
        _check_column(ds, field, str(f))
        for i, text in enumerate(ds[field]):
            doc_name = rel if fmt == "text" else f"{rel}:{i + 1}"
            if isinstance(text, str) and text.strip():
                report.documents.append(Document(doc_name, text))
        if fmt == "text" and single and report.documents:
            report.documents = chunk_lines(report.documents[0])  # as the built-in reader does
    return report


def _load_local(datasets, fmt: str, f: Path, cfg):
    """``load_dataset(fmt, data_files=f)``, with a one-line error on a file it cannot read."""
    kwargs = {"sample_by": "document"} if fmt == "text" else {}
    try:
        return datasets.load_dataset(
            fmt,
            data_files=str(f),
            split="train",
            cache_dir=str(cache_root(cfg) / "hf-datasets"),
            **kwargs,
        )
    except Exception as e:  # datasets raises many types on malformed files
        raise DataError(
            f"datasets could not read {str(f)!r} as {fmt} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:100] if str(e) else ''}); check the file or the format"
        ) from None


def _check_column(ds, field: str, where: str) -> None:
    columns = list(ds.column_names or [])
    if field not in columns:
        raise DataError(
            f"{where} has no column {field!r} (columns: {', '.join(columns) or 'none'}); "
            "set data.text_field to the text column"
        )


def max_read_bytes(spec: HFDataset, cfg) -> Optional[int]:
    """How much text to read: enough for ``data.max_train_bytes`` of training text after the validation
    split, else the dataset's default cap (None = all)."""
    if cfg.max_train_bytes is not None:
        return int(cfg.max_train_bytes / (1.0 - cfg.val_fraction) * 1.05) + 1
    return spec.default_max_bytes


def read_hf_rows(name: str, cfg) -> list[tuple[dict, str]]:
    """The rows of ``hf:NAME`` as (JSON object, where) pairs, for row formats (prompt / answer data): NAME is
    ``FORMAT:PATH`` (local files) or ``OWNER/NAME[:CONFIG][@SPLIT]`` (a Hub dataset, read whole; split
    ``train`` unless ``@SPLIT`` names another, e.g. ``hf:openai/gsm8k:main@test``)."""
    name, _, split = name.partition("@") if "/" in name.partition(":")[0] else (name, "", "")
    kind, spec = resolve(name, cfg)
    datasets = _import_datasets()
    if kind == "local":
        fmt, files, root = spec  # type: ignore[misc]
        rows = []
        for f in files:
            ds = _load_local(datasets, fmt, f, cfg)
            rel = f.name if len(files) == 1 else f.relative_to(root).as_posix()
            rows += [(row, f"{rel}:{i + 1}") for i, row in enumerate(ds)]
        return rows
    spec = HFDataset(spec.hub_id, spec.config, split or spec.split)  # type: ignore[union-attr]
    ds = _load_hub(datasets, name, spec, streaming=False)
    return [(row, f"{spec.hub_id}:{spec.split}:{i}") for i, row in enumerate(ds)]


def _read_hub(datasets, name: str, spec: HFDataset, cfg) -> ReadReport:
    ds = _load_hub(datasets, name, spec, spec.streaming)
    if ds.column_names is not None:
        _check_column(ds, spec.text_field, f"dataset {spec.hub_id}")
    return collect(
        _texts(ds, spec.text_field), f"{name}:{spec.split}", max_read_bytes(spec, cfg), spec.clean
    )


def _load_hub(datasets, name: str, spec: HFDataset, streaming: bool):
    """``load_dataset`` of a Hub dataset, with one-line errors offline or when it cannot be loaded."""
    offline = hub_offline()
    if not offline:
        require_hub(f"dataset hf:{name} ({spec.hub_id})")
    # offline: only a fully downloaded copy in the cache can work
    streaming = streaming and not offline
    try:
        return datasets.load_dataset(
            spec.hub_id, spec.config, split=spec.split, streaming=streaming
        )
    except Exception as e:  # ConnectionError, FileNotFoundError, DatasetNotFoundError, ...
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        if offline:
            raise DataError(
                f"dataset hf:{name} ({spec.hub_id}) is not in the local datasets cache and "
                f"HF_HUB_OFFLINE=1 forbids downloading it ({first}); use hf:json:PATH or a local "
                "path, or unset HF_HUB_OFFLINE once online"
            ) from None
        raise DataError(
            f"dataset hf:{name} ({spec.hub_id}) could not be loaded ({first}); check the name "
            "and the network, or use local files"
        ) from None


def _texts(ds, field: str) -> Iterable[str]:
    for row in ds:
        yield row.get(field) if isinstance(row, dict) else None


def collect(
    texts: Iterable[Optional[str]],
    prefix: str,
    max_bytes: Optional[int],
    clean: Optional[Callable[[str], str]] = None,
) -> ReadReport:
    """Documents ``PREFIX:ROW`` from a stream of texts, stopping once ``max_bytes`` of UTF-8 text are read."""
    report, total = ReadReport(), 0
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            continue
        if clean is not None:
            text = clean(text)
        report.documents.append(Document(f"{prefix}:{i}", text))
        total += len(text.encode("utf-8"))
        if max_bytes is not None and total >= max_bytes:
            break
    return report


# --------------------------------------------------------------------------- cache key


def source_fingerprint(name: str, cfg) -> str:
    """What the packed-array cache key must change with: local files' sizes and times, or the dataset entry
    and the byte cap (a Hub dataset's revision is pinned by the datasets cache itself)."""
    kind, spec = resolve(name, cfg)
    h = hashlib.sha256()
    if kind == "local":
        fmt, files, _ = spec  # type: ignore[misc]
        h.update(fmt.encode())
        files_fingerprint(files, h)
    else:
        entry = {k: v for k, v in asdict(spec).items() if k != "clean"}  # type: ignore[arg-type]
        entry["clean"] = getattr(getattr(spec, "clean", None), "__name__", None)
        h.update(json.dumps([kind, entry, max_read_bytes(spec, cfg)], sort_keys=True).encode())  # type: ignore[arg-type]
    return h.hexdigest()
