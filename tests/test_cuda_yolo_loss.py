"""The [yolo] loss on the device (device_yolo_loss) against the numpy loss (yolo_loss).

Most cases use a network that is a single [yolo] layer reading the network input, so the head's output is a
random tensor we choose (raw values for x, y, w, h, objectness and classes) and the gradient with respect to the
network input *is* the head's gradient (the layer's backward is the identity): backward_device(input_grad=True)
reads back the device gradient the loss left in place. Truths are random, several per image, with truths sharing
a cell and an anchor, boxes at the image edge, zero-size rows and images without truths. Each option of
YoloLossConfig is exercised by its own case.

Measured: the gradient as normalized MSE sum((device - numpy)^2) / sum(numpy^2) <= 1e-6; the loss and the three
cost terms (and the per-image class/iou/total losses, also sums of the deltas) relative error <= 1e-6; the
integer statistics (count, total_bbox, rewritten_bbox, recall counts) equal, the averaged statistics (avg IoU,
class, obj, no-obj) relative error <= 1e-9 (the same double sums in another order). Whole network:
yolov4-tiny at 64 x 64, batch 2 -- forward_train, the device loss of both heads and backward_device give the same
parameter gradients as forward_train, the numpy loss and backward of the uploaded gradients (normalized MSE
<= 1e-6).

Skipped without a CUDA device; with PYDARKNET_CUDA=EMULATE this runs in the CPU emulation (cuda/emulation/).
"""

import math
import pathlib
import zlib

import numpy as np
import pytest
from support.reference import cfg_text, randomize_params

import pydarknet
from pydarknet import _core
from pydarknet.errors import DeviceError, TruthError
from pydarknet.train.yolo_loss import YoloLossConfig, cost_from_terms, device_yolo_loss, yolo_loss

HAS_GPU = _core.cuda_device_count() > 0
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU on this machine")

BOUND = 1e-6
NET_W, NET_H = 128, 96  # the network size the anchors are measured in
ANCHORS = [10, 14, 23, 27, 37, 58, 50, 40, 81, 82, 60, 100]  # six anchors, pixels at NET_W x NET_H


def nmse(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sum((got - want) ** 2) / max(np.sum(want**2), 1e-30))


def rel(got, want):
    return abs(got - want) / max(abs(want), 1e-12)


def head_network(tmp_path, classes, mask, h=7, w=9, **options):
    """A network whose only layer is [yolo] over an input of len(mask)*(5+classes) channels."""
    keys = dict(mask=list(mask), anchors=ANCHORS, classes=classes, num=len(ANCHORS) // 2, **options)
    text = cfg_text(w, h, len(mask) * (5 + classes), ("yolo", keys))
    path = tmp_path / "head.cfg"
    path.write_text(text)
    return pydarknet.load(str(path), device="cuda")


def random_truths(rng, batch, classes):
    """Per image: random boxes, one truth sharing another's cell and anchor (same size, other class), one that
    shares its cell only, an edge box at x = 1 / y = 0, a zero-size row; the last image has none."""
    truths = []
    for b in range(batch):
        if b == batch - 1:
            truths.append(np.zeros((0, 5)))
            continue
        k = int(rng.integers(2, 6))
        rows = []
        for _ in range(k):
            rows.append([rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.8), rng.uniform(0.05, 0.8), 0])
            rows[-1][4] = int(rng.integers(0, classes))
        x, y, bw, bh, c = rows[0]
        rows.append([x, y, bw, bh, (c + 1) % classes])  # same cell, same anchor, another class
        rows.append([x, y, bw * 0.5, bh * 1.7, c])  # same cell
        rows.append([x, y, bw, bh, c])  # the same truth again: its class entry is rewritten
        rows.append([1.0, 0.0, 0.2, 0.3, int(rng.integers(0, classes))])  # on the edge
        rows.append([0.5, 0.5, 0.0, 0.4, 0])  # zero width: skipped
        order = rng.permutation(len(rows))
        truths.append(np.asarray(rows, np.float64)[order])
    return truths


def head_input(rng, batch, channels, h, w, new_coords):
    x = rng.normal(0, 1.2, (batch, channels, h, w)).astype(np.float32)
    if new_coords:
        # new_coords heads read the logistic of the conv before them; their w, h are 2*(that)^2-like
        x = (1 / (1 + np.exp(-x))).astype(np.float32)
    return x


def compare(net, x, truths, index=0):
    """Device loss + backward_device vs numpy loss on the same output; returns the measured errors."""
    net.zero_grads()
    net.forward_train(x, seed=1, iteration=1)
    out = net.train_output(index)
    want = yolo_loss(out, truths, net.layers[index], NET_W, NET_H)
    got = device_yolo_loss(net, index, truths, NET_W, NET_H)
    assert got.grad is None and got.delta is None
    device_grad = net.backward_device(input_grad=True)
    assert np.isfinite(want.grad).all()
    bad = ~np.isfinite(device_grad)
    assert not bad.any(), f"{int(bad.sum())} non-finite gradient values"
    errors = {"grad": nmse(device_grad, want.grad)}
    assert errors["grad"] <= BOUND, f"gradient normalized MSE {errors['grad']:.3g}"
    errors["loss"] = rel(got.loss, want.loss)
    assert errors["loss"] <= BOUND, f"loss {got.loss!r} vs {want.loss!r}"
    for k, (a, b) in enumerate(zip(got.cost_terms, want.cost_terms)):
        assert rel(a, b) <= BOUND, f"cost term {k}: {a!r} vs {b!r}"
    assert rel(cost_from_terms(*got.cost_terms), want.loss) <= BOUND
    for name in ("count", "total_bbox", "rewritten_bbox", "recall50", "recall75", "iou_loss_kind"):
        assert getattr(got, name) == getattr(want, name), f"{name}: {getattr(got, name)} != {getattr(want, name)}"
    for name in ("class_loss", "iou_loss", "total_loss"):  # sums of the float32 deltas, like the loss
        errors[name] = rel(getattr(got, name), getattr(want, name))
        assert errors[name] <= BOUND, name
    for name in ("avg_iou", "avg_class", "avg_obj", "avg_noobj"):
        errors[name] = rel(getattr(got, name), getattr(want, name))
        assert errors[name] <= 1e-9, name
    return want, errors


CASES = {
    "mse": {},
    "giou": dict(iou_loss="giou", iou_normalizer=0.07),
    "diou": dict(iou_loss="diou", iou_normalizer=0.07),
    "ciou": dict(iou_loss="ciou", iou_normalizer=0.07, cls_normalizer=1.0),
    "iou": dict(iou_loss="iou"),
    "new_coords_mse": dict(new_coords=1),
    "new_coords_ciou": dict(new_coords=1, iou_loss="ciou", iou_normalizer=0.05),
    "label_smooth": dict(label_smooth_eps=0.1),
    "focal": dict(focal_loss=1),
    "counters_per_class": dict(counters_per_class="100,30,7,250", cls_normalizer=1.5, iou_loss="ciou"),
    "counters_mse_max_delta": dict(counters_per_class="100,30,7,250", max_delta=3),
    "iou_thresh": dict(iou_thresh=0.2, iou_loss="ciou", iou_normalizer=0.07),
    "iou_thresh_giou_kind": dict(iou_thresh=0.1, iou_thresh_kind="giou"),
    "truth_thresh": dict(truth_thresh=0.3, ignore_thresh=0.2),
    "truth_thresh_smooth": dict(truth_thresh=0.3, ignore_thresh=0.2, objectness_smooth=1),
    "objectness_smooth": dict(objectness_smooth=1, ignore_thresh=0.1),
    "low_ignore": dict(ignore_thresh=0.05, obj_normalizer=0.4),
    "scale_x_y": dict(scale_x_y=1.2, iou_loss="ciou", iou_normalizer=0.07),
    "max_delta": dict(max_delta=0.2, iou_loss="giou", iou_normalizer=2.0),
    "delta_normalizer": dict(delta_normalizer=0.5, iou_loss="diou"),
    "show_details_0": dict(show_details=0, iou_loss="ciou"),
}


@pytest.mark.parametrize("mask", [(0, 1, 2), (2, 3, 4, 5)], ids=["mask012", "mask2345"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_device_loss_matches_numpy(tmp_path, case, mask):
    options = CASES[case]
    classes = 4
    net = head_network(tmp_path, classes, mask, **options)
    rng = np.random.default_rng(zlib.crc32(f"{case}{mask}".encode()))
    batch, h, w = 4, 7, 9
    x = head_input(rng, batch, len(mask) * (5 + classes), h, w, bool(options.get("new_coords")))
    truths = random_truths(rng, batch, classes)
    want, _ = compare(net, x, truths)
    assert want.count > 0  # the case trains positives


def test_the_rules_are_exercised(tmp_path):
    """The random cases reach the paths they are meant to: rewritten boxes, ignored predictions, truth_thresh
    positives, averaged deltas (checked on the numpy side, which the device equals)."""
    classes = 4
    rng = np.random.default_rng(3)
    net = head_network(tmp_path, classes, (2, 3, 4, 5), truth_thresh=0.3, ignore_thresh=0.2, iou_thresh=0.2)
    x = head_input(rng, 4, 4 * (5 + classes), 7, 9, False)
    truths = random_truths(rng, 4, classes)
    want, _ = compare(net, x, truths)
    assert want.rewritten_bbox > 0
    assert want.total_bbox > want.count  # truth_thresh positives wrote box deltas too
    assert (want.delta[:, 4 :: 5 + classes] == 0).any()  # ignored predictions


def test_no_truths_at_all(tmp_path):
    net = head_network(tmp_path, 3, (0, 1, 2))
    rng = np.random.default_rng(1)
    x = head_input(rng, 2, 3 * 8, 7, 9, False)
    want, _ = compare(net, x, [None, np.zeros((0, 5))])
    assert want.count == 0 and want.loss > 0


def test_nan_in_the_output_makes_the_loss_nan(tmp_path):
    """A NaN objectness in an image without truths, as in the numpy loss, makes the loss NaN (the trainer's
    non-finite check sees it); the device does not zero it."""
    net = head_network(tmp_path, 3, (0, 1, 2))
    rng = np.random.default_rng(2)
    x = head_input(rng, 2, 3 * 8, 7, 9, False)
    x[1, 4, 3, 3] = np.nan  # objectness of anchor 0, image 1 (no truths)
    truths = [np.array([[0.4, 0.5, 0.3, 0.3, 1]]), None]
    net.zero_grads()
    net.forward_train(x)
    want = yolo_loss(net.train_output(0), truths, net.layers[0], NET_W, NET_H)
    got = device_yolo_loss(net, 0, truths, NET_W, NET_H)
    assert math.isnan(want.loss) and math.isnan(got.loss)
    assert math.isnan(got.cost_terms[2])
    grad = net.backward_device(input_grad=True)
    assert np.isnan(grad[1, 4, 3, 3])
    assert np.isfinite(np.delete(grad.ravel(), np.ravel_multi_index((1, 4, 3, 3), grad.shape))).all()


@pytest.mark.parametrize(
    "bad",
    [
        [[0.5, 0.5, 0.2, 0.2, 7]],  # class out of range
        [[1.2, 0.5, 0.2, 0.2, 0]],  # centre outside the image
        [[0.5, 0.5, -0.2, 0.2, 0]],  # negative size
        [[0.5, np.nan, 0.2, 0.2, 0]],
    ],
)
def test_bad_truths_raise_truth_error(tmp_path, bad):
    net = head_network(tmp_path, 3, (0, 1, 2))
    x = head_input(np.random.default_rng(0), 2, 24, 7, 9, False)
    net.forward_train(x)
    truths = [np.array(bad, np.float64), None]
    with pytest.raises(TruthError) as want:
        yolo_loss(net.train_output(0), truths, net.layers[0], NET_W, NET_H)
    with pytest.raises(TruthError) as got:
        device_yolo_loss(net, 0, truths, NET_W, NET_H)
    assert str(got.value) == str(want.value)


def test_device_loss_needs_a_cuda_network(tmp_path):
    text = cfg_text(9, 7, 24, ("yolo", dict(mask="0,1,2", anchors=ANCHORS, classes=3, num=6)))
    (tmp_path / "h.cfg").write_text(text)
    cpu = pydarknet.load(str(tmp_path / "h.cfg"))
    with pytest.raises(DeviceError):
        device_yolo_loss(cpu, 0, [None], NET_W, NET_H)
    with pytest.raises(DeviceError):
        cpu.backward_device()


def test_host_gradient_replaces_the_device_one(tmp_path):
    """backward given a gradient for a head whose device loss ran uses the given one; a device gradient seeds
    one backward only."""
    net = head_network(tmp_path, 3, (0, 1, 2))
    rng = np.random.default_rng(4)
    x = head_input(rng, 2, 24, 7, 9, False)
    net.forward_train(x)
    device_yolo_loss(net, 0, [np.array([[0.4, 0.5, 0.3, 0.3, 1]]), None], NET_W, NET_H)
    given = rng.standard_normal(x.shape).astype(np.float32)
    got = net.backward({0: given}, input_grad=True)
    assert np.array_equal(got, given)
    assert not net.backward_device(input_grad=True).any()  # consumed


def test_whole_network_gradients_match_the_host_loss():
    """yolov4-tiny at 64 x 64, batch 2, random parameters: device loss + backward_device == numpy loss +
    backward of the uploaded gradients, parameter gradients and input gradient."""
    path = pathlib.Path(__file__).resolve().parents[1] / "cfg" / "yolov4-tiny.cfg"
    net = pydarknet.load(str(path), device="cuda", width=64, height=64)
    rng = np.random.default_rng(5)
    randomize_params(net, rng)
    params = net.params.copy()
    x = rng.uniform(0, 1, (2, *net.input_shape)).astype(np.float32)
    classes = YoloLossConfig.from_options(net.layers[net.yolo_layers[0]].options).classes
    truths = random_truths(rng, 2, classes)

    net.zero_grads()
    heads = net.forward_train(x, seed=1, iteration=1)
    host = {i: yolo_loss(heads[i], truths, net.layers[i], 64, 64) for i in net.yolo_layers}
    want_input = net.backward({i: r.grad for i, r in host.items()}, input_grad=True)
    want = net.grads

    net.params[...] = params  # forward_train moved the batch-norm rolling statistics
    net.zero_grads()
    assert net.forward_train(x, seed=1, iteration=1, copy_outputs=False) == {}
    device = {i: device_yolo_loss(net, i, truths, 64, 64) for i in net.yolo_layers}
    got_input = net.backward_device(input_grad=True)
    got = net.grads

    for i in net.yolo_layers:
        assert rel(device[i].loss, host[i].loss) <= BOUND
        assert device[i].count == host[i].count
    assert sum(r.count for r in host.values()) > 0
    assert np.isfinite(got).all()
    assert nmse(got, want) <= BOUND, nmse(got, want)
    assert nmse(got_input, want_input) <= BOUND


def test_the_loss_keeps_its_device_scratch_between_calls(tmp_path):
    """The loss's device buffers are allocated at the first call and reused (grown only when a call needs more):
    repeated calls allocate nothing and give the same results; more truths per image grow the truth buffers."""
    classes = 4
    net = head_network(tmp_path, classes, (0, 1, 2))
    rng = np.random.default_rng(5)
    x = head_input(rng, 3, 3 * (5 + classes), 7, 9, False)
    truths = random_truths(rng, 3, classes)
    assert net._cuda.loss_scratch_allocations == 0
    compare(net, x, truths)  # equal to the numpy loss
    allocated = net._cuda.loss_scratch_allocations
    assert allocated > 0
    first = device_yolo_loss(net, 0, truths, NET_W, NET_H)
    for _ in range(2):
        again = device_yolo_loss(net, 0, truths, NET_W, NET_H)
        assert net._cuda.loss_scratch_allocations == allocated  # nothing allocated per call
        assert (again.loss, again.cost_terms) == (first.loss, first.cost_terms)
    more = [np.concatenate([t, t, t]) for t in truths]  # three times the truth slots per image
    compare(net, x, more)
    grown = net._cuda.loss_scratch_allocations
    assert grown > allocated
    compare(net, x, truths)  # fewer again: the grown buffers serve
    assert net._cuda.loss_scratch_allocations == grown
