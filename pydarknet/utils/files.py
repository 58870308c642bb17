"""Bounded reads of input files: the file type and size are checked (``stat``) before a byte is read.

Every reader of user input (cfg, weights, .data, lists, names, labels, data.yaml) goes through :func:`read_bounded`,
so a FIFO, a device such as ``/dev/zero`` or a huge (possibly sparse) file is refused with a clear message instead
of hanging or filling the memory. The caps are far above any real file of each kind; they are module-level values
so that an unusual setup can raise them.
"""

from __future__ import annotations

import os
import stat
from typing import Callable

__all__ = [
    "MAX_CFG_BYTES",
    "MAX_TEXT_BYTES",
    "MAX_LIST_BYTES",
    "MAX_LABEL_BYTES",
    "MAX_IMAGE_BYTES",
    "check_regular",
    "read_bounded",
    "short",
]

# The largest shipped cfg (yolov4-p6) is about 30 KB; names/.data/yaml files are a few KB.
MAX_CFG_BYTES = 8 << 20
MAX_TEXT_BYTES = 16 << 20  # .data, names, data.yaml
MAX_LIST_BYTES = 1 << 30  # image lists (Open Images' 1.7M paths are about 140 MB)
MAX_LABEL_BYTES = 16 << 20  # one YOLO label file (100,000 boxes are about 4 MB)
MAX_IMAGE_BYTES = 1 << 30  # one image file (the pixel cap, images.MAX_IMAGE_PIXELS, is the tighter bound)


def _kind(mode) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path, error: Callable[[str], Exception], limit=None) -> int:
    """``stat`` ``path`` (following links) and return its size; raise ``error(problem)`` when it cannot be read,
    is not a regular file (FIFO, device, folder, socket) or is larger than ``limit`` bytes."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"is {_kind(st.st_mode)}, not a regular file; only regular files are read")
    if limit is not None and st.st_size > limit:
        raise error(f"is {st.st_size:,} bytes, more than the {limit:,} bytes allowed for this kind of file")
    return st.st_size


def read_bounded(path, limit: int, error: Callable[[str], Exception]) -> bytes:
    """The bytes of the regular file ``path``, refusing anything that is not a regular file or is larger than
    ``limit`` bytes (checked before reading, and again while reading, in case the file grows)."""
    check_regular(path, error, limit)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"cannot read it ({e.strerror or e})") from None
    if len(data) > limit:
        raise error(f"is more than the {limit:,} bytes allowed for this kind of file")
    return data


def short(text, limit: int = 80) -> str:
    """``text`` for an error message: at most ``limit`` characters, the rest elided with its length."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"
