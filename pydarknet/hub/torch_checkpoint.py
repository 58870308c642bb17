"""Reading PyTorch ``.pt`` checkpoints without PyTorch and without running code from them.

A checkpoint written by ``torch.save`` is a zip archive (``<name>/data.pkl`` plus one raw file per storage,
``<name>/data/<key>``) or, before PyTorch 1.6, a sequence of pickles followed by the raw storages. The pickle names
the Python callables that rebuild its objects; an ordinary ``pickle.load`` would import and call whatever it names.
Here :class:`_Unpickler` resolves only a fixed list of names, each to an inert stand-in:

* ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the ``torch.*Storage`` types become numpy arrays
  cut from the raw storage bytes (dtype, shape, stride and offset as recorded);
* ``collections.OrderedDict``, and the module classes of a ScaledYOLOv4 model (``models.yolo.Model``,
  ``models.common.Conv``..., ``torch.nn.modules.*``, ``mish_cuda.MishCuda``) become :class:`Module` records that only
  keep the state the pickle gives them (``_parameters``, ``_buffers``, ``_modules``, ``eps``, ``yaml``...).

Any other name is refused with a :class:`~pydarknet.errors.WeightsError` naming it, before anything is called.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from pydarknet.errors import WeightsError

__all__ = ["Module", "read_checkpoint", "state_dict"]

_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "BFloat16Storage": None,  # widened by hand below
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# Module classes a ScaledYOLOv4 checkpoint (either branch) may name; they are recorded, never imported.
_MODULE_PREFIXES = ("torch.nn.modules.", "models.", "utils.", "mish_cuda", "mc.build.lib.mish_mish")
_MAX_PICKLE = 64 << 20  # a model pickle is a few MB; refuse to parse anything far larger


class Module:
    """An inert record of a pickled ``nn.Module``: its class name and the state the pickle set."""

    def __init__(self, *args, **kwargs):
        self.__dict__["_class"] = "?"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __repr__(self):
        return f"<{self._class}>"


class _Storage:
    def __init__(self, name):
        self.name = name


def _stand_in(module: str, name: str):
    qual = f"{module}.{name}"

    class _Record(Module):
        def __init__(self, *args, **kwargs):
            self.__dict__["_class"] = qual

        def __setstate__(self, state):
            Module.__setstate__(self, state)
            self.__dict__["_class"] = qual

    _Record.__name__ = name
    return _Record


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, load_storage, path):
        super().__init__(io.BytesIO(data))
        self._load_storage = load_storage
        self._path = path
        self._records: Dict[str, type] = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _DTYPES:
            return _Storage(name)
        if module == "torch" and name == "Size":
            return tuple
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
            return {"set": set, "frozenset": frozenset}[name]  # modules' _non_persistent_buffers_set
        if module.startswith(_MODULE_PREFIXES) and name.isidentifier():
            key = f"{module}.{name}"
            if key not in self._records:
                self._records[key] = _stand_in(module, name)
            return self._records[key]
        raise WeightsError(
            f"the checkpoint's pickle asks for {module}.{name}, which a model checkpoint does not need; "
            "refusing to load it (nothing from the file was run)",
            self._path,
        )

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module" and isinstance(pid[1], type):
            return pid[1]  # a legacy file records each module class with its source code; the code is not used
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage" or len(pid) < 5:
            raise WeightsError(f"unexpected persistent id {pid!r} in the checkpoint's pickle", self._path)
        kind, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(kind, _Storage) or not isinstance(numel, int):
            raise WeightsError(f"unexpected storage record {pid!r} in the checkpoint's pickle", self._path)
        return self._load_storage(kind.name, key, numel)


def _rebuild_tensor(storage, offset, size, stride, *rest):
    if isinstance(storage, _LazyStorage):
        return _LazyTensor(storage, offset, size, stride)
    if not isinstance(storage, np.ndarray):
        raise WeightsError("a tensor in the checkpoint does not point at a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not size:
        return storage[offset : offset + 1].reshape(()).copy()
    end = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or end > storage.size or any(s < 0 for s in stride):
        raise WeightsError(f"a tensor of shape {size} reaches past the end of its storage ({storage.size} elements)")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data, requires_grad=None, hooks=None, *rest):
    return data


def _storage_array(name: str, raw: bytes, numel: int, where: str, path):
    if name == "BFloat16Storage":
        if len(raw) < 2 * numel:
            raise WeightsError(f"storage {where} holds {len(raw)} bytes, fewer than its {numel} elements", path)
        bits = np.frombuffer(raw, dtype="<u2", count=numel).astype(np.uint32) << 16
        return bits.view(np.float32)
    dtype = np.dtype(_DTYPES[name]).newbyteorder("<")
    if len(raw) < dtype.itemsize * numel:
        raise WeightsError(f"storage {where} holds {len(raw)} bytes, fewer than its {numel} elements", path)
    return np.frombuffer(raw, dtype=dtype, count=numel)


def _read_zip(path: Path, data: bytes):
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise WeightsError(f"not a readable PyTorch zip checkpoint: {e}", path) from None
    names = archive.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
        raise WeightsError("the zip archive has no data.pkl: it is not a PyTorch checkpoint", path)
    prefix = pkl[0][: -len("data.pkl")]
    order = archive.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in names else "little"
    if order != "little":
        raise WeightsError(f"the checkpoint was written on a {order}-endian machine; only little-endian is read", path)
    if archive.getinfo(pkl[0]).file_size > _MAX_PICKLE:
        raise WeightsError("the checkpoint's pickle is implausibly large for a model description", path)
    cache: Dict[str, np.ndarray] = {}

    def load_storage(kind, key, numel):
        if key not in cache:
            member = f"{prefix}data/{key}"
            if member not in names:
                raise WeightsError(f"the pickle refers to storage {key}, which the archive lacks", path)
            cache[key] = _storage_array(kind, archive.read(member), numel, member, path)
        return cache[key]

    return _Unpickler(archive.read(pkl[0]), load_storage, path).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# What a damaged file raises from the zip or pickle machinery (a CRC mismatch, a cut stream, a wrong type).
_DAMAGE = (
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    EOFError,
    AttributeError,
    TypeError,
    ValueError,
    IndexError,
    struct.error,
    KeyError,
)


def read_checkpoint(path) -> Any:
    """The object a ``.pt`` file holds, with tensors as numpy arrays and modules as :class:`Module` records."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read the checkpoint: {exc.strerror or exc}", path) from None
    if data[:4] == b"PK\x03\x04":
        try:
            return _read_zip(path, data)
        except _DAMAGE as e:
            raise WeightsError(f"the checkpoint's pickle is damaged or not a model: {e!r}", path) from None
    try:
        return _read_legacy_file(path, data)
    except _DAMAGE as e:
        raise WeightsError(f"the checkpoint is damaged or not a model: {e!r}", path) from None


def _read_legacy_file(path: Path, data: bytes):
    stream = io.BytesIO(data)

    class _Header(pickle.Unpickler):
        def find_class(self, module, name):
            raise WeightsError(f"unexpected {module}.{name} in the header of a legacy checkpoint", path)

    try:
        if _Header(stream).load() != _LEGACY_MAGIC:
            raise WeightsError("this is neither a PyTorch zip checkpoint nor a legacy PyTorch file", path)
        _Header(stream).load()  # protocol version
        _Header(stream).load()  # system info
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
        raise WeightsError(f"not a PyTorch checkpoint ({e})", path) from None
    arrays: Dict[str, np.ndarray] = {}
    kinds: Dict[str, tuple] = {}

    def load_storage(kind, key, numel):
        kinds.setdefault(key, (kind, numel))
        return _LazyStorage(key)

    up = _Unpickler(b"", load_storage, path)
    # Read the object pickle straight from the shared stream so that the storages that follow it can be found.
    pickle.Unpickler.__init__(up, stream)
    try:
        obj = up.load()
        keys = _Header(stream).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise WeightsError(f"the checkpoint's pickle is damaged: {e}", path) from None
    for key in keys:
        if len(data) - stream.tell() < 8:
            raise WeightsError(f"the file ends before storage {key}", path)
        (numel,) = struct.unpack("<q", stream.read(8))
        kind, _ = kinds.get(str(key), ("ByteStorage", numel))
        itemsize = 2 if kind == "BFloat16Storage" else np.dtype(_DTYPES[kind]).itemsize
        raw = stream.read(numel * itemsize)
        arrays[str(key)] = _storage_array(kind, raw, numel, f"storage {key}", path)
    return _resolve(obj, arrays, path)


class _LazyStorage:
    """A legacy file's storage before its bytes (stored after the pickle) have been read."""

    def __init__(self, key):
        self.key = key


class _LazyTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _resolve(obj, arrays, path, depth=0):
    """Replace the legacy reader's lazy tensors by arrays, walking dicts, lists and module records."""
    if depth > 200:
        raise WeightsError("the checkpoint's object nests too deeply", path)
    if isinstance(obj, _LazyTensor):
        if obj.storage.key not in arrays:
            raise WeightsError(f"the file lacks storage {obj.storage.key}", path)
        return _rebuild_tensor(arrays[obj.storage.key], obj.offset, obj.size, obj.stride)
    if isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _resolve(obj[k], arrays, path, depth + 1)
    elif isinstance(obj, list):
        obj[:] = [_resolve(v, arrays, path, depth + 1) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(_resolve(v, arrays, path, depth + 1) for v in obj)
    elif isinstance(obj, Module):
        for k in list(obj.__dict__):
            obj.__dict__[k] = _resolve(obj.__dict__[k], arrays, path, depth + 1)
    return obj


def state_dict(obj: Any, path=None) -> tuple[Dict[str, np.ndarray], Dict[str, float], Optional[Module]]:
    """(name -> array, batch-norm prefix -> eps, the model record) from what a checkpoint holds: a model object, a
    training checkpoint ``{'model': ..., ...}`` (its 'model', which the authors' training saves from the EMA; 'ema'
    when there is no 'model'), or a plain state dict."""
    model = obj
    if isinstance(obj, dict) and not _is_tensor_dict(obj):
        for key in ("model", "ema", "state_dict"):
            if obj.get(key) is not None:
                model = obj[key]
                break
        else:
            raise WeightsError(
                f"the checkpoint holds a dict with keys {sorted(map(str, obj))[:8]} but no 'model'", path
            )
    if isinstance(model, Module) and "ema" in model.__dict__ and "_modules" not in model.__dict__:
        model = model.ema  # a ModelEMA record
    if isinstance(model, dict) and _is_tensor_dict(model):
        return {k: _float(v) for k, v in model.items() if isinstance(v, np.ndarray)}, {}, None
    if not isinstance(model, Module):
        raise WeightsError(f"the checkpoint holds {type(model).__name__}, not a model or a state dict", path)
    tensors: Dict[str, np.ndarray] = {}
    eps: Dict[str, float] = {}

    def walk(m: Module, prefix: str, depth: int):
        if depth > 50:
            raise WeightsError("the model's modules nest too deeply", path)
        d = m.__dict__
        for group in ("_parameters", "_buffers"):
            for name, value in (d.get(group) or {}).items():
                if isinstance(value, np.ndarray):
                    tensors[prefix + name] = value
        if m._class.endswith("BatchNorm2d") and isinstance(d.get("eps"), (int, float)):
            eps[prefix.rstrip(".")] = float(d["eps"])
        for name, child in (d.get("_modules") or {}).items():
            if isinstance(child, Module):
                walk(child, f"{prefix}{name}.", depth + 1)

    walk(model, "", 0)
    if not tensors:
        raise WeightsError("the checkpoint's model has no parameters", path)
    return {k: _float(v) for k, v in tensors.items()}, eps, model


def _is_tensor_dict(d) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(v, np.ndarray) for v in d.values())


def _float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if a.dtype.kind == "f" else a
