"""The GPU training benchmark (benchmarks/bench_gpu_train.py) on the CPU, where PyTorch is installed (else skipped).

Its comparison is only fair if the PyTorch module trains the same network: in eval mode it must compute what
pydarknet's forward computes (batch norm not folded: real BatchNorm2d layers holding the scales, biases and rolling
statistics), and in training mode its batch norm must move the rolling statistics as Darknet does (.99/.01, the
variance with Bessel's correction, Darknet's epsilon). Then (marked slow) the script itself runs a tiny
configuration end to end (PyTorch on the CPU, pydarknet's CPU engine) and its JSON must hold every phase, the "not
available" row for a precision pydarknet cannot train in, and the ratio.
"""

import json
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu
import bench_gpu_train
import torch_darknet


def test_training_module_in_eval_mode_matches_the_engine():
    # yolov4-tiny: its convolutions with and without batch norm, maxpool, route with groups, upsample, two heads.
    # (The graph for yolov4's kinds -- SPP, shortcuts, mish -- is the one tests/test_bench_gpu.py checks folded.)
    size = 96
    net, _ = bench_gpu.load_network("yolov4-tiny", size, "fp32", "cpu")
    model = torch_darknet.build_torch_model(net, fold_batchnorm=False).eval()
    assert len(model.norms) == sum(1 for l in net.desc.layers if l.options.get("batch_normalize"))
    x = np.random.default_rng(2).random((2, 3, size, size), dtype=np.float32)
    want = net.forward(x)
    with torch.inference_mode():
        got = [t.numpy() for t in model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))]
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert bench_gpu.nmse(g, w) <= 1e-7


def test_training_module_moves_rolling_statistics_as_darknet():
    """The first convolution sees the same input in both engines, so after one training forward its rolling mean
    and variance must be Darknet's (pydarknet's forward_train), which pins momentum, Bessel's correction and
    the initial values."""
    net, _ = bench_gpu.load_network("yolov4-tiny", 64, "fp32", "cpu")
    model = torch_darknet.build_torch_model(net, fold_batchnorm=False).train()
    x = np.random.default_rng(3).random((2, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        model(torch.from_numpy(x))
    net.forward_train(x)
    norm = model.norms["0"]
    assert norm.eps == net.bn_epsilon and norm.momentum == 0.01
    params = net.layers[0].params
    for ours, theirs in ((params["rolling_mean"], norm.running_mean), (params["rolling_variance"], norm.running_var)):
        assert bench_gpu.nmse(theirs.numpy(), np.asarray(ours)) <= 1e-10


@pytest.mark.slow  # about 17 s of CPU time (PyTorch's first CPU passes dominate); the two tests above are quick
def test_script_runs_both_engines_and_writes_every_phase(tmp_path, capsys):
    out = tmp_path / "train.json"
    argv = ["--device", "cpu", "--pydarknet-device", "cpu", "--models", "yolov4-tiny:32", "--batch", "4"]
    argv += ["--subdivisions", "2", "--iterations", "1", "--warmup", "0", "--precision", "fp32,fp16"]
    assert bench_gpu_train.main(argv + ["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not a yolo loss" in printed and "not GPU speed figures" in printed
    data = json.loads(out.read_text())
    assert data["meta"]["device"] == "cpu" and "NOT A GPU" in data["meta"]["where"]
    rows = {(r["engine"], r["precision"]): r for r in data["rows"]}
    assert set(rows) == {("pydarknet", "fp32"), ("pydarknet", "fp16"), ("torch", "fp32"), ("torch", "fp16")}
    ours = rows[("pydarknet", "fp32")]
    assert ours["status"] == "ok" and (ours["batch"], ours["subdivisions"], ours["iterations"]) == (4, 2, 1)
    assert ours["phases_ms"]["upload"] is None  # inside forward_train
    assert all(ours["phases_ms"][p] > 0 for p in ("forward", "loss", "backward", "optimizer"))
    assert sum(ours["phases_ms"][p] for p in ("forward", "loss", "backward", "optimizer")) <= ours["ms_step"] * 1.01
    assert ours["images_per_s"] == pytest.approx(4 / ours["ms_step"] * 1e3)
    refused = rows[("pydarknet", "fp16")]
    assert refused["status"] == "not available" and "fp16" in refused["reason"]
    for precision in ("fp32", "fp16"):
        theirs = rows[("torch", precision)]
        assert theirs["status"] == "ok" and all(theirs["phases_ms"][p] > 0 for p in bench_gpu_train.PHASES)
        assert theirs["ratio"] == pytest.approx(ours["images_per_s"] / theirs["images_per_s"])
        assert theirs["ratio_against"] == "pydarknet fp32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_script_refuses_cuda_without_a_gpu(capsys):
    assert bench_gpu_train.main(["--device", "cuda", "--models", "yolov4-tiny:32"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
