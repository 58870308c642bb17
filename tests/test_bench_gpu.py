"""The GPU benchmark's PyTorch graph (benchmarks/bench_gpu.py) computes what pydarknet computes.

The benchmark only compares speeds fairly if its PyTorch graph, built from the same cfg and parameters, is the
same network; it checks the outputs on the GPU before timing, and this test checks the graph builder on the
CPU, where it runs wherever PyTorch is installed (skipped otherwise): the [yolo] outputs of the torch graph
against pydarknet's CPU engine in float32, normalized MSE <= 1e-7, for the networks the benchmark times and the
layer kinds they use (Darknet's maxpool padding, SPP, routes with groups, shortcuts, upsample, scale_x_y).
"""

import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu


@pytest.mark.parametrize(
    "name,size", [("yolov4-tiny", 160), ("yolov3-tiny", 160), ("yolov4", 128), ("yolov4-csp", 128)]
)
def test_torch_graph_matches_the_engine(name, size):
    net, _ = bench_gpu.load_network(name, size, "fp32", "cpu")
    model = bench_gpu.build_torch_model(net).eval().to(memory_format=torch.channels_last)
    x = np.random.default_rng(1).random((2, 3, size, size), dtype=np.float32)
    want = net.forward(x)
    with torch.inference_mode():
        got = [t.numpy() for t in model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert bench_gpu.nmse(g, w) <= 1e-7
