"""Bad data files: binary, wrong encodings, empty, unreadable, broken links, devices. ``data.bad_files=skip``
counts them by reason and goes on; ``error`` stops with the file and the reason named."""

import errno
from pathlib import Path

import pytest

from loopmdm.config import DataConfig
from loopmdm.data import decode_text, prepare_data, read_documents
from loopmdm.errors import DataError

GOOD = "def f(x):\n    return x + 1\n" * 20


@pytest.fixture
def messy(tmp_path):
    root = tmp_path / "messy"
    root.mkdir()
    (root / "a.py").write_text(GOOD)
    (root / "b.py").write_text(GOOD.replace("f", "g"))
    # UTF-8 with a BOM: fine, BOM dropped
    (root / "bom.py").write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (root / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1") * 10)
    (root / "wide.txt").write_bytes("hello\n".encode("utf-16"))
    (root / "empty.py").write_text("")
    (root / "blank.py").write_text("  \n\n")
    (root / "rows.jsonl").write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
    (root / "dead").symlink_to(tmp_path / "nowhere")
    (root / ".hidden.bin").write_bytes(b"\x00" * 10)  # hidden files are not read at all
    return root


def test_skip_counts_every_bad_file_by_reason(messy):
    r = read_documents(DataConfig(source=str(messy)))
    assert sorted(d.name for d in r.documents) == ["a.py", "b.py", "bom.py"]
    assert not r.documents[2].text.startswith("\ufeff")
    assert r.skipped_by_reason() == {
        "binary": 1,
        "not UTF-8": 2,
        "UTF-16 text, convert it to UTF-8": 1,
        "empty": 2,
        "broken link": 1,
    }
    assert r.summary() == (
        "7 files skipped (1 UTF-16 text, convert it to UTF-8, 1 binary, 1 broken link, 2 empty, "
        "2 not UTF-8)"
    )


@pytest.mark.parametrize(
    "name,reason",
    [
        ("blob.bin", "binary: NUL bytes"),
        ("latin.txt", "not UTF-8: byte 0xe9 at offset 3"),
        ("wide.txt", "UTF-16 text"),
        ("rows.jsonl", "not UTF-8: byte 0xe9"),
        ("dead", "broken link"),
    ],
)
def test_error_mode_names_the_file_and_reason(messy, name, reason):
    for other in ("blob.bin", "latin.txt", "wide.txt", "rows.jsonl", "dead"):
        if other != name:
            (messy / other).unlink()
    with pytest.raises(
        DataError, match=f"{name}' cannot be used \\({reason}.*data.bad_files=skip"
    ) as e:
        read_documents(DataConfig(source=str(messy), bad_files="error"))
    assert "\n" not in str(e.value)


def test_empty_files_never_stop_a_run(messy):
    for f in ("blob.bin", "latin.txt", "wide.txt", "rows.jsonl", "dead"):
        (messy / f).unlink()
    r = read_documents(DataConfig(source=str(messy), bad_files="error"))
    assert len(r.documents) == 3 and r.skipped_by_reason() == {"empty": 2}


def test_unreadable_file(messy, monkeypatch):
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "b.py":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    for f in ("blob.bin", "latin.txt", "wide.txt", "rows.jsonl", "dead"):
        (messy / f).unlink()
    monkeypatch.setattr(Path, "read_bytes", read_bytes)  # root ignores chmod, so simulate EACCES
    r = read_documents(DataConfig(source=str(messy)))
    assert r.skipped_by_reason() == {"unreadable": 1, "empty": 2}
    assert "b.py (unreadable: Permission denied)" in " ".join(r.skipped)
    with pytest.raises(DataError, match=r"b.py' cannot be used \(unreadable: Permission denied\)"):
        read_documents(DataConfig(source=str(messy), bad_files="error"))


def test_single_bad_sources(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="no text found .*: 1 file skipped \\(1 empty\\)"):
        read_documents(DataConfig(source=str(empty)))
    with pytest.raises(DataError, match="not a regular file or folder"):
        read_documents(DataConfig(source="/dev/null"))
    with pytest.raises(DataError, match="does not exist"):
        read_documents(DataConfig(source=str(tmp_path / "missing.txt")))


def test_prepare_data_reports_skips(messy, tmp_path):
    logs = []
    data = prepare_data(
        DataConfig(source=str(messy), val_fraction=0.34, cache_dir=str(tmp_path / "c")),
        300,
        16,
        log=logs.append,
    )
    assert data.stats["skipped_files"] == 7 and data.stats["skipped_by_reason"]["empty"] == 2
    assert any("7 files skipped" in line and "data.bad_files=skip" in line for line in logs)


@pytest.mark.parametrize(
    "raw,text,problem",
    [
        (b"plain", "plain", None),
        (b"\xef\xbb\xbfbom", "bom", None),
        (b"\xff\xfe\x00\x00x\x00\x00\x00", None, "UTF-32"),
        (b"\xfe\xffx", None, "UTF-16"),
        (b"a\x00b", None, "binary"),
        (b"\xc3\x28", None, "not UTF-8: byte 0xc3 at offset 0"),
    ],
)
def test_decode_text(raw, text, problem):
    got, why = decode_text(raw)
    assert (
        got == text and (problem is None) == (why is None) and (problem is None or problem in why)
    )
