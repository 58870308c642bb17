"""``pydarknet map`` and ``pydarknet valid``: Darknet's ``detector map`` / ``detector valid`` on a ``.data`` file."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

from .cli import EXIT_OK, EXIT_SOME_FAILED, UsageError, _err, expand_sources


# ----- .data -----------------------------------------------------------------------------------------------
def read_data_file(path):
    """Darknet's ``read_data_cfg``: ``key = value`` lines (``#``/``;`` comments); returns a dict of strings."""
    out = {}
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror or e})") from None
    for k, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            raise UsageError(f"{path}:{k}: expected 'key = value', got {line!r}")
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip()
    if "labels" in out and "names" not in out:
        out["names"] = out["labels"]
    return out


def _resolve(value, data_path):
    """A path from a .data file: as given (relative to the current folder), else relative to the .data's folder."""
    p = pathlib.Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    q = pathlib.Path(data_path).parent / p
    return q if q.exists() else p


def _looks_like_data(path):
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "[net]" not in text and "[network]" not in text and "classes" in text


def _order(args):
    """Accept ``DATA CFG WEIGHTS`` and ``CFG DATA WEIGHTS``."""
    a, b = args.data, args.cfg
    for opt, v in (("DATA", a), ("CFG", b), ("WEIGHTS", args.weights)):
        if not os.path.isfile(v):
            raise UsageError(f"{v}: no such file")
    if not _looks_like_data(a) and _looks_like_data(b):
        a, b = b, a
    if not _looks_like_data(a):
        raise UsageError(f"{a}: not a Darknet .data file (expected classes=, valid=, names=)")
    return a, b


def _setup(args, default_thresh, default_nms):
    import pydarknet

    from . import models
    from .detect import Detector

    data_path, cfg = _order(args)
    data = read_data_file(data_path)
    if "classes" not in data:
        raise UsageError(f"{data_path}: no 'classes' key")
    try:
        classes = int(data["classes"])
    except ValueError:
        raise UsageError(f"{data_path}: classes={data['classes']!r} is not a number") from None
    valid = data.get("valid") or data.get("train")
    if not valid:
        raise UsageError(f"{data_path}: no 'valid' (or 'train') list")
    valid = _resolve(valid, data_path)
    if not valid.is_file():
        raise UsageError(f"{data_path}: valid list {valid}: no such file")
    if "names" in data:
        names_path = _resolve(data["names"], data_path)
        if not names_path.is_file():
            raise UsageError(f"{data_path}: names file {names_path}: no such file")
        names = models.read_names(names_path)
        if len(names) != classes:
            raise UsageError(f"{names_path} has {len(names)} names but {data_path} says classes={classes}")
    else:
        from .detect import default_names

        names = default_names(classes)
    try:
        net = pydarknet.load(cfg, args.weights, device=args.device, precision=args.precision,
                             width=args.width, height=args.height)
    except pydarknet.WeightsError as e:
        raise UsageError(f"{e}\nThe weights do not fit {cfg}") from None
    except (pydarknet.DarknetError, OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    if not net.yolo_layers:
        raise UsageError(f"{cfg}: this network has no [yolo] layer")
    net_classes = net.desc.layers[net.yolo_layers[-1]].options["classes"]
    if net_classes != classes:
        raise UsageError(f"{cfg} has classes={net_classes} but {data_path} says classes={classes}")
    net.names = names
    thresh = default_thresh if args.conf is None else args.conf
    nms = default_nms if args.nms is None else args.nms
    det = Detector(net, thresh=thresh, nms=nms, letterbox=args.letterbox, names=names, batch=args.batch)
    items, _ = expand_sources([str(valid)])
    bad = [err for _, err in items if err]
    if bad:
        raise UsageError(f"{len(bad)} image(s) of {valid} not found, e.g. {bad[0]}")
    if not items:
        raise UsageError(f"{valid}: lists no images")
    return data, names, det, [p for p, _ in items]


def _run(det, paths, quiet, on_result):
    from tqdm import tqdm

    bar = tqdm(total=len(paths), unit="img", file=sys.stderr, dynamic_ncols=True, leave=False,
               disable=True if quiet else None)
    failed = 0
    pending = []

    def flush():
        for res in det.infer(pending):
            res.image = None
            on_result(res)
        bar.update(len(pending))
        pending.clear()

    try:
        for p in paths:
            try:
                pending.append(det.prepare(p))
            except (FileNotFoundError, ValueError, OSError) as e:
                failed += 1
                bar.write(f"error: {e}", file=sys.stderr)
                bar.update(1)
                continue
            if len(pending) >= det.batch:
                flush()
        flush()
    finally:
        bar.close()
    return failed


# ----- map -------------------------------------------------------------------------------------------------
def cmd_map(args):
    from .evaluate import Evaluator, format_report, label_path_for, read_yolo_labels, yolo_to_xyxy
    from .results import coco_image_id

    if args.points != 0 and args.points < 2:
        raise UsageError(f"--points {args.points}: use 0, 11 or 101")
    if not 0 < args.iou_thresh < 1:
        raise UsageError(f"--iou-thresh {args.iou_thresh}: must be between 0 and 1")
    data, names, det, paths = _setup(args, 0.005, 0.45)
    labels = {}
    missing = []
    for p in paths:
        lp = label_path_for(p)
        if not os.path.isfile(lp):
            missing.append(f"{p} -> {lp}")
            continue
        try:
            labels[p] = read_yolo_labels(lp)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if len(labels[p]) and (labels[p][:, 0].max() >= len(names) or labels[p][:, 0].min() < 0):
            raise UsageError(f"{lp}: class {int(labels[p][:, 0].max())} out of range for {len(names)} classes")
    if missing:
        raise UsageError(f"no label file for {len(missing)} of {len(paths)} images (Darknet looks in labels/ "
                         f"next to images/, or beside the image), e.g. {missing[0]}")
    ev = Evaluator(len(names), names)
    used_ids = set()

    def on_result(res):
        w, h = res.image_size
        gb, gc = yolo_to_xyxy(labels[res.path], w, h)
        iid = coco_image_id(res.path)
        if not isinstance(iid, int) or iid in used_ids:
            iid = len(ev.images) + 1 + 10 ** 9
        used_ids.add(iid)
        ev.add(gb, gc, detections=res, width=w, height=h, image_id=iid)

    t0 = time.perf_counter()
    failed = _run(det, paths, args.quiet, on_result)
    metrics = ev.compute(iou_thresh=args.iou_thresh, points=args.points, thresh=args.thresh,
                         coco=not args.no_coco)
    metrics["settings"] = dict(conf_thresh=det.thresh, nms=det.nms, nms_kind=det.nms_kind,
                               letterbox=det.letterbox, seconds=time.perf_counter() - t0)
    print(format_report(metrics))
    if args.json:
        out = dict(metrics)
        out["per_class"] = [{k: v for k, v in p.items() if not k.endswith("_curve")} for p in metrics["per_class"]]
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
        if not args.quiet:
            print(f"wrote {args.json}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


# ----- valid -----------------------------------------------------------------------------------------------
def cmd_valid(args):
    from .results import write_coco_json

    data, names, det, paths = _setup(args, 0.001, 0.6)
    results = []
    failed = _run(det, paths, args.quiet, results.append)
    out = args.out or os.path.join(data.get("results", "results"), "coco_results.json")
    write_coco_json(results, out)
    if not args.quiet:
        n = sum(len(r) for r in results)
        print(f"{len(results)} images, {n} detections; wrote {out}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


# ----- parsers ---------------------------------------------------------------------------------------------
def _common(p):
    p.add_argument("data", metavar="DATA", help="Darknet .data file (classes, valid, names)")
    p.add_argument("cfg", metavar="CFG", help="Darknet .cfg file (DATA and CFG may be given in either order)")
    p.add_argument("weights", metavar="WEIGHTS", help="Darknet .weights file")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="activations on the GPU: fp32 (default), or fp16/bf16 on the tensor cores")
    p.add_argument("--width", type=int, help="override the network input width")
    p.add_argument("--height", type=int, help="override the network input height")
    p.add_argument("--nms", type=float, help="NMS threshold (the cfg's nms_kind)")
    p.add_argument("--letterbox", action=argparse.BooleanOptionalAction, default=None,
                   help="letterbox instead of stretching; default: the cfg's letter_box")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_parsers(sub):
    m = sub.add_parser("map", help="Darknet mAP and COCO AP on the .data's valid list",
                       description="Darknet's `detector map` (conf 0.005, NMS 0.45) plus pycocotools' COCO metrics "
                                   "on the same detections; ground truth from YOLO label files.")
    _common(m)
    m.add_argument("--conf", type=float, help="detection confidence threshold (default 0.005, as Darknet's map)")
    m.add_argument("--thresh", type=float, default=0.25,
                   help="threshold for precision/recall/F1/TP/FP/FN/avg IoU (default 0.25)")
    m.add_argument("--iou-thresh", type=float, default=0.5, help="IoU threshold for Darknet's mAP (default 0.5)")
    m.add_argument("--points", type=int, default=0, help="0 (area under the envelope, default), 11 or 101")
    m.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    m.add_argument("--no-coco", action="store_true", help="skip the pycocotools metrics")
    m.set_defaults(func=cmd_map)

    v = sub.add_parser("valid", help="Darknet's `detector valid`: COCO-format results json",
                       description="Detect on the .data's valid list (conf 0.001, NMS 0.6) and write COCO results.")
    _common(v)
    v.add_argument("--conf", type=float, help="confidence threshold (default 0.001)")
    v.add_argument("--out", metavar="FILE", help="results json (default <results>/coco_results.json)")
    v.set_defaults(func=cmd_valid)
