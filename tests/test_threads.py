"""One network shared by several threads (a web server's request threads): every call's result equals the
serial result bit for bit, returned arrays belong to the caller, and a training sequence interleaved with
another thread's is refused loudly. yolov4-tiny with seeded random weights at a small input size, so no download
is needed and the test takes seconds."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import pydarknet
from pydarknet.inference.detect import Detector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "cfg", "yolov4-tiny.cfg")
THREADS, CALLS = 4, 10
THRESH = 0.3
JOIN_SECONDS = 300  # a thread still running after this means a deadlock: fail instead of hanging


def _run_threads(work, threads=THREADS):
    """Runs work(t) in `threads` threads at once (released together); returns their results in thread order."""
    barrier = threading.Barrier(threads)
    results, errors = [None] * threads, []

    def body(t):
        barrier.wait()
        try:
            results[t] = work(t)
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    pool = [threading.Thread(target=body, args=(t,), daemon=True) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(JOIN_SECONDS)
    assert not any(th.is_alive() for th in pool), "threads did not finish: deadlock"
    if errors:
        raise errors[0]
    return results


@pytest.fixture(scope="module")
def net():
    net = pydarknet.load(CFG, width=128, height=128, seed=3)
    # Random weights give every class probability about 0.5 * 0.5; raising class 0's bias in the heads makes it
    # the one class above THRESH, so a detection is a few hundred boxes of class 0.
    for i in net.yolo_layers:
        biases = net.layers[i - 1].params["biases"]
        biases[5::85] += 3.0
        biases[4::85] += 0.2
    return net


def _inputs(net, count, seed):
    rng = np.random.default_rng(seed)
    return [rng.random((1, *net.input_shape), dtype=np.float32) for _ in range(count)]


def test_concurrent_forward_equals_serial(net):
    xs = _inputs(net, THREADS, 0)
    refs = [net.forward(x) for x in xs]

    def work(t):
        return [net.forward(xs[t]) for _ in range(CALLS)]

    results = _run_threads(work)
    wrong = sum(
        not all(np.array_equal(a, b) for a, b in zip(out, refs[t])) for t in range(THREADS) for out in results[t]
    )
    assert wrong == 0, f"{wrong} of {THREADS * CALLS} concurrent forwards differ from the serial result"


def test_concurrent_forward_all_equals_serial(net):
    xs = _inputs(net, THREADS, 1)
    refs = [net.forward_all(x) for x in xs]

    def work(t):
        return [net.forward_all(xs[t]) for _ in range(3)]

    results = _run_threads(work)
    for t in range(THREADS):
        for out in results[t]:
            assert len(out) == len(refs[t])
            for i, (a, b) in enumerate(zip(out, refs[t])):
                assert np.array_equal(a, b), f"thread {t}: layer {i} differs from the serial result"


def test_returned_arrays_are_not_overwritten_by_later_calls(net):
    x1, x2 = _inputs(net, 2, 2)
    first = net.forward(x1)
    kept = [a.copy() for a in first]
    every = net.forward_all(x1)
    kept_all = [a.copy() for a in every]
    later = net.forward(x2) + net.forward_all(x2)
    for a, b in zip(first + every, kept + kept_all):
        np.testing.assert_array_equal(a, b)
        assert not any(np.shares_memory(a, c) for c in later)
    # Writing into a result changes nothing the network keeps.
    first[0][...] = 0
    np.testing.assert_array_equal(net.forward(x1)[0], kept[0])


def _images(count, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (96 + 16 * k, 128, 3), dtype=np.uint8) for k in range(count)]


def _same_results(a, b):
    assert a.path == b.path and a.image_size == b.image_size and a.names == b.names
    for field in ("xyxy", "conf", "class_id", "box_index", "objectness"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_concurrent_detect_equals_serial(net):
    images = _images(THREADS, 4)
    refs = [net.detect(img, thresh=THRESH) for img in images]
    assert sum(len(r.conf) for r in refs) > 0, "the test needs detections to compare"

    def work(t):
        return [net.detect(images[t], thresh=THRESH) for _ in range(CALLS)]

    results = _run_threads(work)
    for t in range(THREADS):
        for res in results[t]:
            _same_results(res, refs[t])


def test_concurrent_detector_with_tta(net):
    detector = Detector(net, thresh=THRESH, tta=True)
    images = _images(THREADS, 5)
    refs = [detector(img) for img in images]
    assert sum(len(r.conf) for r in refs) > 0, "the test needs detections to compare"

    def work(t):
        return [detector(images[t]) for _ in range(4)]

    results = _run_threads(work)
    for t in range(THREADS):
        for res in results[t]:
            _same_results(res, refs[t])


def test_training_interleaved_with_another_thread_is_refused(net):
    small = pydarknet.load(CFG, width=64, height=64, seed=5)
    a, b = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    try:
        x = _inputs(small, 1, 6)[0]
        a.submit(small.forward_train, x).result()
        b.submit(small.forward_train, x).result()  # another thread's training pass replaces thread a's state
        last = len(small.layers) - 1
        grad = {last: np.ones((1, *small.layers[last].out_shape), np.float32)}
        with pytest.raises(pydarknet.ConcurrentUseError, match="another thread"):
            a.submit(small.backward, grad).result()
        with pytest.raises(pydarknet.ConcurrentUseError, match="another thread"):
            a.submit(small.train_output, last).result()
        assert b.submit(small.backward, grad).result() is None  # the thread that ran the last pass goes on
    finally:
        a.shutdown()
        b.shutdown()


SMALL_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""


@pytest.mark.skipif(pydarknet._core.cuda_device_count() == 0, reason="no CUDA GPU (or CUDA emulation) in this build")
def test_concurrent_forward_on_cuda(tmp_path):
    """The CUDA network takes its host network's lock: the same check as on the CPU, on a network small enough
    for the CUDA emulation."""
    cfg = tmp_path / "small.cfg"
    cfg.write_text(SMALL_CFG)
    net = pydarknet.load(str(cfg), device="cuda", seed=7)
    xs = _inputs(net, THREADS, 8)
    refs = [net.forward(x) for x in xs]

    def work(t):
        return [net.forward(xs[t]) for _ in range(5)]

    results = _run_threads(work)
    for t in range(THREADS):
        for out in results[t]:
            for a, b in zip(out, refs[t]):
                np.testing.assert_array_equal(a, b)
