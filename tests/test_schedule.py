"""Learning-rate schedules against Darknet's get_current_rate formulas written out independently (float64), and
hand-computed values at the edges: burn-in, step boundaries, sgdr restarts, batch bookkeeping."""

import math

import numpy as np
import pytest

from pydarknet.core.cfg import parse_cfg_text
from pydarknet.core.graph import build_network
from pydarknet.errors import CfgError
from pydarknet.train.schedule import images_per_iteration, iteration_from_seen, learning_rate, update_batch

LAYER = "\n[convolutional]\nfilters=2\nsize=1\nactivation=linear\n"


def net(**keys):
    lines = ["[net]", "width=8", "height=8", "channels=3"] + [f"{k}={v}" for k, v in keys.items()]
    return build_network(parse_cfg_text("\n".join(lines) + "\n" + LAYER))


def c(x):
    """A cfg number as Darknet holds it: a C float."""
    return float(np.float32(x))


def close(got, want):
    # The implementation uses the cfg values as C floats (relative error up to 6e-8 each, multiplied by the
    # exponent in (it/burn_in)**power) and rounds the result to float32, as Darknet does; the references here
    # are float64 of the decimal values, hence a tolerance of a few float32 ulps.
    assert got == pytest.approx(want, rel=1e-6, abs=1e-12), (got, want)


def test_values_are_float32_numbers():
    d = net(learning_rate=0.00261, burn_in=1000, policy="steps", steps="400,800", scales=".1,.1")
    for it in (0, 1, 7, 999, 1000, 500, 400, 800, 10000):
        rate = learning_rate(it, d)
        assert float(np.float32(rate)) == rate


def test_burn_in_edges():
    d = net(learning_rate=0.01, burn_in=1000, power=4, policy="constant")
    assert learning_rate(0, d) == 0.0
    close(learning_rate(500, d), 0.01 * 0.5**4)
    close(learning_rate(999, d), 0.01 * (999 / 1000) ** 4)
    assert learning_rate(1000, d) == float(np.float32(0.01))  # burn-in ends at it == burn_in
    close(learning_rate(250, net(learning_rate=0.01, burn_in=1000, power=2)), 0.01 * 0.25**2)


def test_burn_in_applies_to_every_policy():
    for policy, extra in [
        ("steps", dict(steps="5000", scales=".1")),
        ("poly", dict(max_batches=6000)),
        ("exp", dict(gamma=0.99)),
        ("sgdr", dict(max_batches=6000)),
    ]:
        d = net(learning_rate=0.002, burn_in=100, policy=policy, **extra)
        close(learning_rate(30, d), 0.002 * 0.3**4)


def test_steps_boundaries():
    d = net(learning_rate=0.001, policy="steps", steps="400000,450000", scales=".1,.1", max_batches=500500)
    close(learning_rate(1, d), 0.001)
    close(learning_rate(399999, d), 0.001)
    close(learning_rate(400000, d), 0.0001)  # the scale applies from the step itself
    close(learning_rate(449999, d), 0.0001)
    close(learning_rate(450000, d), 0.00001)
    close(learning_rate(10**7, d), 0.00001)


def test_steps_with_growing_scale_and_unsorted_steps():
    d = net(learning_rate=0.1, policy="steps", steps="100,200,50", scales="10,.5,.1")
    close(learning_rate(99, d), 0.1)
    close(learning_rate(100, d), 1.0)
    close(learning_rate(150, d), 1.0)
    # Darknet stops at the first step still ahead: step 50, listed after 100, only counts once 100 is passed.
    close(learning_rate(60, d), 0.1)
    close(learning_rate(200, d), 0.1 * 10 * 0.5 * 0.1)


def test_step_policy():
    d = net(learning_rate=0.01, policy="step", step=1000, scale=0.5)
    for it in (1, 999, 1000, 1999, 2000, 5500):
        close(learning_rate(it, d), 0.01 * 0.5 ** (it // 1000))


def test_exp_poly_sigmoid():
    d = net(learning_rate=0.01, policy="exp", gamma=0.999)
    for it in (1, 10, 1000, 12345):
        close(learning_rate(it, d), c(0.01) * c(0.999) ** it)  # gamma is a C float: 0.999 ** it would drift
    d = net(learning_rate=0.01, policy="poly", power=4, max_batches=10000)
    for it in (1, 2500, 5000, 9999, 10000):
        close(learning_rate(it, d), 0.01 * (1 - it / 10000) ** 4)
    d = net(learning_rate=0.01, policy="sigmoid", gamma=0.01, step=500)
    for it in (1, 499, 500, 501, 3000):
        close(learning_rate(it, d), 0.01 / (1 + math.exp(0.01 * (it - 500))))
    assert learning_rate(500, d) == pytest.approx(0.005, rel=1e-7)


def sgdr_reference(it, lr, lr_min, cycle, mult):
    start = 0
    while start + cycle < it:
        start += cycle
        cycle *= mult
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos((it - start) * math.pi / cycle))


def test_sgdr_restarts():
    d = net(learning_rate=0.01, policy="sgdr", sgdr_cycle=100, sgdr_mult=2, learning_rate_min=0.0001, max_batches=1000)
    for it in (1, 50, 99, 100, 101, 200, 300, 301, 700, 701, 1000):
        # AlexeyAB writes pi as 3.14159265: 4e-9 relative to pi, far below float32 resolution
        close(learning_rate(it, d), sgdr_reference(it, 0.01, 0.0001, 100, 2))
    close(learning_rate(50, d), 0.0001 + 0.5 * (0.01 - 0.0001))
    assert learning_rate(100, d) == pytest.approx(0.0001, rel=1e-6)  # end of the first cycle: the minimum
    assert learning_rate(101, d) > 0.0099  # restart
    assert learning_rate(300, d) == pytest.approx(0.0001, rel=1e-6)  # second cycle is 200 long
    # sgdr_cycle defaults to max_batches
    d2 = net(learning_rate=0.01, policy="sgdr", max_batches=400)
    close(learning_rate(200, d2), sgdr_reference(200, 0.01, 0.00001, 400, 2))


def test_random_policy_uses_the_generator():
    d = net(learning_rate=0.01, policy="random", power=2)
    got = [learning_rate(5, d, np.random.default_rng(7)) for _ in range(2)]
    u = np.float32(np.random.default_rng(7).random())
    assert got[0] == got[1]
    close(got[0], 0.01 * float(u) ** 2)
    with pytest.raises(ValueError, match="random generator"):
        learning_rate(5, d)


@pytest.mark.parametrize(
    "keys, match",
    [
        (dict(policy="bogus"), "bogus"),
        (dict(policy="steps", steps="100"), "steps and scales"),
        (dict(policy="steps", steps="100,200", scales=".1"), "2 steps but only 1 scales"),
        (dict(policy="step", step=0), "step >= 1"),
        (dict(policy="poly"), "max_batches"),
        (dict(policy="sgdr"), "sgdr_cycle"),
    ],
)
def test_bad_schedule_settings_are_cfg_errors(keys, match):
    with pytest.raises(CfgError, match=match):
        learning_rate(10, net(**keys))


def test_batch_bookkeeping():
    d = net(batch=64, subdivisions=3)
    assert images_per_iteration(d) == 63  # Darknet: (64 // 3) * 3
    assert update_batch(d) == 63
    assert iteration_from_seen(63 * 1000 + 62, d) == 1000
    d = net(batch=64, subdivisions=16, sequential_subdivisions=4)
    assert images_per_iteration(d) == 64 and update_batch(d) == 64 * 4
    assert images_per_iteration(net(batch=8, subdivisions=2, time_steps=3)) == 24
    with pytest.raises(CfgError, match="smaller than subdivisions"):
        images_per_iteration(net(batch=2, subdivisions=4))


def test_plain_dict_options_work_too():
    d = net(learning_rate=0.004, burn_in=10)
    assert learning_rate(5, d.net) == learning_rate(5, d)
