"""Atomic file writes: a temporary file in the same folder, fsync, rename over the target, fsync the folder.

Weights files and training checkpoints are written this way, so a crash or a kill at any moment leaves either the
old file or the new one, never a torn one. A kill can leave the temporary behind (``.{name}.{pid}.{hex}.tmp``);
:func:`remove_stale_temporaries` removes those whose writer is dead, and the trainer runs it when it starts.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import List

from pydarknet.errors import WriteError

__all__ = ["atomic_write", "atomic_write_text", "fsync_dir", "remove_stale_temporaries", "temporary_name"]

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp$")


def temporary_name(path, pid=None) -> str:
    """The name :func:`atomic_write` gives the temporary of ``path`` (the writer's pid and 8 random hex digits)."""
    return f".{Path(path).name}.{os.getpid() if pid is None else int(pid)}.{secrets.token_hex(4)}.tmp"


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
    tmp = directory / temporary_name(path)
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


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this machine (a zombie is dead). Where this cannot be told without
    side effects (Windows, whose os.kill terminates), every pid counts as alive."""
    if pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: os.kill said it exists
    return state not in ("Z", "X")


def remove_stale_temporaries(directory) -> List[Path]:
    """Delete the temporaries of :func:`atomic_write` in ``directory`` whose writing process is dead (killed in
    the middle of a write); returns the paths removed. Temporaries of live processes are left alone. The pid is
    checked on this machine, so a folder shared with another host's running writer must not be cleaned."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or not entry.is_file(follow_symlinks=False) or _process_alive(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(Path(entry.path))
    if removed:
        fsync_dir(directory)
    return removed
