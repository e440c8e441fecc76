"""Atomic file writes: a reader (or a resumed run) sees the old file or the whole new one, never half of one.

The new content goes to a fresh file beside the target (same folder, so the rename stays on one file system),
then ``os.replace`` puts it in place. The fresh file is created the ordinary way, so it gets the permissions of
the umask (``0o666 & ~umask``), unlike ``tempfile.mkstemp``'s private 0600: a team sharing a results folder can
read ``metrics.json``, ``per_video.jsonl``, model cards and GIFs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a not-yet-existing path beside ``path`` for a writer that takes a file name (``export_to_gif``, a
    download); on success it replaces ``path``, on an exception it is removed and ``path`` is left as it was.

    The temporary name keeps ``path``'s extension, for writers that pick the format from it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(6)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (flushed to disk before the rename), mode ``0o666 & ~umask``."""
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, mode ``0o666 & ~umask``."""
    atomic_write_bytes(path, text.encode("utf-8"))
