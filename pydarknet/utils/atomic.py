"""Atomic file writes: a temporary file in the same folder, fsync, rename over the target, fsync the folder.

Weights files and training checkpoints are written this way, so a crash or a kill at any moment leaves either the
old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydarknet.errors import WriteError

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir"]


def fsync_dir(directory):
    """Make a rename in ``directory`` durable (POSIX; a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is already atomic
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Write ``path`` by calling ``write(binary_file)`` on a temporary file in the same folder, then fsync,
    rename over ``path`` and fsync the folder. A crash at any moment leaves either the old or the new file.

    A failure of the file system (a full disk, no permission, a folder that is gone) raises
    :class:`~pydarknet.errors.WriteError` naming ``path``; ``path`` is then left as it was."""
    path = Path(path)
    try:
        _atomic_write(path, write)
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(path, e) from e


def _atomic_write(path, write):
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with mode 0o666 honours the umask, so the result has the permissions a plain open() would give.
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def atomic_write_text(path, text, encoding="utf-8"):
    """:func:`atomic_write` of a string."""
    data = text.encode(encoding)
    atomic_write(path, lambda f: f.write(data))
