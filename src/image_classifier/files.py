"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

A crash mid-write leaves the previous file (or none), never a half-written one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

_UMASK = os.umask(0)
os.umask(_UMASK)

__all__ = ["atomic_path", "write_json", "write_text", "read_json", "replace_dir", "check_writable", "DiskFullError",
           "is_disk_full", "disk_full_is_an_error", "remove_leftovers", "looks_like_local_path"]

# Below this many free bytes, a failed write is taken to have failed for want of space: torch.save reports
# ENOSPC only as "unexpected pos N vs M", and safetensors wraps it in its own error type.
_NEARLY_FULL = 1 << 20
_DISK_FULL_TEXTS = {"No space left on device": errno.ENOSPC, "StorageFull": errno.ENOSPC,    # Rust's io error kinds
                    "Disk quota exceeded": errno.EDQUOT, "QuotaExceeded": errno.EDQUOT}


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)    # mkstemp makes 0600 files; give the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move every file of folder `src` into `dst`, each by an atomic rename, then remove `src`. Each file gets the
    usual permissions (safetensors writes its weights 0600: unreadable to a Space's or a colleague's user)."""
    src, dst = Path(src), Path(dst)
    for item in sorted(src.rglob("*")):
        if item.is_file():
            target = dst / item.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(item, 0o666 & ~_UMASK)
            os.replace(item, target)
    shutil.rmtree(src, ignore_errors=True)


def looks_like_local_path(name: str | os.PathLike, file_suffixes: Iterable[str] = ()) -> bool:
    """True when `name` cannot be a Hub id ("name" or "owner/name"): it starts like a path (., /, ~), holds a
    backslash or more than one slash, ends in one of `file_suffixes`, or is "first/..." with `first` an
    existing folder. So a mistyped local path fails at once, not after the Hub client's network retries."""
    text = os.fspath(name)
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or os.path.isabs(text):
        return True
    if Path(text).suffix.lower() in set(file_suffixes):
        return True
    first = text.split("/", 1)[0]
    return "/" in text and Path(first).is_dir()


def check_writable(folder: str | os.PathLike) -> Optional[str]:
    """Create `folder` if needed and write a file in it; None when that works, else the reason it does not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except (FileExistsError, NotADirectoryError):
        blocking = next(p for p in (folder, *folder.parents) if p.exists())
        return f"{blocking} is a file, not a folder"
    except OSError as error:      # read-only filesystem, no permission, a full disk
        return str(error.strerror or error)
    return None


class DiskFullError(Exception):
    """A write failed because its disk is full; the message says what was kept and how to go on."""


def is_disk_full(error: BaseException, path: Optional[str | os.PathLike] = None) -> bool:
    """Whether `error` (or what it was raised from) is a full disk or quota, or a write error while `path`'s
    disk has (almost) no space left."""
    return _disk_full_errno(error) is not None or (path is not None and free_bytes(path) < _NEARLY_FULL)


def _disk_full_errno(error: Optional[BaseException]) -> Optional[int]:
    """ENOSPC or EDQUOT when the error chain says so, by errno or in words; else None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error.errno
        for text, number in _DISK_FULL_TEXTS.items():
            if text in str(error):
                return number
        error = error.__cause__ or error.__context__
    return None


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free to this user on the disk holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return _NEARLY_FULL       # cannot tell: do not call it full


@contextmanager
def disk_full_is_an_error(what: str, path: str | os.PathLike, kept: str) -> Iterator[None]:
    """Turn a full disk while writing `what` under `path` into a `DiskFullError` that says so, what `kept`
    still holds, and how to go on; other errors pass through unchanged."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - filtered by is_disk_full, re-raised otherwise
        if isinstance(error, DiskFullError) or not is_disk_full(error, path):
            raise
        free = free_bytes(path) / 1e6
        raise DiskFullError(f"the disk is full: writing {what} under {path} failed "
                            f"({os.strerror(_disk_full_errno(error) or errno.ENOSPC)}; {free:.1f} MB free there). "
                            f"{kept}") from error


def remove_leftovers(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Remove what a killed writer left in `folder` (names matching `pattern`); return what was removed."""
    removed = []
    for path in sorted(Path(folder).glob(pattern)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _jsonable(value: Any) -> Any:
    """Make NumPy/torch scalars and arrays, and paths, JSON-serialisable."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
