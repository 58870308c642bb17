"""Training on the GPU end to end: the Trainer with ``device="cuda"`` against the CPU trainer, the device-resident
optimizer (SGD with every rule, Adam, EMA) against the host optimizer, resume from ``_last`` on the device, the
``train --device cuda`` command, the non-finite skip, and the rule saying which copy of the parameters is current.

Bounds: the device update is compared bit for bit with the host optimizer given the same parameters and gradients
(both round every float32 operation on its own). Whole iterations differ from the CPU only through the order of
the sums in the forward and backward passes: weights after the steps within normalized MSE 1e-6, losses within
1e-5 relative (measured values are printed; see cuda/NOTES.md).

Skipped without a CUDA device; built with PYDARKNET_CUDA=EMULATE they run in the CPU emulation of CUDA.
"""

import csv

import numpy as np
import pytest
from support.poison import poison_batches
from support.reference import cfg_text, randomize_params

import pydarknet
from pydarknet import _core
from pydarknet.cli.main import main
from pydarknet.data import synthetic
from pydarknet.train.anchors import calc_anchors
from pydarknet.train.optim import Optimizer, WeightEMA
from pydarknet.train.starter import starter_cfg
from pydarknet.train.trainer import Trainer, TrainOptions

HAS_GPU = _core.cuda_device_count() > 0
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU on this machine")

BOUND = 1e-6
LOSS_REL = 1e-5


def nmse(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sum((got - want) ** 2) / max(np.sum(want**2), 1e-30))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-shapes")
    data = synthetic.generate(folder, n_train=16, n_valid=2, size=64, classes=3, seed=3)
    anchors = calc_anchors(str(data), 6, 64, 64, seed=0).anchors
    return data, anchors


def tiny_cfg(tmp_path, anchors, extra="", max_batches=6, name="tiny.cfg"):
    text = starter_cfg(3, 64, 64, anchors, max_batches=max_batches, batch=4)
    # No burn-in, so the three iterations' updates are not vanishingly small; two subdivisions accumulate.
    text = text.replace("burn_in=200", "burn_in=0").replace("subdivisions=1", "subdivisions=2")
    text = text.replace("[net]\n", "[net]\n" + extra, 1)
    path = tmp_path / name
    path.write_text(text)
    return path


def trainer(cfg, data, folder, device, weights=None, **options):
    return Trainer(
        cfg,
        data,
        weights,
        TrainOptions(backup=str(folder), workers=0, seed=5, device=device, quiet=True, **options),
    )


# ----- the device optimizer against the host optimizer --------------------------------------------------------
def optimizer_net(tmp_path, net_options):
    """Convolutions with and without batch-norm, a layer learning rate, clip, dont_update and burnin_update, a
    weighted [shortcut] (clamped velocity), and a train_only_bn layer at the front (never updated)."""
    sections = [
        (
            "convolutional",
            {"filters": 4, "size": 3, "pad": 1, "batch_normalize": 1, "activation": "leaky", "train_only_bn": 1},
        ),
        (
            "convolutional",
            {"filters": 4, "size": 3, "pad": 1, "batch_normalize": 1, "activation": "leaky", "learning_rate": 0.5},
        ),
        ("convolutional", {"filters": 4, "size": 1, "activation": "leaky", "clip": 0.05}),
        ("shortcut", {"from": -2, "weights_type": "per_channel", "activation": "linear"}),
        (
            "convolutional",
            {"filters": 4, "size": 3, "pad": 1, "batch_normalize": 1, "activation": "leaky", "dont_update": 2},
        ),
        ("convolutional", {"filters": 5, "size": 1, "activation": "linear", "burnin_update": 1}),
    ]
    text = cfg_text(7, 6, 3, *sections)
    opts = {"batch": 4, "subdivisions": 2, "learning_rate": 0.01, "momentum": 0.9, "decay": 0.0005}
    opts.update({"burn_in": 3, "max_batches": 2010}, **net_options)
    text = text.replace("[net]\n", "[net]\n" + "".join(f"{k}={v}\n" for k, v in opts.items()), 1)
    path = tmp_path / "opt.cfg"
    path.write_text(text)
    gpu = pydarknet.load(str(path), device="cuda")
    randomize_params(gpu, np.random.default_rng(1))
    return gpu


def host_and_device_steps(gpu, iterations, rate=0.02, ema=False):
    """Run the host and device optimizers side by side on random gradients; returns (host params, host optimizer,
    device optimizer) after each step was compared."""
    host_opt, device_opt = Optimizer(gpu), Optimizer(gpu)
    if ema:  # iterations 1005..1010 of max_batches 2010: averaging starts at 1005, applies at 1010
        host_opt.ema, device_opt.ema = WeightEMA(gpu, alpha=0.9), WeightEMA(gpu, alpha=0.9)
    params = gpu.params.copy()
    rng = np.random.default_rng(2)
    actions = []
    for iteration in iterations:
        grad = rng.standard_normal(params.size).astype(np.float32)
        gpu._cuda.set_grads(grad)
        want = host_opt.step(params, grad, iteration, rate=rate)
        got = device_opt.step_device(gpu, iteration, rate=rate)
        assert not got.skipped and got.rate == want.rate and got.ema == want.ema
        assert got.grad_norm == pytest.approx(want.grad_norm, rel=1e-12)
        np.testing.assert_array_equal(gpu.params, params, err_msg=f"parameters after iteration {iteration}")
        actions.append(got.ema)
    device_opt.sync_host()
    return params, host_opt, device_opt, actions


def test_device_sgd_applies_every_host_rule_bit_for_bit(tmp_path):
    gpu = optimizer_net(tmp_path, {})
    before = gpu.params.copy()
    params, host_opt, device_opt, _ = host_and_device_steps(gpu, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(device_opt.velocity, host_opt.velocity)
    frozen = gpu.desc.layers[0].tensor("weights")
    np.testing.assert_array_equal(
        params[frozen.offset : frozen.offset + frozen.size], before[frozen.offset : frozen.offset + frozen.size]
    )
    clipped = gpu.desc.layers[2].tensor("weights")
    assert np.abs(params[clipped.offset : clipped.offset + clipped.size]).max() <= np.float32(0.05)
    assert np.abs(device_opt.velocity).max() > 0


def test_device_adam_with_pending_gradients_and_ema_equal_the_host(tmp_path):
    gpu = optimizer_net(tmp_path, {"adam": 1, "B1": 0.9, "B2": 0.999, "eps": 1e-6})
    # dont_update=2 and burnin_update=1 (burn_in 3) make Adam layers accumulate pending gradients first
    _, host_opt, device_opt, _ = host_and_device_steps(gpu, [1, 2, 3, 4])
    for name in ("adam_m", "adam_v", "velocity"):
        np.testing.assert_array_equal(getattr(device_opt, name), getattr(host_opt, name), err_msg=name)
    np.testing.assert_array_equal(device_opt.adam_pending, host_opt.adam_pending)
    assert np.abs(device_opt.adam_v).max() > 0
    gpu = optimizer_net(tmp_path, {"adam": 1})
    _, host_opt, device_opt, actions = host_and_device_steps(gpu, range(1005, 1011), ema=True)
    assert actions == ["update"] * 5 + ["apply"]
    np.testing.assert_array_equal(device_opt.ema.values, host_opt.ema.values)
    np.testing.assert_array_equal(device_opt.state_dict()["ema"], host_opt.state_dict()["ema"])


# ----- whole iterations against the CPU trainer ---------------------------------------------------------------
@pytest.mark.parametrize("extra", ["", "adam=1\nema_alpha=0.9\n"], ids=["sgd", "adam-ema"])
def test_three_iterations_on_the_device_match_the_cpu_trainer(dataset, tmp_path, extra):
    data, anchors = dataset
    cfg = tiny_cfg(tmp_path, anchors, extra)
    cpu = trainer(cfg, data, tmp_path / "cpu", "cpu")
    gpu = trainer(cfg, data, tmp_path / "gpu", "cuda")
    start = cpu.net.flat_params.copy()
    np.testing.assert_array_equal(gpu.net.flat_params, start)
    loss_rel = 0.0
    for _ in range(3):
        want, got = cpu.step(), gpu.step()
        assert not want.skipped and not got.skipped
        assert got.loss == pytest.approx(want.loss, rel=LOSS_REL)
        loss_rel = max(loss_rel, abs(got.loss - want.loss) / abs(want.loss))
    error = nmse(gpu.net.flat_params, cpu.net.flat_params)
    moved = nmse(cpu.net.flat_params, start)
    print(
        f"{extra.strip() or 'sgd'}: weights after 3 iterations, normalized MSE {error:.3g} "
        f"(training moved them {moved:.3g}); losses within {loss_rel:.2g} relative"
    )
    assert error <= BOUND and moved > 1e3 * max(error, 1e-30)
    gpu.optimizer.sync_host()
    for name, value in cpu.optimizer.state_dict().items():
        if isinstance(value, np.ndarray):
            assert nmse(gpu.optimizer.state_dict()[name], value) <= BOUND, name


def test_multi_scale_on_the_device_sees_the_current_parameters(dataset, tmp_path):
    """Sizes alternating every iteration (the base network and a resized one): each size's device copy must
    start from the other's update."""
    data, anchors = dataset
    cfg = tiny_cfg(tmp_path, anchors)
    runs = [trainer(cfg, data, tmp_path / d, d) for d in ("cpu", "cuda")]
    for t in runs:
        t.loader.input_size = lambda it: (96, 96) if it % 2 else (64, 64)
    for _ in range(3):
        want, got = (t.step() for t in runs)
        assert (got.width, got.loss) == (want.width, pytest.approx(want.loss, rel=LOSS_REL))
    assert nmse(runs[1].net.flat_params, runs[0].net.flat_params) <= BOUND


def test_resume_from_last_on_the_device_is_bit_identical(dataset, tmp_path):
    data, anchors = dataset
    cfg = tiny_cfg(tmp_path, anchors, "adam=1\nema_alpha=0.9\n", max_batches=4)
    trainer(cfg, data, tmp_path / "a", "cuda", save_last_every=2).run()
    trainer(cfg, data, tmp_path / "b", "cuda", save_last_every=2).run(stop_after=2)
    last = tmp_path / "b" / "tiny_last.weights"
    resumed = Trainer(
        cfg, data, str(last), TrainOptions(backup=str(tmp_path / "b"), workers=0, device="cuda", quiet=True)
    )
    assert resumed.state.iteration == 2
    resumed.run()
    for name in ("tiny_final.weights", "tiny_last.weights", "tiny_ema.weights"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_train_command_on_the_device_writes_what_the_cpu_writes(dataset, tmp_path):
    data, anchors = dataset
    cfg = tiny_cfg(tmp_path, anchors, max_batches=3)
    for device in ("cpu", "cuda"):
        args = ["train", str(cfg), str(data), "--workers", "0", "--seed", "5", "--no-progress", "--quiet"]
        assert main(args + ["--backup", str(tmp_path / device), "--device", device]) == 0
    names = sorted(p.name for p in (tmp_path / "cpu").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "cuda").iterdir())
    assert {"tiny_final.weights", "tiny_last.weights", "tiny_last.state", "results.csv", "chart.png"} <= set(names)
    for name in ("tiny_final.weights", "tiny_last.weights"):
        want = pydarknet.load(str(cfg), str(tmp_path / "cpu" / name)).flat_params
        got = pydarknet.load(str(cfg), str(tmp_path / "cuda" / name)).flat_params
        assert nmse(got, want) <= BOUND, name
    rows = [list(csv.reader(open(tmp_path / d / "results.csv"))) for d in ("cpu", "cuda")]
    assert [r[0] for r in rows[0]] == [r[0] for r in rows[1]] and len(rows[0]) == 4
    for want, got in zip(rows[0][1:], rows[1][1:]):
        assert float(got[1]) == pytest.approx(float(want[1]), rel=LOSS_REL)
        assert got[5:9] == want[5:9]  # images, width, height, skipped
    assert (tmp_path / "cuda" / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nonfinite_on_the_device_skips_the_update_and_names_the_layer(dataset, tmp_path):
    data, anchors = dataset
    cfg = tiny_cfg(tmp_path, anchors)
    lines = []
    t = trainer(cfg, data, tmp_path / "b", "cuda")
    t.log = lines.append
    real_batch = poison_batches(t)
    t.step()
    before = t.net.flat_params.copy()
    t.optimizer.sync_host()
    velocity = t.optimizer.velocity.copy()
    entry = t.step()
    assert entry.skipped and "layer 0 [convolutional]" in lines[-1]
    np.testing.assert_array_equal(t.net.flat_params, before)  # rolling statistics restored on the device too
    t.optimizer.sync_host()
    np.testing.assert_array_equal(t.optimizer.velocity, velocity)
    t.loader.batch = real_batch
    assert not t.step().skipped and not np.array_equal(t.net.flat_params, before)


def test_the_host_buffer_follows_the_device_parameters(tmp_path):
    """After a device step the host buffer is stale until read; reading brings it up; a host write is uploaded
    before the next device step."""
    gpu = optimizer_net(tmp_path, {})
    opt = Optimizer(gpu)
    grad = np.random.default_rng(3).standard_normal(gpu.desc.param_count).astype(np.float32)
    start = gpu.flat_params.copy()
    gpu._cuda.set_grads(grad)
    opt.step_device(gpu, 1, rate=0.02)
    assert np.array_equal(gpu._core.params, start)  # nothing came down yet
    device = np.empty_like(start)
    gpu._cuda.copy_params(device)
    assert not np.array_equal(device, start)
    np.testing.assert_array_equal(gpu.flat_params, device)  # reading the host buffer copies the device one down
    gpu.flat_params[:] = start  # a host write: the next device step starts from it
    opt.step_device(gpu, 2, rate=0.02)
    replay = Optimizer(gpu)  # the host optimizer through the same two steps, the write in between
    params = start.copy()
    replay.step(params, grad, 1, rate=0.02)
    params[:] = start
    replay.step(params, grad, 2, rate=0.02)
    np.testing.assert_array_equal(gpu.flat_params, params)
