"""``pydarknet export CFG WEIGHTS --format onnx``: a network as an ONNX file (pydarknet.export), checked with
onnx.checker at export, and optionally run once in ONNX Runtime against the engine (``--verify``)."""

from __future__ import annotations

import os
import pathlib
import sys
import time
import warnings

from pydarknet.cli.common import EXIT_OK, error
from pydarknet.errors import UsageError


def add_parsers(sub):
    from pydarknet.export.onnx import DEFAULT_OPSET, OPSET_MAX, OPSET_MIN, OUTPUTS

    e = sub.add_parser(
        "export",
        help="write a network as an ONNX file",
        description="Export a Darknet cfg + weights to ONNX (built with the onnx package, checked with "
        "onnx.checker and shape inference). The input is 'images' (N, 3, H, W), RGB in [0, 1], prepared as "
        "`detect` prepares images (stretched, or letterboxed when the cfg says letter_box=1).",
    )
    e.add_argument("cfg", metavar="CFG", help="Darknet .cfg file")
    e.add_argument("weights", metavar="WEIGHTS", nargs="?", help="Darknet .weights file (omit for random weights)")
    e.add_argument("--format", default="onnx", choices=["onnx"], help="output format (onnx)")
    e.add_argument("--output", "-o", metavar="FILE", help="output file (default: the cfg's name with .onnx)")
    e.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {OPSET_MIN} to {OPSET_MAX} (default {DEFAULT_OPSET})",
    )
    e.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    e.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch dimension")
    e.add_argument("--dynamic-size", action="store_true", help="symbolic input height and width")
    e.add_argument("--width", type=int, help="network input width (default: the cfg's)")
    e.add_argument("--height", type=int, help="network input height (default: the cfg's)")
    e.add_argument("--fp16", action="store_true", help="store the weights as float16 (half the size)")
    e.add_argument(
        "--outputs",
        default="raw",
        choices=list(OUTPUTS),
        help="raw: the [yolo] heads (as net.forward); decoded: boxes (N,K,4 x1y1x2y2 input pixels) and scores "
        "(N,K,classes); nms: final detections (M,7: batch,x1,y1,x2,y2,score,class) with NonMaxSuppression in the "
        "graph (default raw)",
    )
    e.add_argument("--thresh", type=float, default=0.25, help="score threshold of --outputs nms (default 0.25)")
    e.add_argument("--nms", type=float, default=0.45, help="IoU threshold of --outputs nms (default 0.45)")
    e.add_argument("--names", help="class names file, stored in the model's metadata")
    e.add_argument(
        "--verify", action="store_true", help="run the file once in ONNX Runtime and compare with the engine"
    )
    e.add_argument("--quiet", "-q", action="store_true")
    e.set_defaults(func=cmd_export)


def cmd_export(args):
    import numpy as np

    import pydarknet
    from pydarknet.export.onnx import to_onnx
    from pydarknet.hub import models

    for opt, value in (("CFG", args.cfg), ("WEIGHTS", args.weights), ("--names", args.names)):
        if value is not None and not os.path.isfile(value):
            raise UsageError(f"{opt} {value}: no such file")
    if args.batch < 1:
        raise UsageError(f"--batch {args.batch}: must be at least 1")
    out = pathlib.Path(args.output or pathlib.Path(args.cfg).with_suffix(".onnx").name)
    try:
        net = pydarknet.load(args.cfg, args.weights, width=args.width, height=args.height, seed=0)
        names = models.read_names(args.names) if args.names else None
    except (pydarknet.DarknetError, OSError) as e:
        raise UsageError(str(e)) from None
    if names is None and net.yolo_layers:
        from pydarknet.inference.detect import default_names

        names = default_names(net.desc.layers[net.yolo_layers[-1]].options["classes"])
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        to_onnx(
            net,
            out,
            opset=args.opset,
            batch=None if args.dynamic_batch else args.batch,
            dynamic_size=args.dynamic_size,
            fp16=args.fp16,
            outputs=args.outputs,
            thresh=args.thresh,
            nms=args.nms,
            names=names,
        )
    for w in caught:
        if not args.quiet:
            print(f"warning: {w.message}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    c, h, w = net.input_shape
    if not args.quiet:
        size = out.stat().st_size
        print(
            f"{out}: ONNX opset {args.opset}, input images ({'N' if args.dynamic_batch else args.batch}, {c}, "
            f"{'H' if args.dynamic_size else h}, {'W' if args.dynamic_size else w}), outputs {args.outputs}"
            f"{', fp16 weights' if args.fp16 else ''}; {size / 1e6:.1f} MB, checked with onnx.checker "
            f"({seconds:.1f} s)"
        )
    if args.verify:
        if args.outputs != "raw":
            from pydarknet.export.onnx import build_model

            _, data = build_model(net, fp16=args.fp16)
        else:
            data = str(out)
        diff = _verify(net, data, np, 1 if args.dynamic_batch else args.batch)
        if not args.quiet:
            print(f"verified in ONNX Runtime: max abs difference to net.forward {diff:.2e}")
    return EXIT_OK


def _verify(net, model, np, batch):
    try:
        import onnxruntime as ort
    except ImportError:
        error("--verify needs onnxruntime: pip install 'pydarknet[export]'")
        raise UsageError("onnxruntime is not installed") from None
    x = np.random.default_rng(0).random((batch, *net.input_shape), dtype=np.float32)
    got = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"images": x})
    return max(float(np.abs(g - w).max()) for g, w in zip(got, net.forward(x)))
