"""The training data loader: reproducible, parallel batches of augmented images with their boxes.

Every batch is a pure function of ``(seed, iteration)`` and every image in it of ``(seed, iteration, slot)``:
the random numbers come from counter-based seeds (``numpy.random.default_rng([seed, stream, iteration,
slot])``), never from a generator that carries state from one batch to the next. So a run resumed at iteration
``k`` sees exactly the batches the first run would have seen from ``k`` on, without saving any random state,
and the number of worker processes cannot change a single pixel.

* **Order**: the ``n``-th image used in training (``n = iteration*batch + slot``) is image ``n mod N`` of a
  seeded permutation of the usable images, a new permutation every epoch (Darknet instead picks images at
  random with replacement). The extra images of a mosaic or a mixup are drawn at random from all images.
* **Usable images**: the label files are checked when the loader is built (:func:`pydarknet.data.parse_labels`);
  images whose labels are bad, and images that do not exist, are left out and written to the backup folder's
  ``bad_label.list`` / ``bad.list``. An image that exists but cannot be decoded is found while loading: the next
  image of the epoch's order takes its place (the same one in every run) and it goes to ``bad.list``.
* **Modes**: with ``mosaic`` (or ``mixup``) in the cfg, half of the batches (a seeded coin per iteration) are
  mosaics (mixups); the others are plain.
* **Multi-scale** (:func:`input_size`): Darknet's rule with the last ``[yolo]``'s ``random``.
* **Shards** (data-parallel training): ``slots`` picks which slots of each batch this loader produces, in that
  order. Every image is still the one of its slot in the whole batch (same image, same augmentation), so the
  processes of a data-parallel run together see exactly the batches of a single-process run.
* **Workers**: ``workers=0`` computes each batch in the calling thread. ``workers>0`` runs a pool of processes
  that compute single images; after each batch the next ``prefetch`` batches are queued (at the sizes
  :func:`input_size` gives), so a trainer that takes longer per batch than the loader never waits. The workers
  die with the process that owns the loader, even when it is killed with SIGKILL: on Linux by the parent-death
  signal, everywhere by a thread in each worker that notices within 0.25 s that its parent changed.
* **Batch memory** (``allocate``): by default each batch is a new numpy array. With ``allocate`` (e.g. a CUDA
  network's :meth:`~pydarknet.Network.staging_buffer`, page-locked memory the upload reads in place), batches
  are assembled straight into arrays it returns -- by the calling thread, or with workers by the thread that
  receives their images -- and those arrays are recycled: one is reused only once nothing outside the loader
  references it or any view of it any more, so a batch never changes under whoever still holds it.

Usage::

    ds = pydarknet.data.load_dataset("obj.data")
    with Loader.from_dataset(ds, "yolov4-tiny-obj.cfg", seed=1, workers=4) as loader:
        for it in range(start, max_batches):
            images, truths = loader.batch(it)   # (n, 3, h, w) float32 RGB in [0, 1]; n arrays (k, 5) x y w h class
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from pydarknet.data.augment import AugmentSettings, augment_sample, rand_scale, settings_from_network
from pydarknet.data.dataset import DataError, Dataset
from pydarknet.data.images import TO_FLOAT, load_image
from pydarknet.data.labels import ProblemLog, label_path, parse_labels

__all__ = ["Loader", "input_size", "STREAM_SAMPLE", "STREAM_BATCH", "STREAM_EPOCH", "STREAM_SCALE"]

# Independent random streams: the second entry of every seed.
STREAM_SAMPLE, STREAM_BATCH, STREAM_EPOCH, STREAM_SCALE = 0, 1, 2, 3
MULTISCALE_PERIOD = 10  # Darknet resizes the network every 10 iterations
MULTISCALE_TAIL = 100  # ... and uses the largest size for the last 100
PARTS = {"plain": 1, "mixup": 2, "mosaic": 4}


def _round_half_away(x):
    """C's ``roundl``."""
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def input_size(iteration, s: AugmentSettings, seed=0, max_batches=None) -> Tuple[int, int]:
    """The network input size (width, height) for ``iteration`` under Darknet's multi-scale rule.

    With ``random = 0`` it is the cfg's size. Otherwise the size is drawn once per block of 10 iterations:
    ``coef = 1.4`` (``random=1``) or ``random``; ``r = rand_scale(coef)``; ``dim = roundl(r*init/step + 1)*step``
    (``step = resize_step``), the initial size when ``r < 1`` would still make it larger; at least ``step``. The
    first block and every block starting in the last 100 iterations use the largest size,
    ``roundl(coef*init/step + 1)*step``. Darknet applies "first" to the first block after every (re)start; here
    it is the first block of training, so that a resumed run gets the same sizes.
    """
    w0, h0 = int(s.width), int(s.height)
    if not s.random:
        return w0, h0
    coef = 1.4 if s.random == 1 else float(s.random)
    step = int(s.resize_step) or 32
    max_batches = s.max_batches if max_batches is None else max_batches
    block_start = (int(iteration) // MULTISCALE_PERIOD) * MULTISCALE_PERIOD
    max_w = _round_half_away(coef * w0 / step + 1) * step
    max_h = _round_half_away(coef * h0 / step + 1) * step
    if block_start == 0 or (max_batches and block_start > max_batches - MULTISCALE_TAIL):
        w, h = max_w, max_h
    else:
        rng = np.random.default_rng([int(seed), STREAM_SCALE, block_start // MULTISCALE_PERIOD])
        r = rand_scale(rng, coef)
        w = _round_half_away(r * w0 / step + 1) * step
        h = _round_half_away(r * h0 / step + 1) * step
        if r < 1 and (w > w0 or h > h0):
            w, h = w0, h0
    return max(w, step), max(h, step)


# ----- the part that runs in workers -------------------------------------------------------------------------
class _Source:
    """What computing a sample needs (picklable): image paths, their boxes, the settings and the seed."""

    def __init__(self, paths, boxes, settings, seed, batch):
        self.paths = paths
        self.boxes = boxes
        self.settings = settings
        self.seed = int(seed)
        self.batch = int(batch)
        self._perms = {}
        self._unreadable = {}  # index -> reason, found by this process

    def permutation(self, epoch):
        perm = self._perms.get(epoch)
        if perm is None:
            if len(self._perms) > 2:
                self._perms.clear()
            perm = np.random.default_rng([self.seed, STREAM_EPOCH, int(epoch)]).permutation(len(self.paths))
            self._perms[epoch] = perm
        return perm

    def _read(self, index, problems):
        if index in self._unreadable:
            problems.append((self.paths[index], self._unreadable[index]))
            return None
        try:
            rgb, _ = load_image(self.paths[index])
        except (OSError, ValueError) as e:  # FileNotFoundError, ImageError, decoder errors
            reason = str(e).replace(self.paths[index] + ": ", "", 1) or type(e).__name__
            self._unreadable[index] = reason
            problems.append((self.paths[index], reason))
            return None
        return rgb, self.boxes[index]

    def read_walking(self, first, order, problems):
        """The image at position ``first`` of ``order`` (a function position -> index), or the next readable one."""
        n = len(self.paths)
        for step in range(n):
            part = self._read(order((first + step) % n), problems)
            if part is not None:
                return part
        raise DataError(f"none of the {n} training images can be read (see bad.list)")

    def sample(self, iteration, slot, w, h, mode):
        """One augmented sample: ``(image float32 (3, h, w), boxes float32 (k, 5), problems)``."""
        n = len(self.paths)
        g = int(iteration) * self.batch + int(slot)
        epoch, pos = divmod(g, n)
        perm = self.permutation(epoch)
        rng = np.random.default_rng([self.seed, STREAM_SAMPLE, int(iteration), int(slot)])
        extra = rng.integers(n, size=3)
        problems = []
        parts = [self.read_walking(pos, lambda i: perm[i], problems)]
        for k in range(PARTS[mode] - 1):
            parts.append(self.read_walking(int(extra[k]), lambda i: i, problems))
        img, boxes = augment_sample(parts, w, h, self.settings, rng, mode)
        if img.dtype == np.uint8:
            planar = TO_FLOAT[img].transpose(2, 0, 1)
        else:
            planar = img.transpose(2, 0, 1)
        return np.ascontiguousarray(planar, dtype=np.float32), boxes, problems


_WORKER_SOURCE: Optional[_Source] = None

# Workers must die with the process that owns the loader: a killed trainer (kill -9, OOM killer) cannot shut its
# pool down, and a forked worker blocked on the task queue never sees EOF because it holds copies of the queue's
# pipes itself. Two mechanisms, either enough: Linux's parent-death signal, delivered by the kernel the moment the
# parent goes, and a watcher thread in each worker that polls for a change of parent (reparenting to init or a
# subreaper) on every system.
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_SECONDS = 0.25
_USE_PDEATHSIG = True  # tests turn it off to exercise the portable watcher alone


def _set_parent_death_signal() -> bool:
    """Ask the kernel to SIGKILL this process when its parent thread exits (Linux only); True if it took."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent:
            os._exit(1)  # the owner is gone: nothing to clean up, nobody to report to


def _init_worker(source, owner, deathsig):
    """Pool initializer. ``owner``: the pid that should be this worker's parent (None with forkserver, whose
    workers are children of the server); ``deathsig``: whether the parent-death signal may be used (only when
    the pool forked all its workers at once from the main thread: the signal follows the thread that forked,
    not the process)."""
    global _WORKER_SOURCE
    _WORKER_SOURCE = source
    parent = os.getppid()
    if deathsig and _USE_PDEATHSIG:
        _set_parent_death_signal()
    if owner is not None and parent != owner:
        os._exit(1)  # the owner died before the signal was armed
    threading.Thread(target=_watch_parent, args=(parent,), name="pydarknet-parent-watch", daemon=True).start()


def _worker_sample(iteration, slot, w, h, mode):
    return _WORKER_SOURCE.sample(iteration, slot, w, h, mode)


def _worker_ready(_=None):
    return os.getpid()


# ----- the loader --------------------------------------------------------------------------------------------
class _BufferPool:
    """Flat float32 arrays from ``allocate`` (page-locked memory is slow to allocate), handed out as views of the
    shape asked for. A view keeps its array referenced, so an array whose only reference is this pool's list is
    free: nobody still reads the batch that was built in it (including an upload queued from it, whose caller
    holds the view until it has run). At most ``keep`` free arrays are kept, the largest first."""

    def __init__(self, allocate: Callable[[Tuple[int, ...]], np.ndarray], keep: int):
        self._allocate = allocate
        self._keep = max(1, int(keep))
        self._arrays = []
        self.allocations = 0  # arrays allocated so far (for the tests)

    def _free(self, k):
        return sys.getrefcount(self._arrays[k]) == 2  # this list and getrefcount's own argument

    def empty(self, shape) -> np.ndarray:
        need = math.prod(shape)
        free = [k for k in range(len(self._arrays)) if self._free(k)]
        fits = [k for k in free if self._arrays[k].size >= need]
        if fits:
            array = self._arrays[min(fits, key=lambda k: self._arrays[k].size)]
        else:
            array = np.asarray(self._allocate((need,)))
            if array.dtype != np.float32 or array.size < need or not array.flags.c_contiguous:
                raise ValueError(f"allocate{(need,)} must return a contiguous float32 array of {need} values")
            # Keep the array every view of it names as its base (numpy skips views in between), so that the views
            # handed out count as references to it.
            while not array.flags.owndata and type(array.base) is type(array):
                array = array.base
            self.allocations += 1
            # Too many free arrays (they were all too small): drop the smallest.
            drop = set(sorted(free, key=lambda k: self._arrays[k].size)[: max(0, len(free) - self._keep)])
            self._arrays = [a for k, a in enumerate(self._arrays) if k not in drop] + [array]
        return array.reshape(-1)[:need].reshape(shape)


class Loader:
    """Batches of augmented training images; see the module documentation.

    ``images``: image paths; ``classes``: the number of classes (labels are checked against it); ``settings``:
    an :class:`~pydarknet.augment.AugmentSettings` (see :func:`~pydarknet.augment.settings_from_network`);
    ``batch``: images per iteration (the cfg's ``batch``); ``problems``: a
    :class:`~pydarknet.data.ProblemLog`, or a folder to write ``bad.list``/``bad_label.list`` in, or None
    (kept in memory); ``max_batches``: overrides the settings' (multi-scale uses the largest size for the last
    100 iterations); ``start_method``: the multiprocessing start method (default ``fork`` where available);
    ``slots``: the slots of each batch to produce (default all ``batch`` of them; see the module documentation);
    ``allocate``: ``allocate(shape)`` returns a new float32 array the batches are assembled in, recycled as the
    module documentation says (default: a new numpy array per batch).
    """

    def __init__(
        self,
        images: Sequence[str],
        classes: int,
        settings: AugmentSettings,
        *,
        batch: int,
        seed: int = 0,
        workers: int = 0,
        prefetch: int = 2,
        problems=None,
        max_batches: Optional[int] = None,
        start_method: Optional[str] = None,
        slots: Optional[Sequence[int]] = None,
        allocate: Optional[Callable[[Tuple[int, ...]], np.ndarray]] = None,
    ):
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if workers < 0 or prefetch < 0:
            raise ValueError("workers and prefetch must be >= 0")
        if max_batches is not None:
            settings = replace(settings, max_batches=int(max_batches))
        self.settings = settings
        self.classes = int(classes)
        self.batch_size = int(batch)
        self.slots = list(range(self.batch_size)) if slots is None else [int(k) for k in slots]
        if not self.slots or any(not 0 <= k < self.batch_size for k in self.slots):
            raise ValueError(f"slots must be a non-empty list of slots in 0..{self.batch_size - 1}, got {slots}")
        self.seed = int(seed)
        self.workers = int(workers)
        self.prefetch = int(prefetch)
        self.problems = problems if isinstance(problems, ProblemLog) else ProblemLog(problems)
        paths, boxes = self._scan(images)
        if not paths:
            raise DataError(
                f"no usable training images among {len(images)} (see bad.list and bad_label.list"
                + (f" in {self.problems.folder})" if self.problems.folder else ")")
            )
        self.images = paths
        self._source = _Source(paths, boxes, settings, self.seed, self.batch_size)
        self._pool = None
        self._pending = {}
        # The batch being handed out and `prefetch` queued ones, and one more: the trainer's staged uploads hold
        # the previous batch until its last pass has run.
        self._buffers = _BufferPool(allocate, keep=self.prefetch + 3) if allocate is not None else None
        if self.workers:
            method = start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            owner = os.getpid() if method in ("fork", "spawn") else None
            deathsig = method == "fork" and threading.current_thread() is threading.main_thread()
            self._pool = cf.ProcessPoolExecutor(
                self.workers,
                mp_context=mp.get_context(method),
                initializer=_init_worker,
                initargs=(self._source, owner, deathsig),
            )
            # Start the processes now, before the caller starts threads of its own.
            list(self._pool.map(_worker_ready, range(self.workers)))

    @classmethod
    def from_dataset(cls, dataset: Dataset, net, *, batch: Optional[int] = None, **kwargs):
        """A loader over ``dataset.train`` with the augmentation of ``net`` (a network, its description or a
        cfg path); ``batch`` defaults to the cfg's; problems go to the dataset's backup folder."""
        from pydarknet.core.graph import NetworkDesc, load_network_desc

        settings = settings_from_network(net)
        if batch is None:
            desc = (
                net
                if isinstance(net, NetworkDesc)
                else getattr(net, "desc", None) or load_network_desc(net, lenient=True)
            )
            batch = int(desc.net["batch"])
        kwargs.setdefault("problems", dataset.backup)
        return cls(dataset.train, dataset.classes, settings, batch=batch, **kwargs)

    # ----- set-up --------------------------------------------------------------------------------------------
    def _scan(self, images):
        paths, boxes = [], []
        for img in images:
            img = str(img)
            if not os.path.isfile(img):
                self.problems.image(img, "no such file" if not os.path.exists(img) else "not a file")
                continue
            lp = label_path(img)
            if not os.path.isfile(lp):
                self.problems.image(lp, f"no label file for {img}; the image is used without objects")
                b = np.zeros((0, 5), np.float32)
            else:
                b, bad = parse_labels(lp, self.classes)
                if bad:
                    for reason in bad:
                        self.problems.label(lp, reason)
                    continue
            paths.append(img)
            boxes.append(b)
        return paths, boxes

    # ----- schedule ------------------------------------------------------------------------------------------
    def __len__(self):
        return len(self.images)

    @property
    def labels(self):
        """The boxes of each usable image (float32 ``(k, 5)``: x y w h class), in the order of ``images``."""
        return list(self._source.boxes)

    def epoch(self, iteration) -> float:
        """How many passes over the usable images the batches before ``iteration`` make."""
        return iteration * self.batch_size / len(self.images)

    def input_size(self, iteration) -> Tuple[int, int]:
        """The network input size for ``iteration`` (Darknet's multi-scale rule; see :func:`input_size`)."""
        return input_size(iteration, self.settings, self.seed)

    def mode(self, iteration) -> str:
        """``plain``, ``mosaic`` or ``mixup`` for this iteration's batch (mixing on half of the batches)."""
        s = self.settings
        if not (s.mosaic or s.mixup):
            return "plain"
        coin = np.random.default_rng([self.seed, STREAM_BATCH, int(iteration)]).integers(2)
        if coin == 0:
            return "plain"
        return "mosaic" if s.mosaic else "mixup"

    # ----- batches -------------------------------------------------------------------------------------------
    def sample(self, iteration, slot, width=None, height=None, mode=None):
        """One image of a batch, computed here: ``(image float32 (3, h, w), boxes float32 (k, 5))``."""
        w, h = self._size(iteration, width, height)
        img, boxes, problems = self._source.sample(iteration, slot, w, h, mode or self.mode(iteration))
        self._log(problems)
        return img, boxes

    def batch(self, iteration, width=None, height=None):
        """The batch of ``iteration``: ``(images float32 (n, 3, h, w) RGB in [0, 1], truths)`` with ``truths``
        a list of ``n`` float32 arrays ``(k, 5)``: ``x, y, w, h`` relative to the input, then the class.
        The size defaults to :meth:`input_size`."""
        w, h = self._size(iteration, width, height)
        mode = self.mode(iteration)
        if self._pool is None:
            images = self._empty((len(self.slots), 3, h, w))
            truths = []
            for i, slot in enumerate(self.slots):
                img, boxes, problems = self._source.sample(iteration, slot, w, h, mode)
                images[i] = img
                truths.append(boxes)
                self._log(problems)
            return images, truths
        key = (int(iteration), w, h, mode)
        pending = self._pending.pop(key, None) or self._submit(*key)
        self._schedule(int(iteration))
        return self._collect(pending)

    def _size(self, iteration, width, height):
        if width is None or height is None:
            dw, dh = self.input_size(iteration)
            width, height = width or dw, height or dh
        return int(width), int(height)

    def _empty(self, shape):
        return np.empty(shape, np.float32) if self._buffers is None else self._buffers.empty(shape)

    def _submit(self, iteration, w, h, mode):
        images = self._empty((len(self.slots), 3, h, w))
        truths = [None] * len(self.slots)
        stored = [threading.Event() for _ in self.slots]
        futures = []
        # The callbacks reach the batch through `target`, emptied once the batch is collected: a finished future
        # the executor still holds for a moment then holds no batch (the recycling of `allocate` counts holders).
        target = [images]
        for i, slot in enumerate(self.slots):
            fut = self._pool.submit(_worker_sample, iteration, slot, w, h, mode)

            def store(f, slot=i):
                # Runs in the executor's result thread: the copy happens while the caller trains.
                try:
                    if not f.cancelled() and f.exception() is None and target[0] is not None:
                        img, boxes, _ = f.result()
                        target[0][slot] = img
                        truths[slot] = boxes
                finally:
                    stored[slot].set()

            fut.add_done_callback(store)
            futures.append(fut)
        return images, truths, futures, stored, target

    def _schedule(self, iteration):
        """Queue the next ``prefetch`` batches; drop queued ones that will not be asked for."""
        wanted = set()
        for it in range(iteration + 1, iteration + 1 + self.prefetch):
            w, h = self.input_size(it)
            wanted.add((it, w, h, self.mode(it)))
        for key in list(self._pending):
            if key not in wanted:
                for f in self._pending.pop(key)[2]:
                    f.cancel()
        for key in sorted(wanted):
            if key not in self._pending:
                self._pending[key] = self._submit(*key)

    def _collect(self, pending):
        images, truths, futures, stored, target = pending
        for f, done in zip(futures, stored):
            err = f.exception()  # waits for the worker
            if err is not None:
                raise err
            done.wait()  # and for the copy into the batch
            self._log(f.result()[2])
        target[0] = None
        return images, list(truths)

    def _log(self, problems):
        for path, reason in problems:
            self.problems.image(path, f"cannot read the image ({reason}); skipped")

    # ----- life cycle ----------------------------------------------------------------------------------------
    def close(self):
        """Stop the worker processes (queued batches are dropped)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            for _, _, futures, _, _ in self._pending.values():
                for f in futures:
                    f.cancel()
            self._pending.clear()
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the pool may already be gone
            pass
