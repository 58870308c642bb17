"""Darknet-style training: ``pydarknet train CFG DATA [WEIGHTS]``.

One iteration is Darknet's: ``batch`` images (from the cfg, or ``--batch``) in ``subdivisions`` forward/backward
passes of ``batch/subdivisions`` images each, the gradients summed, then one weight update
(:class:`pydarknet.optim.Optimizer`) at the learning rate of :func:`pydarknet.schedule.learning_rate`. The
``[yolo]`` loss is :func:`pydarknet.yolo_loss.yolo_loss`; batches come from :class:`pydarknet.loader.Loader`,
multi-scale sizes included; backups follow Darknet's naming (:class:`pydarknet.checkpoint.CheckpointManager`).

Everything random is a function of ``(seed, iteration)`` (the loader's augmentation and order, the dropout
masks), and the optimizer's buffers are saved beside ``_last.weights``, so a run stopped and resumed from
``_last`` produces bit-identical weights to one that never stopped.

A non-finite loss or gradient skips that update (nothing is changed: the batch-norm rolling statistics the
forward pass moved are put back) and names the first layer whose output or
gradient is not finite; after ``max_nonfinite`` such iterations in a row the run stops with a
:class:`TrainingError` that says what to try. NaNs are never replaced by zeros.

Beside the weights (in the backup folder) the trainer keeps ``results.csv`` (one row per iteration) and
``chart.png`` (loss curve and mAP points, redrawn every ``chart_every`` iterations).

A run can be killed at any moment (``kill -9``, a power cut) and resumed from ``_last.weights``:

* each results.csv row is flushed and fsync'ed before the checkpoint of its iteration is written, so a saved
  iteration always has its row; on resume the rows after the checkpoint's iteration are dropped (they will be
  computed again), so the file ends with exactly one row for each iteration 1..N;
* the temporaries of atomic writes that a killed run left in the backup folder are removed at start;
* chart.png is drawn from the whole of results.csv, the iterations before the resume included.

Under ``mpirun -n N`` (or ``srun``) the run is data-parallel (:mod:`pydarknet.train.distributed`): each rank
loads its shard of every global batch, the gradients are summed over the ranks before the update, batch-norm
statistics are synchronized (``sync_bn``), every rank takes the same non-finite decision, and only rank 0
writes results.csv, chart.png and the weights, and runs ``--map``.

With ``device="cuda"`` the forward and backward passes and the update run on the GPU, with the parameters,
gradients and the optimizer's buffers kept in device memory across iterations (the host copies are brought up to
date only to write a checkpoint, evaluate ``--map``, or end the run; see pydarknet.core.network and
``Optimizer.step_device``). The ``[yolo]`` loss runs on the device too (``device_yolo_loss``): the heads' outputs
never come to the host, only the truths go up and a few sums come back (``Trainer._head_losses`` is the one place
that chooses the loss). The loader assembles each batch in page-locked host memory, from which each pass's images
are uploaded in place on a copy stream while the previous pass computes. A multi-scale size change moves no
parameters: the resized networks share the device parameter and gradient buffers. Data-parallel runs on GPUs sum
the gradients with NCCL or through a host copy (pydarknet.train.distributed.GradientExchange), and synchronized
batch-norm hands the device batch-norm's per-channel sums to the same reducer as on the CPU.
"""

from __future__ import annotations

import collections
import csv
import math
import os
import pathlib
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np

from pydarknet.core.graph import load_network_desc
from pydarknet.core.network import set_batch_norm_reducer
from pydarknet.data.dataset import load_dataset
from pydarknet.data.images import image_size
from pydarknet.data.labels import label_path, parse_labels
from pydarknet.data.loader import Loader
from pydarknet.errors import TrainingError, UsageError, WriteError
from pydarknet.train import checkpoint as ckpt
from pydarknet.train.distributed import (
    Communicator,
    GradientExchange,
    device_for_rank,
    fingerprint,
    shard_sizes_text,
    shard_slots,
)
from pydarknet.train.optim import LossScaler, Optimizer
from pydarknet.train.schedule import images_per_iteration, learning_rate
from pydarknet.train.yolo_loss import cost_from_terms, device_yolo_loss, yolo_loss
from pydarknet.utils.atomic import atomic_write_text, remove_stale_temporaries

RESULTS_HEADER = [
    "iteration",
    "loss",
    "avg_loss",
    "learning_rate",
    "seconds",
    "images",
    "width",
    "height",
    "skipped",
    "map",
]


@dataclass
class TrainOptions:
    """What ``pydarknet train`` lets a user change; None keeps the cfg's / .data's value."""

    backup: Optional[str] = None  # folder for weights, results.csv, chart.png, bad.list
    max_batches: Optional[int] = None  # overrides [net] max_batches
    batch: Optional[int] = None  # overrides [net] batch
    subdivisions: Optional[int] = None  # overrides [net] subdivisions
    seed: Optional[int] = None  # default: the resumed run's seed, else 0
    workers: int = 0  # loader processes (0: load in this process)
    device: str = "cpu"
    # Mixed precision on a CUDA device (cuda/NOTES.md): "fp16" (with dynamic loss scaling) or "bf16" round the
    # convolution and [connected] operands to that type; storage, batch-norm, loss and update stay float32.
    precision: str = "fp32"
    loss_scale_growth_interval: int = 2000  # fp16: finite updates in a row before the loss scale doubles
    clear: bool = False  # Darknet's -clear: start counting iterations from 0
    map: bool = False  # evaluate on the valid list and keep _best.weights
    map_every: Optional[int] = None  # iterations between evaluations (default as Darknet: max(100, 4 epochs))
    save_every: Optional[int] = None  # <cfg>_<iter>.weights interval (default Darknet's 1000 / 10000)
    save_last_every: int = 100  # <cfg>_last.weights interval
    chart_every: int = 100
    max_nonfinite: int = 10  # non-finite iterations in a row before giving up
    lenient: bool = False  # cfg parsing
    quiet: bool = False
    progress: Optional[bool] = None  # progress bar (default: when stderr is a terminal)
    sync_bn: bool = True  # data-parallel runs: batch-norm statistics over all ranks' images
    dist_timeout: float = 600.0  # data-parallel runs: seconds a rank waits for the others before giving up
    dist_backend: str = "auto"  # data-parallel GPU runs: how gradients are summed (auto, mpi, nccl)


@dataclass
class IterationLog:
    iteration: int
    loss: float
    avg_loss: float
    rate: float
    seconds: float
    images: int
    width: int
    height: int
    skipped: bool = False
    map: Optional[float] = None


@dataclass
class TrainResult:
    iterations: int  # iterations completed in total (including before a resume)
    final_weights: Optional[pathlib.Path]
    best_map: float
    history: List[IterationLog] = field(default_factory=list)


def _finite(x):
    return bool(np.isfinite(x).all())


def _results_row(entry: IterationLog) -> list:
    return [
        entry.iteration,
        f"{entry.loss:.6f}",
        f"{entry.avg_loss:.6f}",
        f"{entry.rate:.8g}",
        f"{entry.seconds:.4f}",
        entry.images,
        entry.width,
        entry.height,
        int(entry.skipped),
        "" if entry.map is None else f"{entry.map:.6f}",
    ]


def read_results(path) -> List[List[str]]:
    """The rows of a results.csv (without the header), one per iteration in increasing order. A row that is not
    whole (a write cut by a crash) is left out; an iteration written twice keeps its later row."""
    try:
        with open(path, newline="") as f:
            lines = list(csv.reader(f))
    except FileNotFoundError:
        return []
    rows = {}
    for row in lines:
        if len(row) != len(RESULTS_HEADER) or not row[0].isdigit():
            continue  # the header, or a torn row
        try:
            [float(v) for v in row[1:9] + [row[9] or "0"]]
        except ValueError:
            continue
        rows[int(row[0])] = row
    return [rows[k] for k in sorted(rows)]


def reconcile_results(path, iteration: int) -> List[List[str]]:
    """Make results.csv agree with a run resumed after ``iteration``: the rows of iterations 1..``iteration``
    are kept, later ones dropped (the resumed run computes them again). Rewritten atomically; returns the rows
    kept."""
    rows = [r for r in read_results(path) if 1 <= int(r[0]) <= int(iteration)]
    lines = [RESULTS_HEADER] + rows
    atomic_write_text(path, "".join(",".join(r) + "\r\n" for r in lines))
    return rows


@dataclass
class ChartData:
    """What chart.png shows: loss and average loss per iteration, mAP@0.5 (0..1) at the evaluated ones."""

    iterations: List[int]
    loss: List[float]
    avg_loss: List[float]
    map_iterations: List[int]
    maps: List[float]


def chart_data(path) -> ChartData:
    """The chart's data, read from a results.csv (the whole history of the run, resumes included)."""
    rows = read_results(path)
    maps = [(int(r[0]), float(r[9])) for r in rows if r[9] != ""]
    return ChartData(
        [int(r[0]) for r in rows],
        [float(r[1]) for r in rows],
        [float(r[2]) for r in rows],
        [m[0] for m in maps],
        [m[1] for m in maps],
    )


def chart_figure(data: ChartData, title: str, max_batches: int, max_loss: float = 20.0):
    """The matplotlib figure of chart.png: loss curves on the left axis, the mAP line (with a legend entry and
    each value written beside its point) on the right one; the x axis leaves room after the last point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    ax.plot(data.iterations, data.loss, color="#9ab", linewidth=0.8, label="loss")
    ax.plot(data.iterations, data.avg_loss, color="#1f4e99", linewidth=1.5, label="avg loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    right = max([max_batches] + data.iterations)
    ax.set_xlim(0, right * 1.05)  # the last point and its label stay inside the axes
    finite = [v for v in data.avg_loss if math.isfinite(v) and v >= 0]
    if finite:
        ax.set_ylim(0, min(max(finite) * 1.2, max_loss or 20))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if data.maps:
        ax2 = ax.twinx()
        percent = [100 * m for m in data.maps]
        (line,) = ax2.plot(data.map_iterations, percent, "o-", color="#c0392b", label="mAP@0.5 %", clip_on=False)
        for x, y in zip(data.map_iterations, percent):
            ax2.annotate(
                f"{y:.1f}%",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="right" if x == data.map_iterations[-1] else "center",
                fontsize=8,
                color="#c0392b",
            )
        ax2.set_ylim(0, 108)  # room above 100 % for a point and its label
        ax2.set_yticks(range(0, 101, 20))
        ax2.set_ylabel("mAP@0.5 (%)")
        handles.append(line)
        labels.append(line.get_label())
    # Above the plot, in a row: inside it the legend would hide the curves or the last mAP value.
    fig.axes[-1].legend(
        handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), frameon=False, fontsize=9
    )
    ax.set_title(title, pad=22)
    fig.tight_layout()
    return fig


class Trainer:
    """A training run. ``cfg``: the model cfg; ``data``: a Darknet ``.data`` or ultralytics ``data.yaml``;
    ``weights``: optional start weights -- a full file, a backbone prefix (``yolov4-tiny.conv.29``), or a
    ``_last.weights`` whose state file makes the run continue exactly where it stopped."""

    # Device runs stage each pass's images (Network.stage_input) so the upload overlaps the previous pass; the
    # tests turn it off to compare with plain uploads.
    _stage_inputs = True
    # ... and the loader assembles the batches in page-locked memory (Network.staging_buffer), which the staged
    # upload reads in place; the tests turn it off (before building the trainer) to compare with numpy batches.
    _pinned_batches = True

    def __init__(
        self,
        cfg,
        data,
        weights=None,
        options: Optional[TrainOptions] = None,
        log: Optional[Callable[[str], None]] = None,
        comm: Optional[Communicator] = None,
    ):
        import pydarknet

        self.options = o = options or TrainOptions()
        self.comm = comm if comm is not None else Communicator.create(timeout=o.dist_timeout)
        self.cfg = str(cfg)
        self.log = log or (lambda line: None if o.quiet else print(line, flush=True))
        if not self.comm.is_root:
            self.log = lambda line: None  # rank 0 speaks for the run; errors still surface on every rank
        self.dataset = load_dataset(data, backup=o.backup)
        self.backup = pathlib.Path(self.dataset.backup)
        if self.backup.exists() and not self.backup.is_dir():
            raise TrainingError(
                f"the backup folder {self.backup} is a file, not a folder; name a folder (it is created if missing)"
            )
        if self.comm.is_root:
            for stale in remove_stale_temporaries(self.backup):
                self.log(f"removed {stale}, left by a run killed while writing")
        desc = load_network_desc(self.cfg, lenient=o.lenient)
        for key in ("batch", "subdivisions", "max_batches"):
            value = getattr(o, key)
            if value is not None:
                if value < 1:
                    raise ValueError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
                desc.net[key] = int(value)
        if int(desc.net["max_batches"]) < 1:
            raise TrainingError(
                f"{self.cfg}: [net] max_batches is {desc.net['max_batches']}; set it (or pass "
                f"--max-batches) to the number of iterations to train"
            )
        self.images_per_iteration = images_per_iteration(desc)
        self.subdivisions = int(desc.net["subdivisions"])
        self.mini_batch = self.images_per_iteration // self.subdivisions
        slots = shard_slots(self.comm.rank, self.comm.size, self.images_per_iteration, self.subdivisions)
        self.local_mini_batch = self.mini_batch // self.comm.size  # images per forward pass on this rank
        yolo = [desc.layers[i] for i in desc.yolo_layers]
        if not yolo:
            raise TrainingError(f"{self.cfg}: the network has no [yolo] layer; pydarknet trains detectors")
        classes = {int(l.options["classes"]) for l in yolo}
        if classes != {self.dataset.classes}:
            raise TrainingError(
                f"{self.cfg}: the [yolo] layers have classes={sorted(classes)} but "
                f"{self.dataset.source} has classes={self.dataset.classes}; set classes= in every "
                f"[yolo] and filters=(classes+5)*<anchors in mask> in the [convolutional] before it"
            )

        device = o.device
        if self.comm.distributed:
            from pydarknet import _core

            device = device_for_rank(device, _core.cuda_device_count())  # one GPU per rank of a machine
        precision = str(o.precision).strip().lower()
        if precision not in ("fp32", "fp16", "bf16"):
            raise UsageError(f"unknown training precision {o.precision!r}; use fp32, fp16 or bf16")
        if precision != "fp32" and not str(device).startswith("cuda"):
            raise UsageError(
                f"precision {precision} (mixed-precision training) needs a CUDA device (--device cuda); the CPU "
                f"trains in fp32"
            )
        self.net = pydarknet.Network(desc, device=device, seed=0 if o.seed is None else o.seed, precision=precision)
        # fp16's narrow range needs loss scaling; bf16 has float32's exponent range and needs none.
        self.scaler = LossScaler(growth_interval=o.loss_scale_growth_interval) if precision == "fp16" else None
        self.net.names = list(self.dataset.names)
        self.on_device = self.net.device != "cpu"
        if self.on_device:
            self.net._check_trainable()  # a layer without device training passes is named now, not mid-run
        self.desc = desc
        self.optimizer = Optimizer(self.net)
        self.state = ckpt.TrainState()
        self.avg_loss = -1.0
        if weights is not None:
            info = ckpt.resume(self.net, weights, optimizer=self.optimizer, clear=o.clear, partial=True)
            self.state.iteration = info.iteration
            self.state.best_map = info.best_map
            self.state.seed = info.seed
            self.avg_loss = float(info.extra.get("avg_loss", -1.0))
            if self.scaler is not None and "loss_scale" in info.extra:
                self.scaler.load_state_dict(info.extra["loss_scale"])
            how = "with its training state" if info.state_path else "(fresh momentum)"
            self.log(f"Loaded {info.layers_loaded} layers from {weights} {how}; iteration {info.iteration}")
        if o.seed is not None:
            self.state.seed = int(o.seed)
        elif self.state.seed is None:
            self.state.seed = 0
        self.seed = self.state.seed
        self.max_batches = int(desc.net["max_batches"])
        self.checkpoints = ckpt.CheckpointManager(
            self.backup,
            self.cfg,
            desc,
            save_every=o.save_every,
            save_last_every=o.save_last_every,
            start_iteration=self.state.iteration,
        )
        self.loader = Loader.from_dataset(
            self.dataset,
            desc,
            batch=self.images_per_iteration,
            seed=self.seed,
            workers=o.workers,
            slots=slots if self.comm.distributed else None,
            allocate=self.net.staging_buffer if self.on_device and self._pinned_batches else None,
            # One writer of bad.list / bad_label.list: rank 0 (it checks every label, as the others do).
            **({} if self.comm.is_root else {"problems": None}),
        )
        # The training forward moves the batch-norm rolling statistics; a skipped iteration puts them back.
        rolling = [
            np.arange(t.offset, t.offset + t.size)
            for l in desc.layers
            for t in l.tensors
            if t.name in ("rolling_mean", "rolling_variance")
        ]
        self._rolling = np.concatenate(rolling) if rolling else np.zeros(0, np.int64)
        self._nets = {}
        self.history: List[IterationLog] = []
        self.valid = self._validation_set() if o.map and self.comm.is_root else None
        self._reducer = None
        if self.comm.distributed:
            self._join(weights, slots)

    def _join(self, weights, slots):
        """Data-parallel start-up: refuse ranks that disagree on the cfg, weights, data or options; rank 0's
        parameters go to every rank (the optimizer state, loaded by each from the same file, is compared);
        synchronized batch-norm is switched on."""
        o = self.options
        with open(self.cfg, "rb") as f:
            cfg_text = f.read()
        self.comm.check_same(
            {
                "cfg": fingerprint(cfg_text),
                "batch/subdivisions/max_batches": (self.images_per_iteration, self.subdivisions, self.max_batches),
                "weights": fingerprint(self.net.flat_params) if weights is not None else "none",
                "optimizer state": fingerprint(*[x for kv in sorted(self.optimizer.state_dict().items()) for x in kv]),
                "iteration": self.state.iteration,
                "seed": self.seed,
                "data": fingerprint(
                    [os.path.basename(p) for p in self.loader.images], *self.loader.labels, self.dataset.classes
                ),
                "options": (o.sync_bn, o.clear, o.map, o.max_nonfinite, o.dist_timeout, o.dist_backend),
                "world": self.comm.size,
            },
            "the cfg, weights and data",
        )
        # Equal by the check above; the broadcast makes rank 0's bits the only ones, whatever a rank's file system.
        self.comm.broadcast(self.net.flat_params, what="broadcasting the initial weights")
        self.net.touch_params()
        for line in self.comm.describe():
            self.log(line)
        self.log(
            f"data-parallel: {self.comm.size} ranks x {self.local_mini_batch} images per forward pass "
            f"(rank 0: slots {shard_sizes_text(slots)} of each batch); batch-norm "
            + ("synchronized" if o.sync_bn else "per rank")
        )
        if o.sync_bn:
            self._reducer = self.comm.batch_norm_reducer()
        self.exchange = GradientExchange(self.comm, self.net, o.dist_backend)
        if self.net.device != "cpu":
            self.log(f"gradients summed over the ranks with {self.exchange.backend} (on {self.net.device})")

    # ----- pieces -------------------------------------------------------------------------------------------
    def _net_at(self, width, height):
        """The network at a multi-scale size, sharing parameters and gradients with the base network."""
        c, h, w = self.net.input_shape
        if (width, height) == (w, h):
            return self.net
        key = (width, height)
        if key not in self._nets:
            self._nets.clear()  # keep one resized copy: training buffers of big nets are large
            self._nets[key] = self.net.resized(width, height)
        return self._nets[key]

    def _validation_set(self):
        paths = list(self.dataset.valid)
        if not paths:
            raise TrainingError(f"{self.dataset.source}: --map needs a valid= list of images")
        labels = []
        for p in paths:
            lp = label_path(p)
            if not os.path.isfile(lp):
                raise TrainingError(f"--map: no label file for validation image {p} (looked for {lp})")
            boxes, bad = parse_labels(lp, self.dataset.classes)
            if bad:
                raise TrainingError(f"--map: {lp}: {bad[0]}")
            labels.append(boxes)
        return paths, labels

    def map_every(self):
        """Darknet's interval: every max(100, 4 epochs) iterations, unless --map-every says otherwise."""
        if self.options.map_every:
            return int(self.options.map_every)
        epoch = max(1, len(self.loader) // self.images_per_iteration)
        return max(100, 4 * epoch)

    def evaluate(self):
        """Darknet-style mAP@0.5 on the valid list (threshold 0.005, NMS 0.45, as ``detector map``)."""

        from pydarknet.evaluation.metrics import Evaluator, yolo_to_xyxy
        from pydarknet.inference.detect import Detector

        paths, labels = self.valid
        self.net.touch_params()
        detector = Detector(self.net, thresh=0.005, nms=0.45, names=self.net.names)
        ev = Evaluator(self.dataset.classes, self.dataset.names)
        for start in range(0, len(paths), 16):
            chunk = paths[start : start + 16]
            results = detector(chunk)
            for path, boxes, res in zip(chunk, labels[start : start + 16], results):
                w, h = image_size(path)
                gt_boxes, gt_classes = yolo_to_xyxy(np.concatenate([boxes[:, 4:5], boxes[:, :4]], axis=1), w, h)
                ev.add(gt_boxes, gt_classes, detections=res, width=w, height=h)
        return ev.compute(iou_thresh=0.5, points=0, thresh=0.25, coco=False)

    def _first_nonfinite_layer(self, net):
        for i in range(len(net.layers)):
            out = net.train_output(i)
            if not _finite(out):
                return f"layer {i} [{net.desc.layers[i].type}] (cfg line {net.desc.layers[i].line}) output"
        where = self.optimizer.first_nonfinite(net.grads)
        if where is not None:
            return f"gradient of {where}"
        return "the loss"

    def _head_losses(self, net, outputs, truths, width, height):
        """The [yolo] loss of one forward pass: ``([(head, loss, cost_terms)], grads)`` with ``grads`` what
        ``_backward`` needs ({head: dLoss/dInput} as host arrays for the numpy loss; the device loss leaves the
        gradients in the device buffers and returns None). The one place that chooses how the loss is computed."""
        if self.on_device:
            results = [(i, device_yolo_loss(net, i, truths, width, height)) for i in net.yolo_layers]
            return [(i, r.loss, r.cost_terms) for i, r in results], None
        losses, grads = [], {}
        for i in net.yolo_layers:
            r = yolo_loss(outputs[i], truths, net.desc.layers[i], width, height)
            grads[i] = r.grad
            losses.append((i, r.loss, r.cost_terms))
        return losses, grads

    @staticmethod
    def _backward(net, grads):
        """Backward after _head_losses from the gradients it returned. A device loss (gradients already in the
        device buffers, ``grads`` None) switches here to the device-side backward entry."""
        if grads is None:
            net.backward_device()
        else:
            net.backward(grads)

    # ----- one iteration ------------------------------------------------------------------------------------
    def step(self):
        """Run the next iteration; returns its IterationLog."""
        it = self.state.iteration  # iterations done so far; this one uses the batch of index `it`
        start = time.perf_counter()
        width, height = self.loader.input_size(it)
        net = self._net_at(width, height)
        images, truths = self.loader.batch(it, width, height)
        loss = 0.0
        problem = None
        if self.on_device:
            # The device keeps its parameters; a copy (device to device) puts the rolling statistics back on a skip.
            net.zero_grads()
            self.optimizer.save_device_params(net)
            if self.scaler is not None:
                self.scaler.apply(net)
        else:
            self.net.zero_grads()
            rolling_before = self.net.flat_params[self._rolling]
        comm = self.comm
        lm = self.local_mini_batch
        terms = []  # each head's cost terms per forward pass: the cost of the global mini-batch is built from them
        # On the device each pass's images are staged (pinned memory, a copy stream): pass s+1's upload is started
        # right after forward_train(s), so it overlaps the loss and backward of pass s. Same bits as uploading.
        staged = self.on_device and self._stage_inputs
        set_batch_norm_reducer(self._reducer)
        try:
            if staged:
                net.stage_input(images[0:lm])
            for s in range(self.subdivisions):
                part = slice(s * lm, (s + 1) * lm)
                outputs = net.forward_train(
                    None if staged else images[part],
                    seed=self.seed,
                    iteration=it * self.subdivisions + s,
                    copy_outputs=not self.on_device,  # the device loss reads the heads where they are
                )
                if staged and s + 1 < self.subdivisions:
                    net.stage_input(images[(s + 1) * lm : (s + 2) * lm])
                losses, grads = self._head_losses(net, outputs, truths[part], width, height)
                for _, head_loss, cost_terms in losses:
                    loss += head_loss
                    terms.append(cost_terms)
                bad = not (math.isfinite(loss) and all(_finite(g) for g in (grads or {}).values()))
                # Every rank stops at the same subdivision: synchronized batch-norm needs all of them in backward.
                bad_ranks = comm.any(bad, f"checking the losses of iteration {it + 1}") if comm.distributed else []
                if bad or bad_ranks:
                    problem = self._first_nonfinite_layer(net) if bad else None
                    if comm.distributed:
                        # Each rank's finding, ranks with the same one together. Synchronized batch-norm carries a
                        # non-finite value into every rank's statistics, so several ranks may name the same layer.
                        found = comm.allgather_objects(problem, "sharing the non-finite layer")
                        places = {}
                        for r in bad_ranks:
                            places.setdefault(found[r], []).append(str(r))
                        problem = "; ".join(
                            f"{where} on rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}"
                            for where, ranks in places.items()
                        )
                    break
                self._backward(net, grads)
        finally:
            if staged:
                net.clear_staged()  # a pass cut short (non-finite loss) leaves the next one staged
            set_batch_norm_reducer(None)
        if comm.distributed:
            summed = comm.allreduce_sum(np.array(terms, np.float64), f"summing the loss of iteration {it + 1}")
            loss = sum(cost_from_terms(*t) for t in summed)
            if problem is None:
                self.exchange.sum(f"summing the gradients of iteration {it + 1}")
        loss /= int(self.desc.net["batch"])  # Darknet divides the summed costs by the cfg's batch
        rate = float(learning_rate(it + 1, self.desc))
        skipped = problem is not None
        overflow = False  # fp16 loss scaling: a non-finite gradient is the scaler's signal, not a failure
        if not skipped:
            if self.on_device:
                if self.scaler is not None:
                    self.scaler.unscale(net)
                result = self.optimizer.step_device(net, it + 1, rate=rate)
            else:
                result = self.optimizer.step(self.net.flat_params, self.net.grads, it + 1, rate=rate)
            if result.skipped:
                skipped, problem = True, f"gradient of {result.nonfinite}"
                overflow = self.scaler is not None
            elif self.scaler is not None:
                self.scaler.update(True)
        if self.on_device:
            if skipped:
                self.optimizer.restore_device_params(net)
        else:
            if skipped:
                self.net.flat_params[self._rolling] = rolling_before
            self.net.touch_params()
        if overflow:
            before = self.scaler.scale
            self.scaler.update(False)
            self.log(
                f"iteration {it + 1}: fp16 gradient overflow ({problem}); update skipped, loss scale "
                f"{before:g} -> {self.scaler.scale:g}"
            )
            if self.scaler.scale < 2.0**-24:
                raise TrainingError(
                    f"the fp16 loss scale fell to {self.scaler.scale:g} and the gradient is still not finite "
                    f"(first in {problem}): not an overflow. Train in bf16 or fp32, or lower learning_rate in [net]"
                )
        elif skipped:
            self._nonfinite_run += 1
            self.log(
                f"iteration {it + 1}: non-finite value first in {problem}; the update is skipped "
                f"({self._nonfinite_run} in a row)"
            )
            if self._nonfinite_run >= self.options.max_nonfinite:
                raise TrainingError(
                    f"{self._nonfinite_run} iterations in a row produced non-finite values (last one first in "
                    f"{problem}). Lower learning_rate in [net] (or raise burn_in), check the labels for "
                    f"degenerate boxes, and start from the last good weights: {self.checkpoints.path('last')}"
                )
        else:
            self._nonfinite_run = 0
            self.avg_loss = loss if self.avg_loss < 0 else self.avg_loss * 0.9 + loss * 0.1
        self.state.iteration = it + 1
        self.state.extra["avg_loss"] = self.avg_loss
        if self.scaler is not None:
            self.state.extra["loss_scale"] = self.scaler.state_dict()
        self.net.seen = self.state.iteration * self.images_per_iteration
        entry = IterationLog(
            it + 1, loss, self.avg_loss, rate, time.perf_counter() - start, self.net.seen, width, height, skipped
        )
        self.history.append(entry)
        return entry

    # ----- the run ------------------------------------------------------------------------------------------
    def run(self, stop_after: Optional[int] = None) -> TrainResult:
        """Train up to max_batches (or ``stop_after`` more iterations: a planned stop that saves ``_last`` with
        its state, as an interrupted run would be resumed)."""
        o = self.options
        self._nonfinite_run = 0
        target = self.max_batches
        if stop_after is not None:
            if int(stop_after) < 1:
                raise UsageError(f"stop_after (--iterations) must be at least 1, got {stop_after}")
            target = min(target, self.state.iteration + int(stop_after))
        root = self.comm.is_root
        if not root:
            return self._run_follower(target)
        try:
            self.backup.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WriteError(self.backup, e) from e
        csv_path = self.backup / "results.csv"
        if self.state.iteration == 0 or not csv_path.exists():
            atomic_write_text(csv_path, ",".join(RESULTS_HEADER) + "\r\n")
        else:
            kept = reconcile_results(csv_path, self.state.iteration)
            if len(kept) != self.state.iteration:
                self.log(
                    f"{csv_path} has rows for {len(kept)} of the {self.state.iteration} iterations done before "
                    f"this resume (written by another run or edited); the chart shows what is there"
                )
        try:
            csv_file = open(csv_path, "a", newline="")
        except OSError as e:
            raise WriteError(csv_path, e) from e
        writer = csv.writer(csv_file)
        written = self.state.iteration  # the last iteration that has its row

        def write_row(entry):
            # Durable before the checkpoint of the same iteration: a saved iteration always has its row.
            try:
                writer.writerow(_results_row(entry))
                csv_file.flush()
                os.fsync(csv_file.fileno())
            except OSError as e:
                raise WriteError(csv_path, e) from e

        show_bar = o.progress if o.progress is not None else (sys.stderr.isatty() and not o.quiet)
        bar = None
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(
                total=self.max_batches, initial=self.state.iteration, unit="it", file=sys.stderr, dynamic_ncols=True
            )
        log = self.log if bar is None else (lambda line: bar.write(line) if not o.quiet else None)
        self.log(
            f"Training {self.cfg} on {len(self.loader)} images: batch {self.images_per_iteration} in "
            f"{self.subdivisions} subdivision(s), max_batches {self.max_batches}, seed {self.seed}, "
            f"backup {self.backup}"
        )
        final = None
        interrupted = False
        recent = collections.deque(maxlen=20)  # the hours-left estimate uses the mean of the last 20 iterations
        try:
            while self.state.iteration < target:
                entry = self.step()
                recent.append(entry.seconds)
                left = (self.max_batches - entry.iteration) * (sum(recent) / len(recent)) / 3600
                log(
                    f" {entry.iteration}: {entry.loss:f}, {entry.avg_loss:f} avg loss, {entry.rate:f} rate, "
                    f"{entry.seconds:f} seconds, {entry.images} images, {left:.2f} hours left"
                )
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{entry.avg_loss:.3f}", size=f"{entry.width}x{entry.height}")
                if (
                    self.valid is not None
                    and (entry.iteration % self.map_every() == 0 or entry.iteration == self.max_batches)
                    and entry.iteration >= int(self.desc.net["burn_in"])
                ):
                    metrics = self.evaluate()
                    entry.map = float(metrics["map"])
                    # The other ranks wait here (in their next exchange) while rank 0 evaluates.
                    best = self.checkpoints.save_best(self.net.flat_params, self.state, entry.map, self.optimizer)
                    log(
                        f" mean average precision (mAP@0.50) = {entry.map:f}, best = {self.state.best_map:f}"
                        + (f" -> {best}" if best else "")
                    )
                write_row(entry)
                written = entry.iteration
                # On a GPU the parameters come down only for an iteration that writes a checkpoint.
                if not self.on_device or self.checkpoints.plan(entry.iteration):
                    self.checkpoints.after_iteration(self.net.flat_params, self.state, self.optimizer)
                if entry.iteration % max(1, o.chart_every) == 0:
                    self.draw_chart()
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: saving the last weights and training state")
        finally:
            if bar is not None:
                bar.close()
            last = self.history[-1] if self.history else None
            if last is not None and last.iteration == self.state.iteration > written:
                write_row(last)  # interrupted between the iteration and its row: _last below saves it
            try:
                csv_file.close()
            except OSError:
                pass  # every row was flushed (and a failure reported) as it was written
            self.loader.close()
        self.checkpoints.save_last(self.net.flat_params, self.state, self.optimizer)
        if self.state.iteration >= self.max_batches:
            final = self.checkpoints.save_final(self.net.flat_params, self.state)
            self.log(f"Saved {final}")
        self.draw_chart()
        if interrupted:
            raise KeyboardInterrupt
        return TrainResult(self.state.iteration, final, self.state.best_map, self.history)

    def _run_follower(self, target: int) -> TrainResult:
        """run() on a rank other than 0: the same iterations, no files (rank 0 writes results.csv, chart.png
        and the weights, and evaluates)."""
        try:
            while self.state.iteration < target:
                self.step()
        finally:
            self.loader.close()
        return TrainResult(self.state.iteration, None, self.state.best_map, self.history)

    def draw_chart(self) -> Optional[ChartData]:
        """chart.png from the whole of results.csv: loss and average loss per iteration, mAP points on a second
        axis (atomic write). Returns the data drawn (None before the first row)."""
        data = chart_data(self.backup / "results.csv")
        if not data.iterations:
            return None
        import matplotlib.pyplot as plt

        title = f"{os.path.basename(self.cfg)}: iteration {data.iterations[-1]}, avg loss {data.avg_loss[-1]:.3f}"
        max_loss = float(self.desc.net.get("max_chart_loss", 20))
        fig = chart_figure(data, title, self.max_batches, max_loss)

        def write(f):
            fig.savefig(f, format="png")

        try:
            ckpt.atomic_write(self.backup / "chart.png", write)
        finally:
            plt.close(fig)
        return data


def train(cfg, data, weights=None, **options) -> TrainResult:
    """Train ``cfg`` on ``data`` (see :class:`TrainOptions` for the keyword options)."""
    return Trainer(cfg, data, weights, TrainOptions(**options)).run()
