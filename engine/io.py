"""Atomic file and directory writes: the one way cytotune puts a file on disk.

Every writer goes through a temporary name made unique by :func:`tempfile.mkstemp` (or
:func:`tempfile.mkdtemp`) in the target's own directory, flushes it to disk, and renames it over
the target with :func:`os.replace`. A reader therefore sees the old file or the new one, never a
half-written one; concurrent writers of the same path never share a temporary name (the last
rename wins); a failed write removes its temporary file. Temporary names start with ``.`` so
directory listings and pyarrow datasets skip them.

Files get the permissions of the umask (``mkstemp`` alone would make them 0600, which keeps them
from the rest of a lab's group on a shared disk).

Example:
    >>> atomic_write_json(study / "study.json", {"name": "demo"})
    >>> with atomic_path(study / "trials.parquet") as tmp:
    ...     table.to_parquet(tmp)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_directory",
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "make_staging_dir",
    "publish_directory",
]


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """This process's umask: read from /proc where it is there (Linux 4.7+), else set and put
    back under a lock. ``os.umask`` only sets, so threads that read it by setting it at once
    saw each other's 0 and could leave it at 0: every later file world-writable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A unique temporary path beside ``path`` for a library that writes to a path; when the block
    ends it is flushed and renamed over ``path`` (removed instead if the block raises).

    The temporary name ends in ``.tmp``: name the format explicitly to writers that pick it from
    the extension (PIL's ``format="PNG"``), and give ``np.save`` a file object, not this path (it
    would append ``.npy``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` whose content appears at ``path`` only when the block ends cleanly."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open writes a whole file: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2, **kwargs: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (``kwargs`` go to :func:`json.dumps`)."""
    return atomic_write_text(path, json.dumps(data, indent=indent, **kwargs))


def atomic_write_parquet(data: Any, path: str | Path, **kwargs: Any) -> Path:
    """Write a pyarrow Table or a pandas DataFrame (without its index) as Parquet atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(data, pa.Table):
        data = pa.Table.from_pandas(data, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(data, tmp, **kwargs)
    return Path(path)


def publish_directory(staging: str | Path, target: str | Path) -> Path:
    """Rename a finished ``staging`` directory to ``target``.

    An existing target (file or directory) is moved aside under a unique name first and deleted
    afterwards, so a reader or a crash sees either the old or the new target complete, never a
    mix. Concurrent publishers of one target each land whole, the last one staying.
    """
    staging, target = Path(staging), Path(target)
    for _ in range(100):
        old = _move_aside(target)
        try:
            os.replace(staging, target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another writer published meanwhile
                _remove(old)
                continue
            if old is not None:
                os.replace(old, target)
            raise
        _remove(old)
        return target
    raise RuntimeError(f"could not publish {staging} as {target}: it kept being replaced")


def _move_aside(target: Path) -> Path | None:
    if not (target.exists() or target.is_symlink()):
        return None
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.replace(target, old)
    except FileNotFoundError:  # another writer moved it first
        return None
    return old


def _remove(path: Path | None) -> None:
    if path is None:
        return
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def make_staging_dir(target: str | Path) -> Path:
    """A new, uniquely named, empty directory beside ``target`` (hidden, umask permissions) in
    which to build what :func:`publish_directory` later renames to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    os.chmod(staging, 0o777 & ~_umask())
    return staging


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """A fresh staging directory beside ``target`` that :func:`publish_directory` puts in place
    when the block ends cleanly (deleted instead if the block raises).

    The staging directory gets the umask's permissions (``mkdtemp`` alone makes it 0700, which
    would keep the published directory from the user's group).
    """
    staging = make_staging_dir(target)
    try:
        yield staging
        publish_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
