"""The one verified download: a byte stream copied into the cache atomically, checked for size and sha256.

Model weights (from their release URLs) and assets (from the package registry or their upstream URL) both arrive
through :func:`save_verified`, so a short, oversized or altered download never lands under its final name.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import BinaryIO, Callable, Optional, Type

from pydarknet.errors import AssetError, DarknetError
from pydarknet.utils.atomic import atomic_write

__all__ = ["CHUNK", "save_verified"]

CHUNK = 1 << 20


def save_verified(
    stream: BinaryIO,
    dest: pathlib.Path,
    *,
    size: int,
    sha256: Optional[str],
    origin: str,
    error: Type[DarknetError] = AssetError,
    progress: Optional[Callable[[int], None]] = None,
    at_most: bool = False,
) -> str:
    """Copy ``stream`` to ``dest`` atomically and return its sha256.

    Reading stops as soon as the stream holds more than ``size`` bytes (a wrong URL cannot fill the disk); a
    shorter stream or a different sha256 (when one is pinned) raises ``error`` naming ``origin``, and ``dest`` is
    left as it was (with ``at_most``, ``size`` is only an upper bound). ``progress`` is called with each chunk's
    length.
    """
    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()

    def write(out):
        n = 0
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            n += len(chunk)
            if n > size:
                raise error(f"{origin} holds more than the expected {size} bytes")
            digest.update(chunk)
            out.write(chunk)
            if progress is not None:
                progress(len(chunk))
        if n != size and not (at_most and n > 0):
            raise error(f"{origin} holds {n} bytes, expected {size}")
        if sha256 and digest.hexdigest() != sha256:
            raise error(f"{origin}: sha256 mismatch: got {digest.hexdigest()}, expected {sha256}")

    atomic_write(dest, write)
    return digest.hexdigest()
