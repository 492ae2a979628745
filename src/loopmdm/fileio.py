"""File I/O the library relies on: atomic writes (readers see the old or the new content, never a partial
file), fsync, checksums, JSON that every reader can parse (NaN -> null), and short reasons for OS errors."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """fsync a folder (so a rename inside it survives a crash); silently skipped where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with Python file I/O (errors such as ENOSPC surface here), then fsync."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text to ``path`` atomically (UTF-8, ``atomic_write_bytes``)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary sibling, fsync, ``os.replace``, fsync of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def jsonable(x: Any) -> Any:
    """``x`` with NaN / inf as None, dict keys as strings, tuples and arrays as lists."""
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return jsonable(x.tolist())
    return x


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write JSON atomically, NaN / inf written as null."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=indent))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_os_error(e: BaseException) -> str:
    """A short human reason for an OSError (disk full, read-only, permission denied, ...)."""
    code = getattr(e, "errno", None)
    if code == errno.ENOSPC:
        return "disk full (ENOSPC)"
    if code == errno.EDQUOT:
        return "disk quota exceeded (EDQUOT)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.EROFS:
        return "read-only file system"
    return getattr(e, "strerror", None) or str(e).splitlines()[0][:100] or type(e).__name__


def path_kind(path: str | os.PathLike) -> str | None:
    """What ``path`` is, for messages: None when nothing is there (or a parent is not a folder), else ``"a file"``,
    ``"a folder"``, ``"a FIFO (named pipe)"``, ``"a symlink loop"``, ``"a broken symlink (to X)"``,
    ``"a socket"``, ``"a device"`` or ``"not accessible (REASON)"``: so "does not exist" is said only when true."""
    import stat

    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(path):
                try:
                    return f"a broken symlink (to {os.readlink(path)!r})"
                except OSError:
                    return "a broken symlink"
            return None
        return f"not accessible ({describe_os_error(e)})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file or folder"
