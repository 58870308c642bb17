"""Darknet's weight update (SGD with momentum and decay, or Adam) and weight EMA on flat float32 buffers.

The network keeps every parameter in one flat float32 buffer in ``.weights`` order (``pydarknet.graph``); the
backward pass writes ``grad``, a buffer of the same layout holding dLoss/dParam summed over all images of the
iteration. Darknet accumulates the opposite sign (its ``*_updates`` arrays hold ``-dLoss/dParam``), so every
formula below starts with ``update -= grad``.

What one update does, per layer, following the GPU path Darknet trains with (AlexeyAB ``network_kernels.cu``
``update_network_gpu`` and the ``update_*_layer_gpu`` functions; the CPU ``update_network`` ignores the layer
switches and is not what released weights came from):

* ``B = update_batch`` (``net.batch * net.subdivisions * get_sequence_value``, i.e. ``(batch // subdivisions) *
  subdivisions`` images; see ``pydarknet.schedule``), ``lr = learning_rate(iteration) * layer learning_rate``.
* convolutional and connected ``weights``: ``U += -decay*B * W;  W += lr/B * U;  U *= momentum``
  (``convolutional_kernels.cu`` ``update_convolutional_layer_gpu``, ``connected_layer.c``
  ``update_connected_layer_gpu``).
* ``biases`` and batch-norm ``scales`` (convolutional, connected, ``[batchnorm]``): the same without decay.
* ``[shortcut]`` weights: no decay, and ``U`` is clamped to [-1, 1] before it is applied
  (``shortcut_layer.c`` ``update_shortcut_layer_gpu``).
* convolutional ``clip=c``: weights clamped to [-c, c] after the update.
* ``adam=1``: convolutional layers only (connected, shortcut and batchnorm have no Adam branch and keep SGD):
  ``m = B1*m + (1-B1)*d;  v = B2*v + (1-B2)*d*d`` with ``d = U - decay*B*W`` (decay on biases and scales too),
  ``W += lr * (m / (1 - B1**t)) / (sqrt(v / (1 - B2**t)) + eps)`` with ``t`` the iteration, then ``d = 0``
  (``blas_kernels.cu`` ``adam_update_gpu``/``adam_kernel``; no division by ``B``).
* ``rolling_mean``/``rolling_variance`` are never touched (the forward pass owns them).
* Layer switches (``update_network_gpu``, ``parse_network_cfg_custom``): layers before the last layer with
  ``stopbackward=1`` are never updated (``l.train = 0``); ``train_only_bn`` on a layer marks it and every layer
  before it, and those layers are never updated either (only their batch-norm running statistics change, in the
  forward pass); ``dont_update=N`` skips the update while ``iteration <= N`` and ``burnin_update=K`` while
  ``K * burn_in > iteration``. A skipped layer's ``U`` keeps summing gradients (Darknet's backward adds into it
  and nothing scales it), so the first real update applies everything accumulated -- reproduced here.

EMA (``ema_alpha``; ``network.c`` ``train_network_waitkey``, ``ema_update``, ``ema_apply``): from iteration
``max_batches // 2`` on, after each update, convolutional weights, biases and scales are averaged
``ema = alpha*ema + (1-alpha)*w`` (the first time ``ema = w`` first); at iteration ``max_batches - 1000`` the
averages replace the weights once; after that nothing changes. Darknet writes them to ``<cfg>_ema.weights``
beside ``_last`` (convolutional layers from the averages, their running statistics and all other layers as
they are).

Differences from Darknet, on purpose: a gradient holding NaN or infinity skips the whole update (parameters,
momentum, Adam moments and EMA stay as they were) and ``first_nonfinite`` names the first tensor holding one;
Darknet instead zeroes NaN/inf entries of the updates (``reset_nan_and_inf``). Arithmetic is float32 with each
operation rounded on its own, as Darknet's CPU code does; its GPU kernels may fuse ``a*x + y`` into one rounding,
a difference in the last bit. ``loss_scale`` (mixed precision) cancels out exactly in Darknet's formulas and is
not applied; multi-GPU ``learning_rate *= ngpus`` is the training loop's business.

On a GPU (``step_device``) the same update runs as one kernel over the flat device buffers (plus one for the EMA),
with every rule above, and the optimizer's buffers (velocity, Adam moments and pending gradients, EMA averages)
live in device memory (``_core.CudaOptimizer``) from the first device step on: the host arrays are brought up to
date only by ``sync_host()``, which ``state_dict()`` and the EMA's ``averaged()`` call. Every operation is rounded
on its own there too (``__fmul_rn``/``__fadd_rn``/``__fdiv_rn``/``__fsqrt_rn`` under nvcc), so the device update
gives the host's bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pydarknet.errors import DeviceError
from pydarknet.train.schedule import learning_rate, net_options, update_batch

__all__ = ["Optimizer", "WeightEMA", "StepResult", "NonFinite", "gradient_norm", "first_nonfinite"]

_f32 = np.float32
_NORM_CHUNK = 1 << 20  # floats converted to float64 at a time by gradient_norm


@dataclass(frozen=True)
class NonFinite:
    """Where a buffer first holds NaN or infinity."""

    layer: int  # layer index in the cfg (0 = first layer after [net])
    layer_type: str
    tensor: str  # "weights", "biases", "scales", "rolling_mean" or "rolling_variance"
    index: int  # position inside that tensor (flattened)
    value: float

    def __str__(self):
        return f"layer {self.layer} ({self.layer_type}) {self.tensor}[{self.index}] = {self.value}"


@dataclass(frozen=True)
class StepResult:
    iteration: int
    rate: Optional[float]  # the schedule's learning rate used (None when the update was skipped)
    grad_norm: float  # L2 norm of the whole gradient buffer (computed in float64; nan/inf if bad)
    skipped: bool  # True when the gradient held NaN/inf and nothing was changed
    nonfinite: Optional[NonFinite] = None
    ema: Optional[str] = None  # "update", "apply" or None: what the EMA did after this update


@dataclass(frozen=True)
class _Slot:
    layer: int
    start: int
    stop: int
    rule: str  # "decay": weights of conv/connected; "plain": biases/scales; "shortcut": [shortcut] weights
    adam: bool


@dataclass(frozen=True)
class _LayerRule:
    index: int
    lr_scale: np.float32
    clip: np.float32
    dont_update: int
    burnin_update: int
    never: Optional[str]  # why the layer is never updated, or None
    weights: Optional[slice] = None  # the conv weights, for clip


def _as_desc(network):
    """NetworkDesc of a Network or a NetworkDesc."""
    return getattr(network, "desc", network)


def _params_array(params):
    """(flat float32 array, callback to run after writing) for an ndarray or a pydarknet Network (whose newer device
    parameters are copied down first, see pydarknet.core.network)."""
    core = getattr(params, "_core", None)
    if core is not None:
        return params.flat_params, core.touch_params
    return params, None


def _check_buffer(name, array, size, writable):
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.float32 or array.ndim != 1 or array.size != size:
        raise ValueError(
            f"{name} must be a flat float32 array of {size} values (the network's parameter count), "
            f"got {array.dtype} with shape {array.shape}"
        )
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be contiguous")
    if writable and not array.flags.writeable:
        raise ValueError(f"{name} is read-only")


def gradient_norm(grad):
    """L2 norm of a float32 buffer, accumulated in float64 chunk by chunk (one pass, no full-size copy).

    The result is NaN or infinite exactly when the buffer holds NaN or infinity: squares of float32 values summed
    in float64 cannot overflow for any buffer that fits in memory.
    """
    total = 0.0
    for start in range(0, grad.size, _NORM_CHUNK):
        chunk = grad[start : start + _NORM_CHUNK].astype(np.float64)
        total += float(np.dot(chunk, chunk))
    return math.sqrt(total) if total >= 0 else total


def first_nonfinite(desc, buffer):
    """The first tensor (in ``.weights`` order) of ``buffer`` holding NaN or infinity, or None."""
    desc = _as_desc(desc)
    for layer in desc.layers:
        for t in layer.tensors:
            view = buffer[t.offset : t.offset + t.size]
            finite = np.isfinite(view)
            if not finite.all():
                index = int(np.argmin(finite))
                return NonFinite(layer.index, layer.type, t.name, index, float(view[index]))
    return None


def _layer_rules(desc):
    layers = desc.layers
    stops = [l.index for l in layers if l.options.get("stopbackward", 0) == 1]
    last_stop = stops[-1] if stops else -1
    bn_only = [l.index for l in layers if l.options.get("train_only_bn", 0)]
    last_bn_only = bn_only[-1] if bn_only else -1
    rules = {}
    for layer in layers:
        if not layer.tensors:
            continue
        never = None
        if layer.index < last_stop:
            never = f"before the stopbackward=1 layer {last_stop}"
        elif layer.index <= last_bn_only:
            never = f"train_only_bn (set on layer {last_bn_only})"
        weights = None
        if layer.kind.clips:
            t = layer.tensor("weights")
            weights = slice(t.offset, t.offset + t.size)
        rules[layer.index] = _LayerRule(
            layer.index,
            _f32(layer.options.get("learning_rate", 1.0)),
            _f32(layer.options.get("clip", 0.0)) if layer.kind.clips else _f32(0.0),
            int(layer.options.get("dont_update", 0)),
            int(layer.options.get("burnin_update", 0)),
            never,
            weights,
        )
    return rules


def _slots(desc, adam):
    slots = []
    for layer in desc.layers:
        for t in layer.tensors:
            if t.name in ("rolling_mean", "rolling_variance"):
                continue
            if layer.kind.trains_with == "shortcut":
                rule = "shortcut"
            elif t.name == "weights":
                rule = "decay"
            else:
                rule = "plain"
            slots.append(
                _Slot(layer.index, t.offset, t.offset + t.size, rule, adam and layer.kind.trains_with == "sgd+adam")
            )
    return slots


class WeightEMA:
    """Darknet's exponential moving average of convolutional weights, biases and scales (``ema_alpha``)."""

    def __init__(self, network, alpha=None, max_batches=None):
        desc = _as_desc(network)
        opts, _ = net_options(desc)
        self.alpha = _f32(opts["ema_alpha"] if alpha is None else alpha)
        self.max_batches = int(opts["max_batches"] if max_batches is None else max_batches)
        self.param_count = desc.param_count
        self.slices = [
            slice(t.offset, t.offset + t.size)
            for l in desc.layers
            if l.kind.ema
            for t in l.tensors
            if t.name in ("weights", "biases", "scales")
        ]
        self.values = np.zeros(desc.param_count, np.float32)
        self.initialized = False
        self._before_read = None  # set by a device optimizer: brings `values` up from the device

    @property
    def start(self):
        """First iteration after which the average is taken (``max_batches / 2``)."""
        return self.max_batches // 2

    @property
    def apply_at(self):
        """Iteration after which the averages replace the weights (``max_batches - 1000``)."""
        return self.max_batches - 1000

    def after_update(self, params, iteration):
        """Run Darknet's EMA step after the update of ``iteration``; returns "update", "apply" or None."""
        params, touch = _params_array(params)
        _check_buffer("params", params, self.param_count, writable=True)
        if not self.alpha or iteration < self.start:
            return None
        if not self.initialized:
            zero, one = _f32(0.0), _f32(1.0)
            for s in self.slices:
                self.values[s] = zero * self.values[s] + one * params[s]
            self.initialized = True
        if iteration == self.apply_at:
            for s in self.slices:
                params[s] = self.values[s]
            if touch:
                touch()
            return "apply"
        if iteration < self.apply_at:
            keep, take = self.alpha, _f32(_f32(1.0) - self.alpha)
            for s in self.slices:
                self.values[s] = keep * self.values[s] + take * params[s]
            return "update"
        return None

    def averaged(self, params):
        """A copy of ``params`` with the averages in place of convolutional weights, biases and scales: what
        Darknet writes to ``_ema.weights``."""
        params, _ = _params_array(params)
        _check_buffer("params", params, self.param_count, writable=False)
        if self._before_read is not None:
            self._before_read()
        out = np.array(params, copy=True)
        for s in self.slices:
            out[s] = self.values[s]
        return out

    def state_dict(self):
        if self._before_read is not None:
            self._before_read()
        return {"ema": self.values.copy(), "ema_initialized": self.initialized}

    def load_state_dict(self, state):
        values = state["ema"]
        _check_buffer("ema", values, self.param_count, writable=False)
        self.values[:] = values
        self.initialized = bool(state["ema_initialized"])


class Optimizer:
    """Darknet's per-iteration weight update for one network (see the module doc for the exact rules).

    ``network`` is a ``pydarknet.Network`` or its ``NetworkDesc``; the masks of what each tensor gets are built
    once here. ``step`` takes the parameters (an ndarray, or a Network whose buffer is then updated in place)
    and the gradient buffer.
    """

    def __init__(self, network):
        desc = _as_desc(network)
        opts, _ = net_options(desc)
        self.desc = desc
        self.param_count = desc.param_count
        self.adam = bool(opts["adam"])
        self.momentum = _f32(opts["momentum"])
        self.decay = _f32(opts["decay"])
        self.B1, self.B2, self.eps = _f32(opts["B1"]), _f32(opts["B2"]), _f32(opts["eps"])
        self.burn_in = int(opts["burn_in"])
        self.batch = update_batch(desc)
        self.layer_rules = _layer_rules(desc)
        self.slots = _slots(desc, self.adam)
        n = desc.param_count
        # Darknet's *_updates arrays: momentum for SGD; for Adam layers the gradients of skipped iterations.
        self.velocity = np.zeros(n, np.float32)
        self.adam_m = np.zeros(n, np.float32) if self.adam else None
        self.adam_v = np.zeros(n, np.float32) if self.adam else None
        self.adam_pending = None
        self.ema = WeightEMA(desc) if opts["ema_alpha"] else None
        self._device = None  # _core.CudaOptimizer once step_device has run
        self._device_index = None
        self._host_stale = False  # the device buffers are newer than the host arrays
        self._device_pending = False  # Adam's pending buffer is in use on the device (adam_pending is not None)

    # ----- checks -------------------------------------------------------------------------------------------
    def first_nonfinite(self, buffer):
        """The first layer/tensor of ``buffer`` (a gradient or the parameters) holding NaN or inf, or None."""
        return first_nonfinite(self.desc, buffer)

    def frozen_layers(self):
        """{layer index: reason} for the layers this optimizer never updates."""
        return {i: r.never for i, r in self.layer_rules.items() if r.never}

    def _skips(self, rule, iteration):
        """True when Darknet skips this layer's update at ``iteration`` but keeps accumulating its gradient."""
        if rule.burnin_update and rule.burnin_update * self.burn_in > iteration:
            return True
        return rule.dont_update >= iteration

    # ----- the update ---------------------------------------------------------------------------------------
    def step(self, params, grad, iteration, *, rate=None, rng=None):
        """Apply the update closing iteration ``iteration`` (1 for the first) and then the EMA step.

        ``rate`` overrides the schedule's learning rate (``pydarknet.schedule.learning_rate``); ``rng`` is used
        by ``policy=random`` only. On a gradient holding NaN/inf nothing is changed and the result says where.
        """
        self._detach_device()
        params, touch = _params_array(params)
        _check_buffer("params", params, self.param_count, writable=True)
        _check_buffer("grad", grad, self.param_count, writable=False)
        iteration = int(iteration)
        if iteration < 1:
            raise ValueError(f"iteration counts from 1 (the update closing the first iteration), got {iteration}")
        norm = gradient_norm(grad)
        if not math.isfinite(norm):
            return StepResult(iteration, None, norm, True, self.first_nonfinite(grad))
        if rate is None:
            rate = learning_rate(iteration, self.desc, rng)
        rate = _f32(rate)
        batch = _f32(self.batch)
        decay_coef = _f32(-self.decay * batch)
        for slot in self.slots:
            rule = self.layer_rules[slot.layer]
            if rule.never:
                continue
            s = slice(slot.start, slot.stop)
            if self._skips(rule, iteration):
                self._accumulate(slot, s, grad)
                continue
            layer_rate = _f32(rate * rule.lr_scale)
            if slot.adam:
                self._adam(s, params, grad, layer_rate, decay_coef, iteration)
            else:
                self._sgd(slot.rule, s, params, grad, _f32(layer_rate / batch), decay_coef)
        for rule in self.layer_rules.values():
            if rule.clip and rule.weights is not None and not rule.never and not self._skips(rule, iteration):
                w = params[rule.weights]
                np.minimum(rule.clip, np.maximum(-rule.clip, w), out=w)
        ema_action = self.ema.after_update(params, iteration) if self.ema is not None else None
        if touch:
            touch()
        return StepResult(iteration, float(rate), norm, False, None, ema_action)

    # Rules of the device update (csrc/core/cuda_optimizer.h OptimizerSegment) and its buffers (CudaOptimizer).
    _DEVICE_RULES = {"plain": 0, "decay": 1, "shortcut": 2}
    _ADAM, _ADAM_PENDING, _ACCUMULATE, _ACCUMULATE_ADAM = 3, 4, 5, 6
    _VELOCITY, _ADAM_M, _ADAM_V, _PENDING, _EMA = 0, 1, 2, 3, 4

    def _attach_device(self, network):
        """The device optimizer state for ``network``'s GPU, created from the host arrays at the first use."""
        from pydarknet.core.network import _core

        index = int(network.device.split(":")[1])
        if self._device is not None and self._device_index == index:
            return self._device
        self._detach_device()
        device = _core.CudaOptimizer(index, self.param_count)
        self._device, self._device_index = device, index
        self._push_device()
        if self.ema is not None:
            self.ema._before_read = self.sync_host
        return device

    def _push_device(self):
        """Host arrays -> device buffers (at attach and after load_state_dict)."""
        device = self._device
        device.upload(self._VELOCITY, self.velocity)
        if self.adam:
            device.upload(self._ADAM_M, self.adam_m)
            device.upload(self._ADAM_V, self.adam_v)
            self._device_pending = self.adam_pending is not None
            if self._device_pending:
                device.upload(self._PENDING, self.adam_pending)
        if self.ema is not None:
            device.upload(self._EMA, self.ema.values)
        self._host_stale = False

    def sync_host(self):
        """Bring the host arrays (velocity, Adam moments and pending gradients, EMA averages) up to date with the
        device buffers after device steps; a no-op when they already are (or nothing ran on a device)."""
        if self._device is None or not self._host_stale:
            return
        device = self._device
        self.velocity[...] = device.download(self._VELOCITY)
        if self.adam:
            self.adam_m[...] = device.download(self._ADAM_M)
            self.adam_v[...] = device.download(self._ADAM_V)
            self.adam_pending = device.download(self._PENDING) if self._device_pending else None
        if self.ema is not None:
            self.ema.values[...] = device.download(self._EMA)
        self._host_stale = False

    def _detach_device(self):
        """Back to the host arrays as the only state (a host step after device steps)."""
        if self._device is None:
            return
        self.sync_host()
        self._device = self._device_index = None
        if self.ema is not None:
            self.ema._before_read = None

    def save_device_params(self, network):
        """Keep a device copy of ``network``'s parameters (before the training forward pass moves the batch-norm
        rolling statistics), for restore_device_params: one device-to-device copy."""
        network._sync_device()
        self._attach_device(network).save_params(network._cuda)

    def restore_device_params(self, network):
        """Put back the parameters save_device_params kept (an iteration whose update is skipped)."""
        self._attach_device(network).restore_params(network._cuda)
        network._device_params_changed()

    def step_device(self, network, iteration, *, rate=None, rng=None):
        """step() run on the GPU of ``network`` (a pydarknet Network on a CUDA device) with the gradients where
        backward left them: every rule of step() (SGD, Adam, layer rates, frozen layers, dont_update /
        burnin_update accumulation, clip, shortcut clamp) in one kernel over the flat device buffers, then the EMA
        in a second, each operation rounded as the host rounds it.

        Parameters, gradients and the optimizer's buffers stay in device memory; the network's host buffer is
        brought up to date when read (see pydarknet.core.network) and the optimizer's by sync_host(). The
        non-finite check and the gradient norm (float64, chunks in a fixed order) run on the device; only when a
        value is not finite is the gradient copied to the host, to name the layer and tensor.
        """
        cuda = getattr(network, "_cuda", None)
        if cuda is None:
            raise DeviceError("step_device needs a network on a CUDA device; use step() for the CPU")
        if network.desc.param_count != self.param_count:
            raise ValueError(f"the network has {network.desc.param_count} parameters, the optimizer {self.param_count}")
        iteration = int(iteration)
        if iteration < 1:
            raise ValueError(f"iteration counts from 1 (the update closing the first iteration), got {iteration}")
        device = self._attach_device(network)
        network._sync_device()
        first, squares = device.check_grads(cuda)
        norm = math.sqrt(squares) if squares >= 0 else squares
        if first >= 0:
            return StepResult(iteration, None, norm, True, self.first_nonfinite(cuda.grads))
        if rate is None:
            rate = learning_rate(iteration, self.desc, rng)
        rate = _f32(rate)
        batch = _f32(self.batch)
        decay_coef = _f32(-self.decay * batch)
        pending = self._device_pending
        starts, stops, rules, steps, clips = [], [], [], [], []
        for slot in self.slots:
            rule = self.layer_rules[slot.layer]
            if rule.never:
                continue
            step, clip = _f32(0.0), _f32(0.0)
            if self._skips(rule, iteration):
                code = self._ACCUMULATE_ADAM if slot.adam else self._ACCUMULATE
                pending = pending or slot.adam  # the host allocates adam_pending here, seen by later slots
            else:
                layer_rate = _f32(rate * rule.lr_scale)
                if slot.adam:
                    code, step = (self._ADAM_PENDING if pending else self._ADAM), layer_rate
                else:
                    code, step = self._DEVICE_RULES[slot.rule], _f32(layer_rate / batch)
                if rule.clip and rule.weights is not None and rule.weights.start == slot.start:
                    clip = rule.clip
            starts.append(slot.start)
            stops.append(slot.stop)
            rules.append(code)
            steps.append(float(step))
            clips.append(float(clip))
        one = _f32(1.0)
        t = _f32(iteration)
        scalars = [
            decay_coef,
            self.momentum,
            self.B1,
            self.B2,
            self.eps,
            _f32(one - self.B1),
            _f32(one - self.B2),
            _f32(one - np.power(self.B1, t)),
            _f32(one - np.power(self.B2, t)),
        ]
        device.step(cuda, starts, stops, rules, steps, clips, [float(v) for v in scalars])
        self._device_pending = pending
        self._host_stale = True
        network._device_params_changed()
        return StepResult(iteration, float(rate), norm, False, None, self._ema_device(network, iteration))

    def _ema_device(self, network, iteration):
        """WeightEMA.after_update on the device buffers: the same decisions, the kernel doing the arithmetic."""
        ema = self.ema
        if ema is None or not ema.alpha or iteration < ema.start:
            return None
        init = not ema.initialized
        ema.initialized = True
        if iteration == ema.apply_at:
            action, name = 2, "apply"
        elif iteration < ema.apply_at:
            action, name = 1, "update"
        else:
            action, name = 0, None
        ranges = [(s.start, s.stop) for s in ema.slices]
        self._device.ema(network._cuda, ranges, init, action, float(ema.alpha), float(_f32(_f32(1.0) - ema.alpha)))
        return name

    def _accumulate(self, slot, s, grad):
        if slot.adam:
            if self.adam_pending is None:
                self.adam_pending = np.zeros(self.param_count, np.float32)
            self.adam_pending[s] -= grad[s]
        else:
            self.velocity[s] -= grad[s]

    def _sgd(self, rule, s, params, grad, step_coef, decay_coef):
        w, u = params[s], self.velocity[s]
        u -= grad[s]
        if rule == "shortcut":
            np.minimum(_f32(1.0), np.maximum(_f32(-1.0), u), out=u)
        elif rule == "decay":
            u += decay_coef * w
        w += step_coef * u
        u *= self.momentum

    def _adam(self, s, params, grad, layer_rate, decay_coef, t):
        w, m, v = params[s], self.adam_m[s], self.adam_v[s]
        if self.adam_pending is not None:
            d = self.adam_pending[s] - grad[s]
            self.adam_pending[s] = 0
        else:
            d = -grad[s]
        m *= self.B1
        v *= self.B2
        d += decay_coef * w
        m += _f32(_f32(1.0) - self.B1) * d
        d *= d
        v += _f32(_f32(1.0) - self.B2) * d
        m_hat = m / _f32(_f32(1.0) - np.power(self.B1, _f32(t)))
        v_hat = v / _f32(_f32(1.0) - np.power(self.B2, _f32(t)))
        w += (layer_rate * m_hat) / (np.sqrt(v_hat) + self.eps)

    # ----- state --------------------------------------------------------------------------------------------
    def state_dict(self):
        """Copies of every buffer needed to continue bit-exactly (momentum, Adam moments, EMA)."""
        self.sync_host()
        state = {"kind": "adam" if self.adam else "sgd", "velocity": self.velocity.copy()}
        if self.adam:
            state["adam_m"] = self.adam_m.copy()
            state["adam_v"] = self.adam_v.copy()
            if self.adam_pending is not None:
                state["adam_pending"] = self.adam_pending.copy()
        if self.ema is not None:
            state.update(self.ema.state_dict())
        return state

    def load_state_dict(self, state):
        kind = "adam" if self.adam else "sgd"
        if state.get("kind") != kind:
            raise ValueError(
                f"the saved optimizer state is {state.get('kind')!r} but this network trains with "
                f"{kind} (adam={int(self.adam)} in [net])"
            )
        arrays = {"velocity": state["velocity"]}
        if self.adam:
            arrays.update(adam_m=state["adam_m"], adam_v=state["adam_v"])
        for name, value in arrays.items():
            _check_buffer(name, value, self.param_count, writable=False)
        pending = state.get("adam_pending")
        if pending is not None:
            _check_buffer("adam_pending", pending, self.param_count, writable=False)
        if self.ema is not None and "ema" not in state:
            raise ValueError("the saved optimizer state has no EMA buffer but this network uses ema_alpha")
        self.velocity[:] = arrays["velocity"]
        if self.adam:
            self.adam_m[:] = arrays["adam_m"]
            self.adam_v[:] = arrays["adam_v"]
            self.adam_pending = None if pending is None else np.array(pending, dtype=np.float32, copy=True)
        if self.ema is not None:
            self.ema.load_state_dict(state)
        if self._device is not None:
            self._push_device()


class LossScaler:
    """Dynamic loss scaling for fp16 mixed-precision training, with PyTorch GradScaler's documented defaults.

    backward starts from the loss gradient times ``scale`` (Network.loss_scale), so small gradients survive the
    fp16 rounding of the products' operands; ``unscale`` multiplies the summed gradient by 1 / scale once, before
    the update. A non-finite gradient is the scaler's normal signal, not a failure: the update is skipped and the
    scale multiplied by ``backoff``; after ``growth_interval`` finite updates in a row it is multiplied by
    ``growth``. The scale is a power of two, so scaling and unscaling are exact where they neither overflow nor
    underflow. bf16 has float32's range and needs none (its scaler stays at 1 and is not used).
    """

    def __init__(
        self, scale: float = 2.0**16, growth: float = 2.0, backoff: float = 0.5, growth_interval: int = 2000
    ) -> None:
        if not (scale > 0 and math.isfinite(scale)) or growth <= 1 or not 0 < backoff < 1 or growth_interval < 1:
            raise ValueError(
                f"LossScaler needs scale > 0, growth > 1, 0 < backoff < 1 and growth_interval >= 1; got "
                f"{scale}, {growth}, {backoff}, {growth_interval}"
            )
        self.scale = float(scale)
        self.growth = float(growth)
        self.backoff = float(backoff)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0  # finite updates since the last change of the scale

    def apply(self, network) -> None:
        """Make ``network``'s next backward start from gradients times the current scale."""
        network.loss_scale = self.scale

    def unscale(self, network) -> None:
        """Multiply ``network``'s device gradient buffer by 1 / scale (once per update, before it)."""
        network.scale_grads(1.0 / self.scale)

    def update(self, finite: bool) -> bool:
        """Record one update's outcome; returns True when the scale changed."""
        if not finite:
            self.scale *= self.backoff
            self.good_steps = 0
            return True
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            grown = self.scale * self.growth
            self.good_steps = 0
            if math.isfinite(np.float32(grown)):
                self.scale = grown
                return True
        return False

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
