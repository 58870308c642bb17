"""Learning-rate schedules and batch bookkeeping exactly as Darknet computes them while training.

Darknet (AlexeyAB ``src/network.c``, ``get_current_rate``) derives the rate from the iteration number
``seen / (batch * subdivisions)`` at the moment the weights are updated. Iterations are counted from 1: the
update that closes the first iteration uses ``learning_rate(1, ...)`` (``train_network_waitkey`` increments
``cur_iteration`` and ``seen`` before ``update_network_gpu`` asks for the rate), and the rate Darknet prints
after iteration ``k`` is ``learning_rate(k, ...)``.

The value is computed with Darknet's C arithmetic: the ``[net]`` values are C ``float``, ``(float)i / n``
divisions happen in single precision, ``pow``/``exp``/``cos`` in double, and the result is rounded back to
``float``. So every value returned here is a float32 number, equal to what Darknet's own function returns
(up to the last bit of the platform's ``pow``/``cos``).

Rules, all from ``get_current_rate`` (policies named as in the cfg's ``policy=``):

* burn-in (any policy): ``it < burn_in`` gives ``lr * (it / burn_in) ** power``.
* ``constant``: ``lr``.  ``step``: ``lr * scale ** (it // step)``.  ``exp``: ``lr * gamma ** it``.
* ``steps``: start from ``lr`` and multiply by ``scales[i]`` for every ``steps[i] <= it`` (the scale applies from
  the step itself on), stopping at the first step still ahead.
* ``poly``: ``lr * (1 - it / max_batches) ** power``.  ``random``: ``lr * u ** power`` with ``u`` uniform in
  [0, 1) (``rand_uniform``; here drawn from the generator the caller passes).
* ``sigmoid``: ``lr / (1 + exp(gamma * (it - step)))``.
* ``sgdr``: cosine restarts. Cycles of ``sgdr_cycle`` iterations (default ``max_batches``), each ``sgdr_mult``
  (default 2) times longer than the one before; a cycle that would end before ``it`` is skipped (strict ``<``,
  so the last iteration of a cycle reaches ``learning_rate_min``); the rate is
  ``lr_min + 0.5 * (lr - lr_min) * (1 + cos((it - start) * 3.14159265 / cycle))`` (AlexeyAB writes pi as
  3.14159265; ``steps``/``scales`` are read for sgdr but not used).

Batch sizes (``parse_net_options`` in ``src/parser.c``): Darknet replaces ``batch`` by ``batch / subdivisions``
(integer division) times ``time_steps``, so one iteration sees ``(batch // subdivisions) * time_steps *
subdivisions`` images (``images_per_iteration``; with batch=64, subdivisions=3 that is 63, not 64). The
optimizer divides by ``update_batch`` = that number times ``get_sequence_value`` (``network_kernels.cu``,
``update_network_gpu``), which is 1 unless ``sequential_subdivisions`` is set.
"""

from __future__ import annotations

import math

import numpy as np

from pydarknet.errors import CfgError

__all__ = ["learning_rate", "POLICIES", "images_per_iteration", "update_batch", "iteration_from_seen", "net_options"]

POLICIES = ("constant", "step", "steps", "exp", "poly", "random", "sigmoid", "sgdr")

# AlexeyAB's network.c spells pi this way in the sgdr branch (hank-ai uses M_PI; they differ by 3.6e-9).
_SGDR_PI = 3.14159265

_f32 = np.float32


def net_options(net):
    """The ``[net]`` options dict and the cfg path (for error messages) of a NetworkDesc or a plain dict."""
    if hasattr(net, "net") and hasattr(net, "layers"):
        return net.net, getattr(net, "path", None)
    return net, None


def _cpow(base, exponent):
    """C's ``pow(double, double)``: NaN for a negative base with a fractional exponent, inf on overflow."""
    try:
        return math.pow(float(base), float(exponent))
    except ValueError:
        return math.nan
    except OverflowError:
        return math.inf


def _cexp(x):
    try:
        return math.exp(float(x))
    except OverflowError:
        return math.inf


def _to_float(x):
    """A C double assigned to a float return value: rounded to single precision."""
    return float(_f32(x))


def _int_option(opts, key, path):
    value = opts.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CfgError(f"[net] '{key}' must be an integer, got {value!r}", path)
    return int(value)


def images_per_iteration(net):
    """Images one Darknet iteration consumes (``net.batch * net.subdivisions`` after ``parse_net_options``)."""
    opts, path = net_options(net)
    batch = _int_option(opts, "batch", path)
    subdivisions = _int_option(opts, "subdivisions", path)
    time_steps = _int_option(opts, "time_steps", path)
    if subdivisions < 1:
        raise CfgError(f"[net] subdivisions={subdivisions} must be at least 1", path)
    if time_steps < 1:
        raise CfgError(f"[net] time_steps={time_steps} must be at least 1", path)
    mini_batch = batch // subdivisions
    if mini_batch < 1:
        raise CfgError(
            f"[net] batch={batch} is smaller than subdivisions={subdivisions}: Darknet's mini-batch "
            f"batch/subdivisions would be 0",
            path,
        )
    return mini_batch * time_steps * subdivisions


def update_batch(net):
    """The ``batch`` Darknet's layer updates divide by (``update_network_gpu``: ``net.batch * net.subdivisions *
    get_sequence_value(net)``)."""
    opts, path = net_options(net)
    subdivisions = _int_option(opts, "subdivisions", path)
    sequential = _int_option(opts, "sequential_subdivisions", path)
    # parse_net_options: sequential_subdivisions defaults to subdivisions and is capped at it.
    if sequential == 0 or sequential > subdivisions:
        sequential = subdivisions
    sequence = max(1, subdivisions // sequential)
    return images_per_iteration(net) * sequence


def iteration_from_seen(seen, net):
    """Darknet's ``cur_iteration`` after loading weights whose header says ``seen`` images
    (``load_weights_upto``: ``get_current_batch``)."""
    return int(seen) // images_per_iteration(net)


def _steps(opts, path):
    steps = list(opts.get("steps") or [])
    scales = list(opts.get("scales") or [])
    if not steps or not scales:
        raise CfgError(
            "policy=steps needs both 'steps' and 'scales' in [net] (Darknet: \"STEPS policy must have "
            'steps and scales in cfg file")',
            path,
        )
    if len(scales) < len(steps):
        raise CfgError(f"[net] has {len(steps)} steps but only {len(scales)} scales", path)
    return steps, scales


def learning_rate(iteration, net, rng=None):
    """Darknet's learning rate for the update closing iteration ``iteration`` (1 for the first update).

    ``net`` is a NetworkDesc (``pydarknet.graph``) or its ``[net]`` options dict. ``rng`` (a
    ``numpy.random.Generator``) is needed only for ``policy=random``.
    """
    opts, path = net_options(net)
    it = int(iteration)
    if it < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    lr = _f32(opts["learning_rate"])
    power = _f32(opts["power"])
    burn_in = _int_option(opts, "burn_in", path)
    if it < burn_in:
        ratio = _f32(_f32(it) / _f32(burn_in))
        return _to_float(float(lr) * _cpow(ratio, power))
    policy = opts.get("policy", "constant")
    if policy == "constant":
        return float(lr)
    if policy == "step":
        step = _int_option(opts, "step", path)
        if step <= 0:
            raise CfgError(f"policy=step needs step >= 1 (got {step})", path)
        return _to_float(float(lr) * _cpow(_f32(opts["scale"]), it // step))
    if policy == "steps":
        steps, scales = _steps(opts, path)
        rate = lr
        for step, scale in zip(steps, scales):
            if step > it:
                break
            rate = _f32(rate * _f32(scale))
        return float(rate)
    if policy == "exp":
        return _to_float(float(lr) * _cpow(_f32(opts["gamma"]), it))
    if policy == "poly":
        max_batches = _int_option(opts, "max_batches", path)
        if max_batches <= 0:
            raise CfgError(f"policy=poly needs max_batches >= 1 (got {max_batches})", path)
        base = _f32(_f32(1.0) - _f32(_f32(it) / _f32(max_batches)))
        return _to_float(float(lr) * _cpow(base, power))
    if policy == "random":
        if rng is None:
            raise ValueError("policy=random needs a random generator (rng=numpy.random.default_rng(seed))")
        return _to_float(float(lr) * _cpow(_f32(rng.random()), power))
    if policy == "sigmoid":
        exponent = _f32(_f32(opts["gamma"]) * _f32(it - _int_option(opts, "step", path)))
        return _to_float(float(lr) * (1.0 / (1.0 + _cexp(exponent))))
    if policy == "sgdr":
        cycle = _int_option(opts, "sgdr_cycle", path) or _int_option(opts, "max_batches", path)
        mult = _int_option(opts, "sgdr_mult", path)
        if cycle <= 0:
            raise CfgError("policy=sgdr needs sgdr_cycle (or max_batches) >= 1", path)
        if mult < 1:
            raise CfgError(f"policy=sgdr needs sgdr_mult >= 1 (got {mult})", path)
        start = 0
        while start + cycle < it:
            start += cycle
            cycle *= mult
        lr_min = _f32(opts["learning_rate_min"])
        span = _f32(lr - lr_min)
        angle = float(_f32(it - start)) * _SGDR_PI / cycle
        return _to_float(float(lr_min) + 0.5 * float(span) * (1.0 + math.cos(angle)))
    raise CfgError(
        f"[net] policy={policy!r} is not one of {', '.join(POLICIES)} (Darknet would fall back to constant)", path
    )
