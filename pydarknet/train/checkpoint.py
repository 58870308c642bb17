"""Training checkpoints: Darknet's backup files, a training-state file for bit-exact resume, and `partial`.

Weights go to original Darknet ``.weights`` files (``pydarknet.weights``) named as Darknet's ``train_detector``
names them in the ``.data`` file's ``backup`` folder (AlexeyAB ``src/detector.c``), ``<base>`` being the cfg file
name up to its first dot (``basecfg``):

* ``<base>_<iteration>.weights`` when ``iteration >= last + save_every`` or ``iteration % save_every == 0``
  (``save_every``: the ``.data`` key ``saveweights``, default 1000, or 10000 when ``max_batches >= 10000``);
* ``<base>_last.weights`` when ``save_every > save_last_every`` and (``iteration >= last + save_last_every`` or
  ``iteration % save_last_every == 0`` and ``iteration > 1``) (``savelast``, default 100), with
  ``<base>_ema.weights`` beside it once the EMA has started;
* ``<base>_best.weights`` when a new mAP is ``>=`` the best so far; ``<base>_final.weights`` at the end.

The header's ``seen`` is ``iteration * images_per_iteration`` (``save_weights_upto`` recomputes it that way), so
Darknet itself resumes from any of these files at the right iteration (``seen / (batch * subdivisions)``).

Beside ``_last`` goes ``<base>_last.state``: everything Darknet loses on a restart -- iteration, best mAP, seed,
SGD momentum / Adam moments, EMA averages, tensors not stored in the weights file (``dontloadscales``), and
whatever JSON-able extras the training loop adds (e.g. its RNG state) -- with a fingerprint of the network so
that a resume with a different cfg is refused. ``resume`` finds it from the weights file name.

Every file is written atomically: a temporary file in the same folder, flushed and fsync'ed, renamed over the
target, then the folder fsync'ed. The weights/state pair is kept consistent across a crash at any point: the
new state goes first to ``<base>_last.state.new``, then the weights, then the state is renamed into place; the
state records the weights' ``seen`` and a CRC-32 of their tensors, and ``resume`` takes whichever state file
matches the weights it loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pydarknet.core import weights as weights_io
from pydarknet.core.graph import load_network_desc
from pydarknet.errors import CheckpointError, WeightsError
from pydarknet.train.schedule import images_per_iteration
from pydarknet.utils.atomic import atomic_write, fsync_dir

__all__ = [
    "CheckpointError",
    "TrainState",
    "ResumeInfo",
    "CheckpointManager",
    "PartialResult",
    "atomic_write",
    "darknet_base_name",
    "state_path_for",
    "network_fingerprint",
    "save_weights",
    "save_state",
    "load_state",
    "resume",
    "partial",
]

STATE_FORMAT = "pydarknet-train-state"
STATE_VERSION = 1
STATE_SUFFIX = ".state"
PENDING_SUFFIX = ".state.new"


def save_weights(path, network, params, seen):
    """Darknet ``.weights`` of the whole network, written atomically (folder fsync'ed too)."""
    desc = getattr(network, "desc", network)
    weights_io.save_from(desc, params, path, seen=int(seen))
    fsync_dir(Path(path).parent)


# ----- names ----------------------------------------------------------------------------------------------------
def darknet_base_name(cfg):
    """Darknet's ``basecfg``: the cfg file name without folders, cut at its first dot."""
    name = Path(str(cfg).replace("\\", "/")).name
    base = name.split(".", 1)[0]
    return base or Path(name).stem or "network"


def state_path_for(weights_path):
    """``x_last.weights`` -> ``x_last.state`` (a name without ``.weights`` gets ``.state`` appended)."""
    p = Path(weights_path)
    return p.with_suffix(STATE_SUFFIX) if p.suffix == ".weights" else p.with_name(p.name + STATE_SUFFIX)


def _pending_path(state_path):
    p = Path(state_path)
    return (
        p.with_name(p.name[: -len(STATE_SUFFIX)] + PENDING_SUFFIX)
        if p.name.endswith(STATE_SUFFIX)
        else p.with_name(p.name + ".new")
    )


# ----- fingerprints ---------------------------------------------------------------------------------------------
def _sha(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def network_fingerprint(network):
    """What a state file must agree on with the network it is restored into.

    ``layout``: the parameter tensors (layer, name, shape, offset) -- buffers cannot be restored across a
    change; ``layers``: a short hash of each layer's type and options; ``net``: the ``[net]`` options. Build the
    description from the cfg as written (no width/height override) so that it does not change during training.
    """
    desc = getattr(network, "desc", network)
    layout = [
        [l.index, l.type, [[t.name, list(t.shape), t.offset, bool(t.in_file)] for t in l.tensors]] for l in desc.layers
    ]
    return {
        "layout": _sha([desc.param_count, layout]),
        "layers": [_sha([l.type, l.options])[:16] for l in desc.layers],
        "net": json.loads(json.dumps(desc.net)),
    }


def _file_crc(desc, params):
    """CRC-32 of the tensors a .weights file of the network stores, in file order (what the body holds)."""
    crc = 0
    for _, t in weights_io.file_tensors(desc):
        chunk = np.ascontiguousarray(params[t.offset : t.offset + t.size], dtype="<f4")
        crc = zlib.crc32(memoryview(chunk).cast("B"), crc)
    return crc


def _not_in_file(desc):
    return [t for l in desc.layers for t in l.tensors if not t.in_file]


# ----- the state file -------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """The training loop's own counters, saved beside ``_last`` (the optimizer's buffers are saved with it)."""

    iteration: int = 0  # iterations completed
    best_map: float = -1.0  # best mAP so far (Darknet starts from -1)
    seed: Optional[int] = None
    extra: dict = field(default_factory=dict)  # JSON-able: RNG state, data-loader position, ...


def save_state(path, network, params, state, optimizer=None):
    """Write a training-state file for ``params`` (as they are at ``state.iteration``), atomically."""
    desc = getattr(network, "desc", network)
    if params is None:
        params, _ = _params_of(network, None)
    seen = int(state.iteration) * images_per_iteration(desc)
    meta = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "iteration": int(state.iteration),
        "seen": seen,
        "best_map": float(state.best_map),
        "seed": None if state.seed is None else int(state.seed),
        "extra": state.extra,
        "param_count": int(desc.param_count),
        "weights_crc32": _file_crc(desc, params),
        "cfg": str(desc.path),
        "fingerprint": network_fingerprint(desc),
        "optimizer": None,
        "ema_initialized": False,
    }
    arrays = {}
    if optimizer is not None:
        opt = optimizer.state_dict()
        meta["optimizer"] = opt.pop("kind")
        meta["ema_initialized"] = bool(opt.pop("ema_initialized", False))
        arrays.update(opt)
    hidden = _not_in_file(desc)
    if hidden:
        arrays["params_not_in_file"] = np.concatenate([params[t.offset : t.offset + t.size] for t in hidden])
    try:
        text = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"TrainState.extra must be JSON-serialisable: {e}") from None

    def write(f):
        np.savez(f, meta=np.array(text), **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()})

    atomic_write(path, write)


@dataclass
class SavedState:
    """A training-state file read back: its metadata and arrays."""

    path: Path
    meta: dict
    arrays: dict

    @property
    def iteration(self):
        return self.meta["iteration"]

    def check(self, network, allow_cfg_changes=False):
        """Refuse (CheckpointError) a state written for another network; returns the list of tolerated
        differences when ``allow_cfg_changes`` lets [net]/layer-option changes through."""
        desc = getattr(network, "desc", network)
        mine = network_fingerprint(desc)
        theirs = self.meta["fingerprint"]
        if theirs["layout"] != mine["layout"] or self.meta["param_count"] != desc.param_count:
            raise CheckpointError(
                f"written for a network with a different parameter layout ({self.meta['param_count']:,} parameters, "
                f"cfg {self.meta['cfg']}) than {desc.path} ({desc.param_count:,}); it cannot be resumed with this cfg",
                self.path,
            )
        changes = []
        if len(theirs["layers"]) != len(mine["layers"]):
            changes.append(f"the number of layers ({len(theirs['layers'])} -> {len(mine['layers'])})")
        else:
            changes += [
                f"layer {i} options" for i, (a, b) in enumerate(zip(theirs["layers"], mine["layers"])) if a != b
            ]
        old, new = theirs["net"], mine["net"]
        for key in sorted(set(old) | set(new)):
            if json.dumps(old.get(key)) != json.dumps(new.get(key)):
                changes.append(f"[net] {key}: {old.get(key)!r} -> {new.get(key)!r}")
        if changes and not allow_cfg_changes:
            listed = "; ".join(changes[:8]) + ("; ..." if len(changes) > 8 else "")
            raise CheckpointError(
                f"written for a different cfg ({self.meta['cfg']}): {listed}. Resume with the "
                f"cfg it was trained with, or allow the changes explicitly",
                self.path,
            )
        return changes

    def restore(self, network, params, optimizer=None):
        """Put the saved buffers into ``optimizer`` and the tensors not stored in .weights into ``params``."""
        desc = getattr(network, "desc", network)
        if optimizer is not None:
            kind = self.meta.get("optimizer")
            if kind is None:
                raise CheckpointError("holds no optimizer state", self.path)
            state = dict(self.arrays, kind=kind, ema_initialized=self.meta.get("ema_initialized", False))
            state.pop("params_not_in_file", None)
            try:
                optimizer.load_state_dict(state)
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"cannot restore the optimizer: {e}", self.path) from None
        hidden = _not_in_file(desc)
        if hidden:
            values = self.arrays.get("params_not_in_file")
            if values is None or values.size != sum(t.size for t in hidden):
                raise CheckpointError("lacks the tensors that the .weights file does not store", self.path)
            position = 0
            for t in hidden:
                params[t.offset : t.offset + t.size] = values[position : position + t.size]
                position += t.size

    def matches(self, seen, crc):
        return self.meta["seen"] == int(seen) and self.meta["weights_crc32"] == crc


def load_state(path, arrays=True):
    """Read a training-state file; ``arrays=False`` reads only its metadata (fast)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            data = {k: np.array(z[k]) for k in z.files if k != "meta"} if arrays else {}
    except FileNotFoundError:
        raise CheckpointError("no such training-state file", path) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise CheckpointError(f"not a readable training-state file ({e})", path) from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise CheckpointError("not a pydarknet training-state file", path)
    if meta.get("version") != STATE_VERSION:
        raise CheckpointError(
            f"training-state version {meta.get('version')} is not supported "
            f"(this pydarknet reads version {STATE_VERSION})",
            path,
        )
    for name, value in data.items():
        if value.dtype != np.float32 or value.ndim != 1:
            raise CheckpointError(f"array '{name}' is {value.dtype} {value.shape}, expected flat float32", path)
    return SavedState(path, meta, data)


# ----- resume ---------------------------------------------------------------------------------------------------
@dataclass
class ResumeInfo:
    iteration: int  # iterations already done: continue with iteration + 1
    seen: int
    best_map: float
    seed: Optional[int]
    extra: dict
    state_path: Optional[Path]  # the state file used, or None (Darknet-style resume from the weights alone)
    cfg_changes: list  # differences tolerated with allow_cfg_changes
    weights_version: tuple
    layers_loaded: int


def _params_of(network, params):
    """(flat parameter array, callback to run after writing it) for a Network or a NetworkDesc + params."""
    core = getattr(network, "_core", None)
    if params is None:
        if core is None:
            raise TypeError("pass params= (the flat parameter array) with a NetworkDesc")
        params = core.params
    return params, (core.touch_params if core is not None else None)


def resume(
    network,
    weights_path,
    *,
    params=None,
    optimizer=None,
    clear=False,
    use_state=True,
    allow_cfg_changes=False,
    partial=False,
):
    """Load ``weights_path`` and, when its state file matches, the training state saved beside it.

    ``network`` is a ``pydarknet.Network`` (its buffer is loaded) or a NetworkDesc with ``params``. Without a
    state file (or with ``use_state=False``) this is Darknet's resume: iteration = seen / images per iteration,
    fresh momentum. ``clear=True`` is Darknet's ``-clear``: the weights only, iteration and seen 0.
    ``partial=True`` accepts a backbone file (``yolov4.conv.137``) holding only the first layers.
    """
    desc = getattr(network, "desc", network)
    params, touch = _params_of(network, params)
    version, seen, loaded = weights_io.load_into(desc, params, weights_path, partial=partial)
    if touch:
        touch()
    info = ResumeInfo(int(seen) // images_per_iteration(desc), int(seen), -1.0, None, {}, None, [], version, loaded)
    if clear:
        info.iteration, info.seen = 0, 0
        return info
    if not use_state:
        return info
    candidates = [p for p in (state_path_for(weights_path), _pending_path(state_path_for(weights_path))) if p.exists()]
    if not candidates:
        return info
    crc = _file_crc(desc, params)
    metas = [load_state(p, arrays=False) for p in candidates]
    chosen = next((m for m in metas if m.matches(seen, crc)), None)
    if chosen is None:
        found = ", ".join(f"{m.path.name} (iteration {m.iteration})" for m in metas)
        raise CheckpointError(
            f"the training state beside it ({found}) was not written with these weights (iteration "
            f"{info.iteration}); resume without it (Darknet-style, fresh momentum) or from the matching weights",
            weights_path,
        )
    saved = load_state(chosen.path)
    info.cfg_changes = saved.check(desc, allow_cfg_changes)
    saved.restore(desc, params, optimizer)
    if touch:
        touch()
    meta = saved.meta
    info.iteration, info.seen = meta["iteration"], meta["seen"]
    info.best_map, info.seed, info.extra, info.state_path = meta["best_map"], meta["seed"], meta["extra"], saved.path
    return info


# ----- Darknet's backup files -----------------------------------------------------------------------------------
class CheckpointManager:
    """Darknet's backup-folder naming and saving rules (see the module doc).

    ``start_iteration`` is the iteration training resumes from (Darknet's ``iter_save``/``iter_save_last`` start
    there). Call ``after_iteration`` once per completed iteration, ``save_best`` after each mAP evaluation and
    ``save_final`` at the end.
    """

    def __init__(self, backup_dir, cfg, network, *, save_every=None, save_last_every=100, start_iteration=0):
        self.desc = getattr(network, "desc", network)
        self.backup_dir = Path(backup_dir)
        self.base = darknet_base_name(cfg)
        max_batches = int(self.desc.net["max_batches"])
        self.save_every = int(save_every) if save_every else (1000 if max_batches < 10000 else 10000)
        self.save_last_every = int(save_last_every)
        if self.save_every < 1 or self.save_last_every < 1:
            raise ValueError("save intervals must be at least 1 iteration")
        self.iter_save = self.iter_save_last = int(start_iteration)

    def path(self, which):
        """``which``: an iteration number, or "last", "final", "best", "ema"."""
        return self.backup_dir / f"{self.base}_{which}.weights"

    def plan(self, iteration):
        """What Darknet would write after ``iteration`` (without writing or advancing anything)."""
        out = []
        if iteration >= self.iter_save + self.save_every or iteration % self.save_every == 0:
            out.append(iteration)
        if self.save_every > self.save_last_every and (
            iteration >= self.iter_save_last + self.save_last_every
            or (iteration % self.save_last_every == 0 and iteration > 1)
        ):
            out.append("last")
        return out

    def _seen(self, iteration):
        return int(iteration) * images_per_iteration(self.desc)

    def after_iteration(self, params, state, optimizer=None):
        """Save what Darknet saves after ``state.iteration``; returns the paths written."""
        params = getattr(getattr(params, "_core", None), "params", params)
        iteration = int(state.iteration)
        written = []
        for item in self.plan(iteration):
            if item == "last":
                self.iter_save_last = iteration
                written += self.save_last(params, state, optimizer)
            else:
                self.iter_save = iteration
                written.append(self._save(self.path(item), params, iteration))
        return written

    def _save(self, path, params, iteration):
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        save_weights(path, self.desc, params, self._seen(iteration))
        return path

    def save_last(self, params, state, optimizer=None):
        """``_last.weights`` with its state file (and ``_ema.weights`` once the EMA has started)."""
        params = getattr(getattr(params, "_core", None), "params", params)
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        weights_path = self.path("last")
        final_state = state_path_for(weights_path)
        pending = _pending_path(final_state)
        save_state(pending, self.desc, params, state, optimizer)
        self._save(weights_path, params, state.iteration)
        os.replace(pending, final_state)
        fsync_dir(self.backup_dir)
        written = [weights_path, final_state]
        ema = getattr(optimizer, "ema", None)
        if ema is not None and ema.initialized:
            written.append(self._save(self.path("ema"), ema.averaged(params), state.iteration))
        return written

    def save_best(self, params, state, map_value, optimizer=None):
        """Darknet's rule: a mAP ``>=`` the best so far becomes the best and is saved to ``_best.weights``."""
        if map_value >= state.best_map:
            state.best_map = float(map_value)
            params = getattr(getattr(params, "_core", None), "params", params)
            return self._save(self.path("best"), params, state.iteration)
        return None

    def save_final(self, params, state):
        params = getattr(getattr(params, "_core", None), "params", params)
        return self._save(self.path("final"), params, state.iteration)


# ----- darknet partial ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartialResult:
    path: Path
    layers: int  # layers written (0 .. layers-1)
    floats: int
    bytes: int


def partial(cfg, weights_path, out_path, layers, *, lenient=False):
    """Darknet's ``darknet partial cfg weights out N``: the first ``layers`` layers of ``weights_path`` written to
    ``out_path`` with ``seen = 0`` (``darknet.c`` ``partial``: ``load_weights_upto``, ``seen = cur_iteration = 0``,
    ``save_weights_upto``). The input may be a full or a partial file but must hold those layers."""
    desc = load_network_desc(cfg, lenient=lenient)
    n = int(layers)
    if not 1 <= n <= len(desc.layers):
        raise ValueError(
            f"the number of layers to keep must be between 1 and {len(desc.layers)} (the layers of {cfg}), got {layers}"
        )
    params = np.zeros(desc.param_count, np.float32)
    version, _, _ = weights_io.load_into(desc, params, weights_path, partial=True)
    need = weights_io.expected_bytes(desc, cutoff=n, version=version)
    have = Path(weights_path).stat().st_size
    if have < need:
        raise WeightsError(
            f"the file is {have:,} bytes but the first {n} layers of {desc.path} need {need:,}; it "
            f"holds fewer layers than asked for",
            weights_path,
        )
    weights_io.save_from(desc, params, out_path, cutoff=n, seen=0)
    fsync_dir(Path(out_path).parent)
    floats = sum(t.size for _, t in weights_io.file_tensors(desc, n))
    return PartialResult(Path(out_path), n, floats, Path(out_path).stat().st_size)
