"""Reading and writing original Darknet `.weights` files.

Layout (Darknet parser.c, load_weights_upto / save_weights_upto): int32 major, minor, revision; `seen` as uint64
when major*10 + minor >= 2, else uint32; then float32 tensors layer by layer in cfg order with no padding. A
header with major or minor above 1000 marks a file whose [connected] matrices are stored transposed. The tensor
order of each layer is the one in graph.py (the single source of truth for it).
"""

import struct
from pathlib import Path

import numpy as np

from pydarknet.errors import WeightsError
from pydarknet.utils import files
from pydarknet.utils.atomic import atomic_write

CURRENT_VERSION = (0, 2, 5)


def header_size(major, minor):
    return 20 if major * 10 + minor >= 2 else 16


def read_header(data, path, file_size=None):
    """``(version, seen, header_size, transposed)`` from the first bytes of a weights file (``file_size``: the
    whole file's size when ``data`` is only its beginning)."""
    total = len(data) if file_size is None else file_size
    if total < 12:
        raise WeightsError(f"the file is {total} bytes, too short for a Darknet weights header", path)
    major, minor, revision = struct.unpack_from("<iii", data, 0)
    if major < 0 or minor < 0 or revision < 0:
        raise WeightsError(f"this is not a Darknet weights file (header version {major}.{minor}.{revision})", path)
    size = header_size(major, minor)
    if total < size:
        raise WeightsError(f"the file is {total} bytes, too short for its {size}-byte header", path)
    seen = struct.unpack_from("<Q" if size == 20 else "<I", data, 12)[0]
    transposed = major > 1000 or minor > 1000
    return (major, minor, revision), seen, size, transposed


def file_tensors(desc, cutoff=None):
    """The tensors stored in a file for layers [0, cutoff), in file order."""
    layers = desc.layers if cutoff is None else desc.layers[:cutoff]
    return [(layer, t) for layer in layers for t in layer.tensors if t.in_file]


def expected_bytes(desc, cutoff=None, version=CURRENT_VERSION):
    floats = sum(t.size for _, t in file_tensors(desc, cutoff))
    return header_size(version[0], version[1]) + 4 * floats


def load_into(desc, params, path, partial=False):
    """Copy a weights file into the flat parameter array `params`; returns (version, seen, layers_loaded).

    The file's type and size are checked (``stat``) before anything is read, and exactly the bytes the cfg needs
    are read: a FIFO, a device or a file of the wrong size is refused without reading it."""
    path = Path(path)

    def error(problem):
        return WeightsError(problem, path)

    size = files.check_regular(path, error)
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            version_info = read_header(head if size >= 20 else head[:size], path, size)
            hsize = version_info[2]
            expected = expected_bytes(desc, version=version_info[0])
            if not partial and size != expected:
                raise WeightsError(
                    f"the file is {size:,} bytes but {desc.path} needs exactly {expected:,} bytes "
                    f"({hsize}-byte header + {(expected - hsize) // 4:,} floats); "
                    + (
                        "it is too short (truncated, or a partial backbone file)"
                        if size < expected
                        else "it is too long (a weights file for a different cfg?)"
                    ),
                    path,
                    too_short=size < expected,
                )
            if partial and size > expected:
                raise WeightsError(
                    f"the file is {size:,} bytes, more than the {expected:,} bytes the whole network {desc.path} needs",
                    path,
                )
            f.seek(0)
            data = f.read(size)
    except OSError as exc:
        raise error(f"cannot read it ({exc.strerror or exc})") from None
    if len(data) != size:
        raise WeightsError(f"the file changed while it was read ({len(data):,} bytes read, {size:,} expected)", path)
    version, seen, hsize, transposed = read_header(data, path)
    body = len(data) - hsize
    if body % 4:
        raise WeightsError(f"the data after the header ({body:,} bytes) is not a whole number of floats", path)
    floats = np.frombuffer(data, dtype="<f4", offset=hsize)
    # Decode into a copy so that a file refused half way leaves the network as it was.
    target = params
    params = np.array(params, copy=True)
    position = 0
    loaded = 0
    for layer in desc.layers:
        tensors = [t for t in layer.tensors if t.in_file]
        need = sum(t.size for t in tensors)
        if position == len(floats) and partial:
            break
        if position + need > len(floats):
            raise WeightsError(
                f"the file ends inside layer {layer.index} ({layer.type}): it has "
                f"{len(floats) - position:,} floats left but the layer needs {need:,}",
                path,
            )
        for t in tensors:
            chunk = floats[position : position + t.size]
            if transposed and layer.kind.transposed_in_v1_files and t.name == "weights":
                out_n, in_n = t.shape
                chunk = chunk.reshape(in_n, out_n).T.reshape(-1)
            params[t.offset : t.offset + t.size] = chunk
            position += t.size
        loaded += 1
    if not np.all(np.isfinite(params)):
        bad = next(
            l for l in desc.layers for t in l.tensors if not np.all(np.isfinite(params[t.offset : t.offset + t.size]))
        )
        raise WeightsError(f"the weights of layer {bad.index} ({bad.type}) contain NaN or infinity", path)
    for layer in desc.layers:
        for t in layer.tensors:
            # A variance below zero makes batch normalisation take the square root of a negative number (NaN).
            if t.name == "rolling_variance" and t.in_file:
                low = params[t.offset : t.offset + t.size].min(initial=0.0)
                if low < 0:
                    raise WeightsError(
                        f"the batch-norm rolling_variance of layer {layer.index} ({layer.type}, cfg line {layer.line})"
                        f" holds a negative value ({low:g}); a variance cannot be negative (a damaged file?)",
                        path,
                    )
    target[:] = params
    return version, seen, loaded


def save_from(desc, params, path, cutoff=None, seen=0, version=CURRENT_VERSION):
    """Write layers [0, cutoff) of `params` as a Darknet weights file, atomically."""
    major, minor, revision = version
    if cutoff is not None and not 0 <= cutoff <= len(desc.layers):
        raise ValueError(f"cutoff must be between 0 and {len(desc.layers)}, got {cutoff}")
    header = struct.pack("<iii", major, minor, revision)
    header += struct.pack("<Q", seen) if header_size(major, minor) == 20 else struct.pack("<I", seen & 0xFFFFFFFF)
    transposed = major > 1000 or minor > 1000

    def write(f):
        f.write(header)
        for layer, t in file_tensors(desc, cutoff):
            chunk = params[t.offset : t.offset + t.size]
            if transposed and layer.kind.transposed_in_v1_files and t.name == "weights":
                chunk = chunk.reshape(t.shape).T.reshape(-1)
            f.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())

    atomic_write(path, write)
