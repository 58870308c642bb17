"""The Network object: a validated network description bound to the C++ engine.

`pydarknet.load()` builds one. Parameters live in one flat float32 buffer owned by the engine, in `.weights`
file order; `net.params` and each layer's `params` dict are numpy views into it. Training adds a gradient buffer
of the same layout (`net.grads`), a training-mode forward pass and the backward pass (on the CPU). With
``device="cuda"`` the layers run on a GPU (``_core.CudaNetwork``), which re-reads the parameter buffer whenever it
changes. ``precision`` chooses the number format: on the CPU fp32, or bf16 convolutions (bfloat16 weights and
inputs, float32 sums); on a GPU the activations' type (fp32, or fp16/bf16 with tensor-core convolutions).

Training on a GPU keeps the parameters in device memory between iterations (the training forward pass moves the
batch-norm rolling statistics there, the device optimizer updates them there). Which copy is current:

* the host buffer is the reference until a device training call changes the device copy; from then on the
  network whose device copy is newer is recorded in ``_DeviceSync``. Resized networks (``resized``, multi-scale
  training) share one device parameter buffer and one gradient buffer with the network they were made from, so
  a size change copies nothing: only the host buffer can be behind;
* anything that reads or writes the host buffer (``params``/``flat_params``, ``touch_params``, ``forward``,
  ``save_weights``, layer views) first copies the newer device parameters down (one device-to-host copy) and so
  makes the host current again; ``params`` hands out a writable view, so the next device training call uploads
  the host buffer again (the engine compares the host's params_version with the one it last uploaded);
* a view of ``params`` kept from before a device update is stale: take ``params`` again after training steps.
"""

from __future__ import annotations

import collections
import math
import os
import warnings
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Union

import numpy as np

from pydarknet.core import graph
from pydarknet.core import weights as weights_io
from pydarknet.errors import CfgError, DarknetError, DeviceError, ExportError

if TYPE_CHECKING:  # only for the annotations: inference sits above core
    from pydarknet.inference.results import Results

PathLike = Union[str, os.PathLike]

try:
    import pydarknet._core as _core
except ImportError as exc:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "pydarknet's compiled engine (pydarknet._core) is missing. Install the package with `pip install .`; "
        "when running from a source checkout, run tests with `pytest` (not `python -m pytest`) so the "
        f"installed package is imported. ({exc})"
    ) from exc


# Precision names and their codes in the C++ engine (pd::Precision, csrc/core/common.h); the CPU runs only some.
PRECISIONS = {"fp32": 0, "fp16": 1, "bf16": 2}
CPU_PRECISIONS = ("fp32", "bf16")


def _spec(layer):
    options = {}
    for key, value in layer.options.items():
        if key == "activation":
            value = graph.ACTIVATIONS.index(value)
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float, str)) or (
            isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
        ):
            options[key] = value
    return {
        "index": layer.index,
        "type": layer.type,
        "in": list(layer.in_shape),
        "out": list(layer.out_shape),
        "inputs": list(layer.inputs),
        "options": options,
        "tensors": {t.name: (t.offset, t.size) for t in layer.tensors},
    }


class LayerView:
    """One layer as seen from Python: its type, options, shapes and parameter views."""

    def __init__(self, net, desc):
        self._net = net
        self._desc = desc
        self.index = desc.index
        self.type = desc.type
        self.options = desc.options
        self.in_shape = desc.in_shape
        self.out_shape = desc.out_shape
        self.bflops = desc.bflops

    @property
    def params(self):
        """Writable views of this layer's parameter tensors (marks the parameters as changed)."""
        flat = self._net.params
        return {t.name: flat[t.offset : t.offset + t.size].reshape(t.shape) for t in self._desc.tensors}

    def __repr__(self):
        return f"<Layer {self.index} {self.type} {self.in_shape} -> {self.out_shape}>"


class _DeviceSync:
    """Which copy of a shared host parameter buffer is current: ``ahead`` is the Network (base or resized, they
    share the host buffer and the device buffers) whose device parameters are newer than the host buffer, or None
    when the host is current."""

    def __init__(self):
        self.ahead: Optional[Network] = None


class Network:
    def __init__(self, desc, device="cpu", seed=None, precision="fp32", *, lenient=False, _share=None):
        self.desc = desc
        self.device = _check_device(device)
        self.precision = _check_precision(precision, self.device)
        self._lenient = lenient
        specs = [_spec(l) for l in desc.layers]
        if self.device == "cpu":
            # On a GPU the host network only holds the parameters; its convolutions keep the fp32 default.
            for spec in specs:
                if spec["type"] == "convolutional":
                    spec["options"]["precision"] = PRECISIONS[self.precision]
        self._core = _core.Network(
            specs, desc.param_count, desc.input_shape, share_with=_share._core if _share is not None else None
        )
        last = len(desc.layers) - 1
        self._core.keep = sorted(set(desc.yolo_layers + [last]))
        self._cuda = None
        if self.device != "cpu":
            # A resized copy trains the device parameters and gradients of the network it was made from.
            shared = _share._cuda if _share is not None else None
            self._cuda = _core.CudaNetwork(
                self._core, PRECISIONS[self.precision], int(self.device.split(":")[1]), share_params=shared
            )
            self._cuda.use_graph = bool(desc.net.get("use_cuda_graph", 0))
        self.layers = [LayerView(self, l) for l in desc.layers]
        self._untrainable = None
        self._staged = collections.deque()  # the arrays of the staged batches not yet run (see stage_input)
        self._sync = _share._sync if _share is not None else _DeviceSync()
        if _share is not None:
            self.seen, self.version, self.bn_epsilon = _share.seen, _share.version, _share.bn_epsilon
            return
        self.seen = 0
        self.version = weights_io.CURRENT_VERSION
        self._initialise(np.random.default_rng(seed))

    # ----- parameters -------------------------------------------------------------------------------------
    @property
    def params(self):
        """The flat float32 parameter buffer (a writable view, in .weights file order). After training on a GPU the
        device parameters are copied down first (see the module doc: which copy is current)."""
        self._sync_host()
        self._core.touch_params()
        return self._core.params

    @property
    def flat_params(self):
        """The same flat parameter view as `params` (the optimizer's name for it). After writing through a view
        kept from earlier, call touch_params() before the next `forward`; forward_train always reads the
        current values."""
        return self.params

    def touch_params(self):
        """Tell the engine the parameters changed, so the next inference forward re-derives its folded copies (and
        the next training pass on a GPU uploads them). Newer device parameters are copied down first."""
        self._sync_host()
        self._core.touch_params()

    def _sync_host(self):
        """Make the host buffer current: copy down the parameters of the network whose device copy is newer."""
        ahead = self._sync.ahead
        if ahead is not None:
            ahead._cuda.copy_params(self._core.params)
            self._sync.ahead = None
            self._core.touch_params()  # other networks sharing the buffer upload it at their next training pass
            ahead._cuda.mark_params_current()  # its device copy equals the host: no upload back

    def _device_params_changed(self):
        """Record that this network's device parameters are now newer than the host buffer."""
        self._sync.ahead = self

    def _sync_device(self):
        """Make this network's device parameters current (before a training pass or a device update): newer
        parameters of a network sharing the host buffer but not the device one come down (resized networks share
        both, so a multi-scale size change copies nothing), then the host buffer goes up if it changed."""
        ahead = self._sync.ahead
        if ahead is not None and ahead is not self and not ahead._cuda.shares_params_with(self._cuda):
            self._sync_host()
        self._cuda.sync_params()

    def _initialise(self, rng):
        """Darknet's training initialisation: uniform +-sqrt(2/fan_in) weights, zero biases, unit BN scales."""
        flat = self._core.params
        for layer in self.desc.layers:
            for t in layer.tensors:
                view = flat[t.offset : t.offset + t.size]
                if t.name == "weights" and layer.kind.weight_init == "fan_in":
                    fan_in = t.size // t.shape[0]
                    scale = np.sqrt(2.0 / fan_in)
                    view[:] = rng.uniform(-scale, scale, t.size).astype(np.float32)
                elif t.name in ("scales", "rolling_variance") or layer.kind.weight_init == "ones":
                    view[:] = 1.0
                else:
                    view[:] = 0.0
        self._core.touch_params()

    def load_weights(self, path: PathLike, *, partial: bool = False):
        """Load an original Darknet .weights file (partial=True for a backbone prefix like yolov4-tiny.conv.29)."""
        self._sync_host()  # a partial file leaves the other layers as they are
        version, seen, loaded = weights_io.load_into(self.desc, self._core.params, path, partial=partial)
        self._core.touch_params()
        self.version, self.seen = version, seen
        return loaded

    def save_weights(self, path, *, cutoff=None, version=weights_io.CURRENT_VERSION, seen=None):
        """Write Darknet .weights; cutoff=N writes layers 0..N-1 with seen=0 like `darknet partial`."""
        if seen is None:
            seen = 0 if cutoff is not None else self.seen
        self._sync_host()
        weights_io.save_from(self.desc, self._core.params, path, cutoff=cutoff, seen=seen, version=version)

    @property
    def bn_epsilon(self):
        return self._core.bn_epsilon

    @bn_epsilon.setter
    def bn_epsilon(self, value):
        self._core.bn_epsilon = float(value)

    # ----- running ----------------------------------------------------------------------------------------
    @property
    def input_shape(self):
        return self.desc.input_shape

    @property
    def yolo_layers(self):
        return self.desc.yolo_layers

    @property
    def bflops(self):
        return sum(l.bflops for l in self.desc.layers)

    def _prepare_input(self, x):
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise ValueError(f"input must be a real-valued numeric array (float32 preferred); got dtype {x.dtype}")
        if x.ndim == 3:
            x = x[None]
        c, h, w = self.input_shape
        if x.ndim != 4 or x.shape[1:] != (c, h, w):
            raise ValueError(f"input must be a float32 array of shape (N, {c}, {h}, {w}); got {x.shape}")
        if x.shape[0] < 1:
            raise ValueError("input batch is empty")
        return np.ascontiguousarray(x, dtype=np.float32)

    @property
    def _engine(self):
        return self._core if self._cuda is None else self._cuda

    def forward(self, x: np.ndarray) -> List[np.ndarray]:
        """Run the network; returns one array per [yolo] layer (or the final output for other networks).

        Thread safety: one network may be shared by several threads (e.g. a web server's request threads). Calls
        on one network take turns (each holds the network's lock while it computes, with the GIL released so other
        Python threads go on); every call returns exactly what it would return alone. The returned arrays are new
        arrays that belong to the caller: no later call changes them. The engine already spreads one call over
        all CPU cores, so threads sharing a network gain no throughput over calling it from one thread (see
        benchmarks/RESULTS.md, "Concurrent use"). Writing the parameters while another thread runs a pass on this
        network, or on one sharing its parameters (`resized`), is not supported.
        """
        heads = self.yolo_layers or [len(self.layers) - 1]
        self._sync_host()
        return self._engine.forward_outputs(self._prepare_input(x), heads, False)

    def forward_all(self, x: np.ndarray) -> List[np.ndarray]:
        """Run the network and return every layer's output (for debugging and layer-by-layer checks); new arrays,
        safe to call from several threads as `forward` is."""
        self._sync_host()
        return self._engine.forward_outputs(self._prepare_input(x), list(range(len(self.layers))), True)

    @property
    def cuda_graph(self):
        """On a CUDA device: replay the layers from a CUDA graph captured at the first pass of each batch size
        (less launch overhead at small batch). Defaults to the cfg's ``use_cuda_graph``."""
        return self._cuda is not None and self._cuda.use_graph

    @cuda_graph.setter
    def cuda_graph(self, value):
        if self._cuda is None:
            raise DeviceError("cuda_graph needs a network on a CUDA device")
        self._cuda.use_graph = bool(value)

    @property
    def profile(self):
        """When True, forward, forward_train and backward record each layer's wall time (see layer_times); on a
        GPU, forward records each layer's GPU time (CUDA events)."""
        return self._core.profile

    @profile.setter
    def profile(self, value):
        self._core.profile = bool(value)
        if self._cuda is not None:
            self._cuda.profile = bool(value)

    def layer_times(self):
        """Seconds per layer of the last forward, forward_train and backward run with `profile` on:
        {"forward": [...], "forward_train": [...], "backward": [...]}, one value per layer (a layer that
        backward skips counts 0); a pass not run with profiling gives an empty list. With several threads using
        the network, "last" is whichever pass of that kind finished last (each list comes from one pass)."""
        return {
            "forward": list(self._engine.layer_seconds),
            "forward_train": list(self._core.train_layer_seconds),
            "backward": list(self._core.backward_layer_seconds),
        }

    # ----- training -----------------------------------------------------------------------------------------
    def forward_train(self, x, seed=0, iteration=0, *, copy_outputs=True):
        """Run the network in training mode and keep what backward() needs.

        Batch-norm uses the statistics of this batch and moves the rolling statistics in `params`
        (rolling = .99 rolling + .01 batch, the variance with Bessel's correction, as Darknet); dropout draws its
        mask from (seed, iteration, layer, element), so equal arguments give equal masks. `iteration` also decides
        `stopbackward=N` (frozen while iteration < N). Returns {layer index: output} for the [yolo] layers and the
        last layer (new arrays). On a CUDA network, ``copy_outputs=False`` returns {} and copies nothing: the
        outputs stay on the device for :func:`~pydarknet.train.yolo_loss.device_yolo_loss`.

        Threads: train one network from one thread at a time. The training state belongs to the thread that ran
        the last forward_train; `backward` or `train_output` from a thread whose pass another thread's
        forward_train has since replaced raises ConcurrentUseError instead of using the other thread's
        activations. Inference (`forward`) from other threads meanwhile is safe.

        ``x=None`` (CUDA networks) runs on the oldest batch given to :meth:`stage_input` instead of uploading one;
        the result is bit-identical to passing that batch here.
        """
        self._check_trainable()
        heads = sorted(set(self.yolo_layers + [len(self.layers) - 1]))
        if x is None and self._cuda is None:
            raise DeviceError("forward_train(None) runs a staged batch, which needs a network on a CUDA device")
        if self._cuda is None:
            outputs = self._core.forward_train(self._prepare_input(x), int(seed), int(iteration), heads)
            return dict(zip(heads, outputs))
        x = None if x is None else self._prepare_input(x)
        self._sync_device()
        if x is None:
            try:
                self._cuda.forward_train_staged(int(seed), int(iteration))
            except ValueError as e:  # nothing staged
                raise DeviceError(str(e)) from e
            if self._staged:
                self._staged.popleft()  # its upload has completed: the pass waited for it
        else:
            self._cuda.forward_train(x, int(seed), int(iteration))
        # batch-norm moved its rolling statistics in the device copy, which stays there until the host needs it
        self._device_params_changed()
        if not copy_outputs:
            return {}
        return {i: self._cuda.train_output(i) for i in heads}

    def stage_input(self, x: np.ndarray) -> None:
        """Start uploading the input of a later ``forward_train(None)`` (CUDA networks); returns without waiting.

        The batch is checked and converted as forward_train does, copied into page-locked host memory and uploaded
        on a copy stream, so the upload overlaps the device work issued meanwhile (the loss and backward of the
        current pass). Two batches can wait at once: staging is refused (DeviceError) while one staged batch
        waits to run and the last training pass, whose backward still reads its input, used the other slot; so
        stage pass s+1 after forward_train(s), not earlier. ``forward_train(None)`` runs the oldest staged batch.

        A batch inside an array from :meth:`staging_buffer` (page-locked memory) is uploaded from where it is, with
        no copy on the host; the network holds the array until the batch has run (or ``clear_staged``), and the
        caller must not write it before then. Any other array is first copied into page-locked memory of the
        network's own.
        """
        if self._cuda is None:
            raise DeviceError("stage_input needs a network on a CUDA device (the CPU reads the array directly)")
        x = self._prepare_input(x)
        try:
            self._cuda.stage_input(x)
        except ValueError as e:  # both slots busy
            raise DeviceError(str(e)) from e
        self._staged.append(x)

    def clear_staged(self) -> None:
        """Drop the batches staged with stage_input that have not run (CUDA networks; nothing to do on the CPU)."""
        if self._cuda is not None:
            self._cuda.clear_staged()
            self._staged.clear()

    def staging_buffer(self, shape: Sequence[int]) -> np.ndarray:
        """A new float32 array of ``shape`` in page-locked host memory (CUDA networks), for training batches:
        :meth:`stage_input` uploads a batch that lies in one such array in place. The memory is freed with the
        array's last view. The loader assembles its batches in these when the trainer runs on a GPU
        (``Loader(allocate=net.staging_buffer)``)."""
        if self._cuda is None:
            raise DeviceError("staging_buffer needs a network on a CUDA device (page-locked memory is for uploads)")
        shape = tuple(int(n) for n in shape)
        if not shape or any(n < 1 for n in shape):
            raise ValueError(f"staging_buffer: every dimension must be at least 1, got {shape}")
        return self._cuda.pinned_empty(math.prod(shape)).reshape(shape)

    def train_output(self, index):
        """The output of any layer in this thread's last forward_train (a copy)."""
        return self._engine.train_output(int(index))

    def backward(self, output_grads, input_grad=False):
        """Backpropagate after forward_train.

        output_grads: {layer index: dLoss/dOutput} shaped like that layer's output (N, C, H, W). For a [yolo]
        layer the gradient is taken with respect to its *input*, as Darknet's yolo loss defines its delta; the
        layer passes it through unchanged. Parameter gradients are added (+=) to `grads` (call zero_grads()
        between optimizer steps); with input_grad=True the gradient with respect to the network input is
        returned, else None. Darknet's stopbackward (that layer and all before it get nothing), onlyforward and
        train_only_bn (no weight gradient for that layer) apply. Raises ConcurrentUseError when another thread ran
        forward_train on this network after this thread's (see forward_train). On a CUDA network, heads whose
        device loss ran (device_yolo_loss) start from the gradient it left on the device unless one is given here.
        """
        n = len(self.layers)
        grads = {}
        for index, grad in output_grads.items():
            index = int(index)
            if not 0 <= index < n:
                raise ValueError(f"gradient given for layer {index}; the network has layers 0..{n - 1}")
            grads[index] = np.ascontiguousarray(grad, dtype=np.float32)
        return self._engine.backward(grads, bool(input_grad))

    def backward_device(self, input_grad=False):
        """Backpropagate from the gradients device losses left on the device (CUDA networks only).

        After forward_train and :func:`pydarknet.train.yolo_loss.device_yolo_loss` for the heads, this runs
        backward from those heads' device gradients without copying anything head-sized to the host; otherwise
        as :meth:`backward` (``backward`` also starts from them, next to the gradients it is given). A device
        gradient seeds one backward: the next forward_train or backward starts clean.
        """
        if self._cuda is None:
            raise DeviceError("backward_device needs a network on a CUDA device (use backward on the CPU)")
        return self._cuda.backward({}, bool(input_grad))

    @property
    def grads(self):
        """The flat float32 gradient buffer, laid out exactly like `params`: a writable view on the CPU; on a GPU,
        where the gradients stay in device memory, a copy."""
        return self._engine.grads

    def zero_grads(self):
        self._engine.zero_grads()

    def resized(self, width: int, height: int) -> Network:
        """This network at another input size (Darknet's multi-scale training), sharing the parameters and the
        gradient buffer with this one: an optimizer step through either is seen by both. The network itself at
        its own size. Inference (test-time augmentation) and training (multi-scale) both resize through here."""
        if (height, width) == tuple(self.input_shape[1:]):
            return self
        path = self.desc.path
        if not os.path.isfile(path):
            raise DarknetError(
                f"the network was not loaded from a file ({path}), so it cannot be rebuilt at {width}x{height}"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the cfg was already accepted (and warned about) once
            desc = graph.load_network_desc(path, lenient=self._lenient, width=width, height=height)

        def layout(d):
            return [(l.type, [(t.name, t.offset, t.shape) for t in l.tensors]) for l in d.layers]

        if desc.param_count != self.desc.param_count or layout(desc) != layout(self.desc):
            raise DarknetError(
                f"{self.desc.path}: at {width}x{height} the parameters are laid out differently "
                f"(a [connected] layer's weights depend on the input size), so the network cannot "
                f"be resized"
            )
        other = Network(desc, device=self.device, precision=self.precision, lenient=self._lenient, _share=self)
        other.names = getattr(self, "names", None)
        return other

    @property
    def loss_scale(self) -> float:
        """Mixed-precision loss scaling (CUDA networks): backward starts from the given (or device-loss) gradients
        times this factor, so the parameter gradients come out scaled by it too (see scale_grads). 1 on the CPU."""
        return 1.0 if self._cuda is None else float(self._cuda.loss_scale)

    @loss_scale.setter
    def loss_scale(self, scale: float) -> None:
        if self._cuda is None:
            if float(scale) != 1.0:
                raise DeviceError("loss scaling is for mixed-precision training on a CUDA device")
            return
        self._cuda.loss_scale = float(scale)

    def scale_grads(self, factor: float) -> None:
        """Multiply the device gradient buffer by ``factor`` (unscaling before the update; CUDA networks)."""
        if self._cuda is None:
            raise DeviceError("scale_grads needs a network on a CUDA device")
        self._cuda.scale_grads(float(factor))

    def _check_trainable(self):
        """Refuse, naming the cfg line, the layer options that have no training implementation, and on a GPU the
        layers whose training passes have no CUDA kernels yet (see cuda/NOTES.md). An fp16/bf16 network on a GPU
        trains in mixed precision: float32 storage, the convolution and [connected] operands rounded to its type."""
        if self._cuda is not None:
            missing = self._cuda.untrainable_layers()
            if missing:
                index, why = missing[0]
                layer = self.desc.layers[index]
                raise DeviceError(
                    f"{self.desc.path}:{layer.line}: layer {index} [{layer.type}] cannot train on {self.device}: "
                    f"{why}; train this network with device='cpu'"
                )
        if self._untrainable is None:
            self._untrainable = []
            for l in self.desc.layers:
                problem = l.kind.untrainable(l)
                if problem:
                    self._untrainable.append((l, problem))
        if self._untrainable:
            layer, problem = self._untrainable[0]
            raise CfgError(f"layer {layer.index} [{layer.type}]: {problem}", self.desc.path, layer.line)

    def detect(
        self, images: Any, *, thresh: float = 0.25, nms: float = 0.45, letterbox: Optional[bool] = None, **options: Any
    ) -> Union[Results, List[Results]]:
        """Detect objects in a path, PIL image, HxWx3 uint8 RGB array, or a list of them, as Darknet's
        `detector test` does; returns a Results (a list of them for a list). See pydarknet.detect.detect.

        Safe to call from several threads on one network (the forward passes take turns, see `forward`); each
        call's Results are its own."""
        from pydarknet.inference.detect import detect

        return detect(self, images, thresh=thresh, nms=nms, letterbox=letterbox, **options)

    def detect_stream(self, source, **options):
        """Detect objects in each frame of a video file, stream URL or camera index; iterate the result for one
        Results per frame (``.frame``, ``.timestamp``). See pydarknet.video.stream.detect_stream (needs PyAV)."""
        from pydarknet.video.stream import detect_stream

        return detect_stream(self, source, **options)

    def export(self, path, format="onnx", **options):
        """Write this network for another runtime: ``format="onnx"`` (the only one), options as
        :func:`pydarknet.export.to_onnx` (opset, batch, dynamic_size, fp16, outputs="raw"/"decoded"/"nms", thresh,
        nms); returns the ONNX ModelProto."""
        from pydarknet.export.onnx import to_onnx

        if format != "onnx":
            raise ExportError(f"unknown export format {format!r}; pydarknet exports 'onnx'")
        return to_onnx(self, path, **options)

    # ----- description ------------------------------------------------------------------------------------
    def summary(self) -> str:
        rows = ["   layer   filters  size/strd(dil)      input                output"]
        rows += [f"{l.index:4d} {l.kind.summary(l)}" for l in self.desc.layers]
        rows.append(f"Total BFLOPS {self.bflops:.3f}")
        rows.append(
            f"Parameters {self.learnable_params:,} learnable ({self.desc.param_count:,} floats in the .weights file, "
            "with the batch-norm rolling statistics)"
        )
        return "\n".join(rows)

    @property
    def learnable_params(self):
        """Parameters a framework would count as trainable: every tensor except batch-norm rolling statistics
        (PyTorch's ``sum(p.numel() for p in model.parameters())`` for the same network)."""
        return sum(
            t.size for l in self.desc.layers for t in l.tensors if t.name not in ("rolling_mean", "rolling_variance")
        )

    def __repr__(self):
        c, h, w = self.input_shape
        where = "" if self.device == "cpu" else f", {self.device} {self.precision}"
        return (
            f"<pydarknet.Network {self.desc.path} {len(self.layers)} layers, input {w}x{h}x{c}, "
            f"{self.bflops:.2f} BFLOPs{where}>"
        )


def _check_device(device):
    """'cpu' or 'cuda:N' for a device this build and machine can run on; DeviceError otherwise."""
    name = str(device).strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        index = name[5:] if name.startswith("cuda:") else "0"
        if not index.isdigit():
            raise DeviceError(f"device={device!r}: write 'cuda' or 'cuda:N' with N the GPU's index")
        count = _core.cuda_device_count()
        if count == 0:
            raise DeviceError(
                f"device={device!r}: no CUDA GPU is available on this machine"
                + ("" if _core.built_with_cuda else " (and this build has no CUDA support)")
            )
        if int(index) >= count:
            raise DeviceError(f"device={device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
        return f"cuda:{int(index)}"
    raise DeviceError(f"unknown device {device!r}; use 'cpu' or 'cuda'")


def _check_precision(precision, device):
    name = str(precision).strip().lower()
    if name not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if device == "cpu" and name not in CPU_PRECISIONS:
        raise DeviceError(f"precision={precision!r} needs device='cuda'; the CPU runs {' or '.join(CPU_PRECISIONS)}")
    return name


def load(
    cfg: PathLike,
    weights: Optional[PathLike] = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    width: Optional[int] = None,
    height: Optional[int] = None,
    lenient: bool = False,
    partial: bool = False,
    seed: Optional[int] = None,
) -> Network:
    """Build a network from a Darknet .cfg and optionally load original .weights into it.

    ``device``: "cpu", "cuda" or "cuda:N". ``precision``: "fp32" (the default) computes in float32 throughout.
    On the CPU, "bf16" runs the convolutions with bfloat16 weights and inputs (float32 sums), using the CPU's
    AVX512_BF16 dot products where it has them and the same rounding on float32 kernels where it does not; results
    then differ from float32 by bf16 rounding (see benchmarks/RESULTS.md). On a GPU, "fp16" or "bf16" is the
    activations' type, with the convolutions on the tensor cores and float32 accumulation. fp16 on the CPU is a
    DeviceError."""
    desc = graph.load_network_desc(cfg, lenient=lenient, width=width, height=height)
    net = Network(desc, device=device, seed=seed, precision=precision, lenient=lenient)
    if weights is not None:
        net.load_weights(weights, partial=partial)
    return net


def set_batch_norm_reducer(reducer: Optional[Callable[[int, int, np.ndarray], None]]) -> None:
    """Synchronized batch-norm for data-parallel training (process-wide; None turns it off, the default).

    While set, every training batch-norm (CPU engine) calls ``reducer(layer, phase, stats)`` with ``stats`` a
    float64 array of its local per-channel sums -- phase 0 (forward): ``[sum x (C values), sum x^2 (C), count]``,
    phase 1 (backward): ``[sum g (C), sum g*xhat (C), count]`` -- and uses the values the reducer leaves in the
    array (the sums over all processes) for the mean, variance and the input gradient. Scale and bias gradients
    stay local. An exception raised by the reducer propagates out of ``forward_train`` / ``backward``."""
    _core.set_batch_norm_reducer(reducer)
