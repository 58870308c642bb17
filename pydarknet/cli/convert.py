"""``pydarknet convert`` (ScaledYOLOv4 PyTorch checkpoint -> Darknet .weights) and ``pydarknet subnet`` (a trained
FPN/PAN network without its top detection levels, Scaled-YOLOv4 section 5.5)."""

from __future__ import annotations

import sys

from pydarknet.cli.common import EXIT_OK, EXIT_USAGE, error
from pydarknet.errors import DarknetError


def add_parsers(sub):
    c = sub.add_parser(
        "convert",
        help="convert a ScaledYOLOv4 PyTorch checkpoint (.pt) into Darknet .weights",
        description="Convert a ScaledYOLOv4 checkpoint (yolov4-p5.pt, yolov4-p6.pt, yolov4-p7.pt, or the csp "
        "branch's) into a Darknet .weights file for CFG. The checkpoint is read without PyTorch and without running "
        "code from it; the cfg must be the checkpoint's network (cfg/yolov4-p7.cfg, cfg/yolov4-p5-pytorch.cfg, "
        "cfg/yolov4-p6-pytorch.cfg), else the first tensor that does not fit is named.",
    )
    c.add_argument("checkpoint", metavar="CHECKPOINT.pt")
    c.add_argument("out", metavar="OUT.weights")
    c.add_argument("--cfg", required=True, help="the Darknet cfg of the checkpoint's network")
    c.add_argument(
        "--bn-eps",
        type=float,
        help="PyTorch batch-norm eps to fold (default: each BatchNorm2d's own, read from the checkpoint)",
    )
    c.add_argument("--quiet", "-q", action="store_true")
    c.set_defaults(func=cmd_convert)

    s = sub.add_parser(
        "subnet",
        help="remove the top detection levels (and what only they use) from an FPN/PAN cfg",
        description="Write CFG without the detection levels given to --drop (P7, P6, ...: the [yolo] layer with "
        "stride 2^k is Pk) and every layer only they need, as Scaled-YOLOv4's YOLOv4-P7\\P7 and P7\\P7\\P6. "
        "The remaining layers keep their weights: with --weights the full network's file is re-saved for the "
        "sub-network.",
    )
    s.add_argument("cfg", metavar="CFG")
    s.add_argument("--drop", required=True, help="comma-separated levels to remove, e.g. P7 or P7,P6")
    s.add_argument("-o", "--out", required=True, metavar="OUT.cfg")
    s.add_argument("--weights", help="the full network's .weights, to write the sub-network's")
    s.add_argument("--weights-out", metavar="OUT.weights", help="where (default: OUT.cfg with .weights)")
    s.add_argument("--quiet", "-q", action="store_true")
    s.set_defaults(func=cmd_subnet)


def cmd_convert(args) -> int:
    from pydarknet.hub.convert import convert

    try:
        report = convert(args.checkpoint, args.cfg, args.out, bn_eps=args.bn_eps)
    except DarknetError as e:
        error(str(e))
        return EXIT_USAGE
    if not args.quiet:
        print(report)
    return EXIT_OK


def cmd_subnet(args) -> int:
    from pathlib import Path

    from pydarknet.core import graph
    from pydarknet.core.subnet import extract_weights, subnet

    try:
        sub = subnet(args.cfg, args.drop.split(","))
        full = graph.load_network_desc(args.cfg)
        sub.save(args.out)
        part = graph.load_network_desc(args.out)
        written = None
        if args.weights:
            written = extract_weights(
                args.cfg, args.weights, sub, args.out, args.weights_out or Path(args.out).with_suffix(".weights")
            )
    except DarknetError as e:
        error(str(e))
        return EXIT_USAGE
    if not args.quiet:
        out = sys.stdout
        print(
            f"removed {len(sub.removed)} of {len(full.layers)} layers; detection levels dropped: "
            + ", ".join(f"{name} ([yolo] {i})" for i, name in sorted(sub.heads_removed.items())),
            file=out,
        )
        for i in sub.removed:
            layer = full.layers[i]
            o = layer.options
            what = layer.type
            if layer.type == "convolutional":
                what = f"conv {o['filters']} {o['size']}x{o['size']}/{o['stride_x']}"
            elif layer.type in ("route", "shortcut"):
                what = f"{layer.type} {','.join(map(str, layer.inputs))}"
            c, h, w = layer.out_shape
            print(f"  {i:4d} {what:<24s} -> {w} x {h} x {c}", file=out)

        def learnable(d):
            return sum(
                t.size for l in d.layers for t in l.tensors if t.name not in ("rolling_mean", "rolling_variance")
            )

        print(
            f"parameters {learnable(full):,} -> {learnable(part):,}; BFLOPs at {full.input_shape[2]}x"
            f"{full.input_shape[1]} {sum(l.bflops for l in full.layers):.3f} -> "
            f"{sum(l.bflops for l in part.layers):.3f}",
            file=out,
        )
        print(f"wrote {args.out}" + (f" and {written}" if written else ""), file=out)
    return EXIT_OK
