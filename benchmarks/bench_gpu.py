"""GPU inference speed: pydarknet's CUDA kernels against PyTorch + cuDNN running the same network.

The PyTorch graph is built from the same cfg and the same parameters (benchmarks/torch_darknet.py, shared with
bench_gpu_train.py: convolutions with batch norm folded exactly as pydarknet folds it, Darknet's activations,
maxpool with Darknet's padding, route, shortcut, upsample and the yolo layers' transform), in channels_last
memory format, with cuDNN autotuning on.
In fp32, TF32 is switched off in PyTorch so both sides compute in float32; in fp16 both store activations and
convolution operands in binary16 and accumulate in float32. Before any timing, the outputs of the two are
compared (normalized MSE, bounds below) so that the comparison is fair; a mismatch is reported and makes the
exit status 1.

Timing: CUDA events around the network only (the input is already on the GPU), after warm-up runs, repeated at
least --min-runs times and for at least --seconds, median reported. pydarknet replays a CUDA graph of its
layers (also without split-K, to measure what it gives); PyTorch is timed eagerly and replaying a CUDA graph
(torch.cuda.CUDAGraph), and the faster of the two is the reference. Throughput = batch / median time. Then the slowest
pydarknet layers (CUDA events per layer)
with their achieved TFLOP/s and share of the GPU's dense FP16 tensor-core peak.

    python benchmarks/bench_gpu.py                     # yolov4 608 and yolov4-tiny 416, batch 1, 8, 64, fp16/fp32
    python benchmarks/bench_gpu.py --models yolov4-tiny:416 --batches 1 --precisions fp16 --seconds 0.5
    OUT=logs python benchmarks/bench_gpu.py            # also writes logs/bench_gpu.md

Weights: the real yolov4-tiny weights when they are in pydarknet's cache, else random weights with batch-norm
statistics calibrated on a 256 x 256 input (tests/netcalib.py), so that activations stay of order one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from torch_darknet import build_torch_model, folded_conv  # noqa: E402  (shared with bench_gpu_train.py)

__all__ = ["build_torch_model", "folded_conv", "load_network", "nmse"]

DEFAULT_MODELS = "yolov4:608,yolov4-tiny:416"
# Normalized MSE between the two engines' outputs that still counts as "the same network".
AGREEMENT = {"fp32": 1e-5, "fp16": 1e-2}
# Dense FP16 tensor-core peak (TFLOP/s, FP32 accumulation) by GPU name: H100/H200 SXM 989, H100 PCIe 756.
PEAKS = [("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0)]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models", default=DEFAULT_MODELS, help=f"cfg names from cfg/ with :SIZE (default {DEFAULT_MODELS})"
    )
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--precisions", default="fp16,fp32")
    ap.add_argument("--seconds", type=float, default=1.0, help="time each configuration for at least this long")
    ap.add_argument("--min-runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--layers", type=int, default=12, help="slowest pydarknet layers to list per model")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense FP16 peak (default: from the GPU name)")
    ap.add_argument("--no-torch-graph", action="store_true", help="time PyTorch eagerly only")
    return ap.parse_args(argv)


# ----- setup ---------------------------------------------------------------------------------------------------

_CALIBRATED = {}  # cfg name -> calibrated random parameters (they do not depend on the input size)


def load_network(name, size, precision, device, *, disk_cache=False):
    """The cfg at size x size with the real weights when cached, else calibrated random parameters (kept on disk
    in $TMPDIR with disk_cache=True, as the benchmark scripts ask; tests leave it off)."""
    import pydarknet
    from pydarknet.hub import models

    sys.path.insert(0, str(ROOT / "tests"))
    from support.netcalib import calibrate, randomize, with_input_size

    text = with_input_size((ROOT / "cfg" / f"{name}.cfg").read_text(), size, size)
    path = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-gpu-{name}-{size}.cfg"
    path.write_text(text)
    net = pydarknet.load(str(path), device=device, precision=precision)
    if name in models.MODELS and models.is_cached(name):
        net.load_weights(models.weights_path(name))
        return net, "real"
    if name not in _CALIBRATED:
        # The calibration (a numpy forward at 256, tens of seconds for yolov4) is kept on disk for the next
        # process (bench_gpu_train.py after this script), keyed by the cfg and the calibration code.
        key = hashlib.sha256((ROOT / "cfg" / f"{name}.cfg").read_bytes())
        key.update((ROOT / "tests" / "support" / "netcalib.py").read_bytes())
        saved = path.parent / f"bench-gpu-calibrated-{name}-{key.hexdigest()[:16]}.npy"
        if disk_cache and saved.is_file() and saved.stat().st_size == 128 + 4 * net.params.size:
            _CALIBRATED[name] = np.load(saved)
        else:
            small = with_input_size(text, 256, 256)
            rng = np.random.default_rng(0)
            randomize(net, rng)
            calibrate(net, small, rng.random((1, 3, 256, 256), dtype=np.float32), rng)
            _CALIBRATED[name] = np.array(net.params)
            if disk_cache:
                tmp = saved.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, _CALIBRATED[name])
                os.replace(tmp, saved)
    net.params[...] = _CALIBRATED[name]
    return net, "random, calibrated"


def timed(run, sync, seconds, min_runs, warmup):
    """Milliseconds per call of run(), each timed with CUDA events."""
    import torch

    for _ in range(warmup):
        run()
    sync()
    times = []
    start_all = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start_all < seconds:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        run()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return times


def nmse(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.sum((got - want) ** 2) / max(np.sum(want**2), 1e-30))


def main(argv=None):
    args = parse_args(argv)
    import torch

    from pydarknet import _core

    if not torch.cuda.is_available() or _core.cuda_device_count() == 0:
        print("bench_gpu: needs a CUDA GPU for both PyTorch and pydarknet", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    gpu_name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or next((p for key, p in PEAKS if key in gpu_name), None)
    header = [
        f"# pydarknet vs PyTorch {torch.__version__} + cuDNN {torch.backends.cudnn.version()} on {gpu_name}",
        "",
        f"driver/runtime: {torch.version.cuda}; medians of >= {args.min_runs} runs and >= {args.seconds} s "
        f"after {args.warmup} warm-up runs, CUDA events; input already on the GPU.",
        "",
    ]
    rows = [
        "| model | size | batch | precision | pydarknet ms | pydarknet img/s | same, split-K off | torch eager ms | "
        "torch graph ms | speed-up vs best torch | outputs agree (nmse) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    layer_tables = []
    failed = False
    for spec in args.models.split(","):
        name, _, size = spec.partition(":")
        size = int(size or 416)
        for precision in args.precisions.split(","):
            net, weights = load_network(name, size, precision, "cuda", disk_cache=True)
            net.cuda_graph = True
            model = build_torch_model(net).cuda().eval().to(memory_format=torch.channels_last)
            dtype = torch.float16 if precision == "fp16" else torch.float32
            model = model.to(dtype)
            for batch in [int(b) for b in args.batches.split(",")]:
                rng = np.random.default_rng(batch)
                x = rng.random((batch, 3, size, size), dtype=np.float32)
                ours = net.forward(x)
                xt = torch.from_numpy(x).cuda().to(dtype).contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    theirs = [t.float().cpu().numpy() for t in model(xt)]
                agree = max(nmse(o, t) for o, t in zip(ours, theirs))
                ok = agree <= AGREEMENT.get(precision, 1e-2)
                failed |= not ok
                ours_ms = statistics.median(_ours_times(net, args))
                no_split = "-"
                if batch == 1:  # split-K only engages where a layer's blocks do not fill the GPU
                    net._cuda.split_k = 1
                    no_split = f"{statistics.median(_ours_times(net, args)):.3f}"
                    net._cuda.split_k = 0
                with torch.inference_mode():
                    eager = statistics.median(
                        timed(lambda: model(xt), torch.cuda.synchronize, args.seconds, args.min_runs, args.warmup)
                    )
                    graph_ms = None
                    if not args.no_torch_graph:
                        graph_ms = _torch_graph_ms(model, xt, args)
                best = min(t for t in (eager, graph_ms) if t is not None)
                rows.append(
                    f"| {name} | {size} | {batch} | {precision} | {ours_ms:.3f} | {batch / ours_ms * 1e3:,.0f} | "
                    f"{no_split} | {eager:.3f} | {'-' if graph_ms is None else f'{graph_ms:.3f}'} | "
                    f"{best / ours_ms:.2f}x | "
                    f"{'yes' if ok else 'NO'} ({agree:.1e}) |"
                )
                print(rows[-1], flush=True)
                if batch == max(int(b) for b in args.batches.split(",")):
                    layer_tables.append(_slowest_layers(net, x, name, size, batch, precision, peak, args.layers))
            del model
            torch.cuda.empty_cache()
        print(f"{name}: weights {weights}", flush=True)
    text = "\n".join(header + rows + [""] + layer_tables)
    if failed:
        text += (
            "\nThe outputs of the two engines disagree beyond the bound for some rows (see the last column): "
            "those timings do not compare the same computation.\n"
        )
    print("\n" + text)
    out = os.environ.get("OUT")
    if out:
        pathlib.Path(out).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(out) / "bench_gpu.md").write_text(text)
    return 1 if failed else 0


def _ours_times(net, args):
    cuda = net._cuda
    times = []
    start = time.perf_counter()
    times += cuda.time_layers(args.warmup, args.min_runs)
    while time.perf_counter() - start < args.seconds:
        times += cuda.time_layers(0, args.min_runs)
    return times


def _torch_graph_ms(model, xt, args):
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            model(xt)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(xt)
    return statistics.median(timed(graph.replay, torch.cuda.synchronize, args.seconds, args.min_runs, args.warmup))


def _slowest_layers(net, x, name, size, batch, precision, peak, count):
    cuda = net._cuda
    cuda.profile = True
    net.forward(x)
    cuda.profile = False
    seconds = list(cuda.layer_seconds)
    total = sum(seconds)
    order = sorted(range(len(seconds)), key=lambda i: -seconds[i])[:count]
    lines = [
        f"## {name} {size}, batch {batch}, {precision}: slowest layers (sum of layer times {total * 1e3:.3f} ms)",
        "",
        "| layer | type | input -> output | ms | share | TFLOP/s | % of FP16 peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for i in order:
        layer = net.layers[i]
        flops = 1e9 * layer.bflops * batch
        tflops = flops / seconds[i] / 1e12 if seconds[i] > 0 else 0.0
        share = f"{100 * tflops / peak:.0f}%" if peak and layer.type == "convolutional" else "-"
        desc = layer.type
        if layer.type == "convolutional":
            o = layer.options
            desc = f"conv {o['size']}x{o['size']}/{o['stride_x']} {o['filters']}"
        lines.append(
            f"| {i} | {desc} | {layer.in_shape} -> {layer.out_shape} | {seconds[i] * 1e3:.3f} | "
            f"{100 * seconds[i] / total:.1f}% | {tflops:.1f} | {share} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
