"""``pydarknet map`` and ``pydarknet valid``: Darknet's ``detector map`` / ``detector valid`` on a ``.data`` file.

``.data`` keys read (Darknet's ``read_data_cfg`` syntax): ``classes``, ``valid`` (else ``train``), ``names``
(alias ``labels``), ``results`` (``valid``'s output folder), ``difficult`` (Darknet's VOC2007 list: line i names
an image path whose label file holds the difficult boxes of the valid list's image i) and, pydarknet's own,
``annotations`` (a COCO annotation file to take the ground truth from instead of YOLO label files; see
:mod:`pydarknet.annotations`). Every problem with them is a usage error naming the file (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from pydarknet.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_device_options,
    ensure_writable_folder,
    expand_sources,
    weights_mismatch,
)
from pydarknet.data import dataset as _data
from pydarknet.errors import UsageError
from pydarknet.utils.atomic import atomic_write_text


# ----- .data -----------------------------------------------------------------------------------------------
def read_data_file(path):
    """Darknet's ``read_data_cfg`` (:func:`pydarknet.data.read_data_file`); a problem is a usage error."""
    try:
        return _data.read_data_file(path)
    except _data.DataError as e:
        raise UsageError(str(e)) from None


def _resolve(value, data_path):
    """A path from a .data file: as given (relative to the current folder), else relative to the .data's folder
    (or a folder above it), as :func:`pydarknet.data.resolve_path` resolves it."""
    return _data.resolve_path(value, data_path)


def _looks_like_data(path):
    try:
        with open(path, "rb") as f:  # a sniff: the head of the file is enough (a .data file is a few lines)
            text = f.read(1 << 16).decode("utf-8", errors="replace")
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
    from pydarknet.data.coco import AnnotationError, load_coco_annotations
    from pydarknet.inference.detect import Detector

    data_path, cfg = _order(args)
    data = read_data_file(data_path)
    try:
        classes = _data.data_classes(data, data_path)
        names = _data.data_names(data, data_path, classes)
    except _data.DataError as e:
        raise UsageError(str(e)) from None
    valid = data.get("valid") or data.get("train")
    if not valid:
        raise UsageError(f"{data_path}: no 'valid' (or 'train') list")
    valid = _resolve(valid, data_path)
    if not valid.is_file():
        raise UsageError(f"{data_path}: valid list {valid}: no such file")
    if names is None:
        from pydarknet.inference.detect import default_names

        names = default_names(classes)
    annotations = None
    if data.get("annotations"):
        ann_path = _resolve(data["annotations"], data_path)
        if not ann_path.is_file():
            raise UsageError(f"{data_path}: annotations file {ann_path}: no such file")
        try:
            annotations = load_coco_annotations(ann_path, names)
        except AnnotationError as e:
            raise UsageError(str(e)) from None
    try:
        net = pydarknet.load(
            cfg, args.weights, device=args.device, precision=args.precision, width=args.width, height=args.height
        )
    except pydarknet.WeightsError as e:
        raise UsageError(weights_mismatch(e, cfg)) from None
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
    try:
        det = Detector(
            net, thresh=thresh, nms=nms, letterbox=args.letterbox, names=names, batch=args.batch, tta=args.tta
        )
    except (pydarknet.DarknetError, ValueError) as e:
        raise UsageError(str(e)) from None
    items, _ = expand_sources([str(valid)])
    bad = [err for _, err in items if err]
    if bad:
        raise UsageError(f"{len(bad)} image(s) of {valid} not found, e.g. {bad[0]}")
    if not items:
        raise UsageError(f"{valid}: lists no images")
    return dict(
        data=data, data_path=data_path, names=names, det=det, paths=[p for p, _ in items], annotations=annotations
    )


def _run(det, paths, quiet, on_result):
    from tqdm import tqdm

    bar = tqdm(
        total=len(paths), unit="img", file=sys.stderr, dynamic_ncols=True, leave=False, disable=True if quiet else None
    )
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


def _check_writable(option, path):
    ensure_writable_folder(option, os.path.dirname(os.path.abspath(path)))


# ----- ground truth ----------------------------------------------------------------------------------------
def _read_labels(label_path, num_classes, what="label file"):
    from pydarknet.data.labels import read_yolo_labels

    try:
        rows = read_yolo_labels(label_path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"{label_path}: cannot read the {what} ({e.strerror or e})") from None
    if len(rows):
        cls = rows[:, 0]
        k = int(np.argmax((cls < 0) | (cls >= num_classes)))
        if cls[k] < 0 or cls[k] >= num_classes:
            raise UsageError(
                f"{label_path}: class {int(cls[k])} out of range for {num_classes} classes (0..{num_classes - 1})"
            )
    return rows


def _yolo_ground_truth(setup):
    """Label rows per image (``labels/`` beside ``images/``), and difficult rows when the .data names a list."""
    from pydarknet.data.labels import label_path as label_path_for

    paths, names, data = setup["paths"], setup["names"], setup["data"]
    labels, missing = {}, []
    for p in paths:
        lp = label_path_for(p)
        if not os.path.isfile(lp):
            missing.append(f"{p} -> {lp}")
            continue
        labels[p] = _read_labels(lp, len(names))
    if missing:
        raise UsageError(
            f"no label file for {len(missing)} of {len(paths)} images (Darknet looks in labels/ "
            f"next to images/, or beside the image), e.g. {missing[0]}"
        )
    difficult = {}
    if data.get("difficult"):
        difficult = _difficult_labels(setup, paths)
    return labels, difficult


def _difficult_labels(setup, paths):
    """Darknet's ``difficult`` list: line i names an image path whose label file holds image i's difficult boxes."""
    from pydarknet.data.labels import label_path as label_path_for

    data_path = setup["data_path"]
    list_path = _resolve(setup["data"]["difficult"], data_path)
    try:
        lines = [ln.strip() for ln in list_path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError as e:
        raise UsageError(f"{data_path}: difficult list {list_path}: cannot read ({e.strerror or e})") from None
    entries = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(entries) != len(paths):
        raise UsageError(
            f"{list_path} lists {len(entries)} images but the valid list {len(paths)}; Darknet pairs them line by line"
        )
    out = {}
    for image_path, entry in zip(paths, entries):
        candidates = [label_path_for(entry)]
        if not os.path.isabs(entry):
            candidates.append(label_path_for(str(list_path.parent / entry)))
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            raise UsageError(f"{list_path}: no difficult label file for {entry} (looked for {candidates[0]})")
        out[image_path] = _read_labels(found, len(setup["names"]), "difficult label file")
    return out


def _annotation_entries(setup):
    ann, paths = setup["annotations"], setup["paths"]
    from pydarknet.data.coco import AnnotationError

    entries, missing = {}, []
    try:
        for p in paths:
            e = ann.image_for(p)
            if e is None:
                missing.append(p)
            else:
                entries[p] = e
    except AnnotationError as e:
        raise UsageError(str(e)) from None
    if missing:
        raise UsageError(
            f"{ann.path} has no image named like {len(missing)} of the {len(paths)} images of the "
            f"valid list (matched by file name), e.g. {os.path.basename(missing[0])}"
        )
    return entries


# ----- map -------------------------------------------------------------------------------------------------
def cmd_map(args):
    from pydarknet.data.coco import AnnotationError
    from pydarknet.evaluation.metrics import Evaluator, format_report, plot_pr_curves, yolo_to_xyxy
    from pydarknet.inference.results import coco_image_id

    if args.points != 0 and args.points < 2:
        raise UsageError(f"--points {args.points}: use 0, 11 or 101")
    if not 0 < args.iou_thresh < 1:
        raise UsageError(f"--iou-thresh {args.iou_thresh}: must be between 0 and 1")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            _check_writable(option, path)
    setup = _setup(args, 0.005, 0.45)
    names, det, paths, ann = setup["names"], setup["det"], setup["paths"], setup["annotations"]
    if ann is not None:
        if setup["data"].get("difficult"):
            raise UsageError(
                f"{setup['data_path']}: 'difficult' goes with YOLO label files; with 'annotations' the "
                "annotation file's crowd regions play that part"
            )
        entries = _annotation_entries(setup)
        ev = Evaluator(len(names), names, category_ids=ann.category_ids, coco_ground_truth=ann.dataset)
    else:
        labels, difficult = _yolo_ground_truth(setup)
        ev = Evaluator(len(names), names)
    used_ids = set()

    def on_result(res):
        w, h = res.image_size
        if ann is not None:
            entry = entries[res.path]
            try:
                gb, gc, hb, hc = ann.ground_truth(entry, w, h)
            except AnnotationError as e:
                raise UsageError(str(e)) from None
            ev.add(
                gb,
                gc,
                detections=res,
                width=w,
                height=h,
                image_id=entry["id"],
                difficult_boxes=hb,
                difficult_classes=hc,
            )
            return
        gb, gc = yolo_to_xyxy(labels[res.path], w, h)
        hb, hc = yolo_to_xyxy(difficult[res.path], w, h) if res.path in difficult else (None, None)
        iid = coco_image_id(res.path)
        if not isinstance(iid, int) or iid in used_ids:
            iid = len(ev.images) + 1 + 10**9
        used_ids.add(iid)
        ev.add(gb, gc, detections=res, width=w, height=h, image_id=iid, difficult_boxes=hb, difficult_classes=hc)

    t0 = time.perf_counter()
    failed = _run(det, paths, args.quiet, on_result)
    metrics = ev.compute(iou_thresh=args.iou_thresh, points=args.points, thresh=args.thresh, coco=not args.no_coco)
    metrics["settings"] = dict(
        conf_thresh=det.thresh,
        nms=det.nms,
        nms_kind=det.nms_kind,
        letterbox=det.letterbox,
        tta=det.tta,
        seconds=time.perf_counter() - t0,
    )
    metrics["ground_truth"] = (
        dict(source="coco annotations", path=ann.path, pairing=ann.pairing)
        if ann is not None
        else dict(source="yolo labels", difficult=bool(setup["data"].get("difficult")))
    )
    print(format_report(metrics))
    if args.json:
        out = {k: v for k, v in metrics.items() if k != "overall"}
        out["per_class"] = [{k: v for k, v in p.items() if not k.endswith("_curve")} for p in metrics["per_class"]]
        atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
        if not args.quiet:
            print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        try:
            plot_pr_curves(metrics, args.plot)
        except OSError as e:
            raise UsageError(f"--plot {args.plot}: cannot write ({e.strerror or e})") from None
        if not args.quiet:
            print(f"wrote {args.plot}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


# ----- valid -----------------------------------------------------------------------------------------------
def cmd_valid(args):
    from pydarknet.inference.results import write_coco_json

    if args.out:
        _check_writable("--out", args.out)
    setup = _setup(args, 0.001, 0.6)
    data, det, paths, ann = setup["data"], setup["det"], setup["paths"], setup["annotations"]
    entries = _annotation_entries(setup) if ann is not None else None
    results = []
    failed = _run(det, paths, args.quiet, results.append)
    out = args.out or os.path.join(data.get("results", "results"), "coco_results.json")
    if ann is None:
        write_coco_json(results, out)
    else:
        items = []
        for r in results:
            items.extend(r.to_coco(image_id=entries[r.path]["id"], category_ids=ann.category_ids))
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write_text(out, json.dumps(items) + "\n")
    if not args.quiet:
        n = sum(len(r) for r in results)
        print(f"{len(results)} images, {n} detections; wrote {out}", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


# ----- parsers ---------------------------------------------------------------------------------------------
def _common(p):
    p.add_argument("data", metavar="DATA", help="Darknet .data file (classes, valid, names)")
    p.add_argument("cfg", metavar="CFG", help="Darknet .cfg file (DATA and CFG may be given in either order)")
    p.add_argument("weights", metavar="WEIGHTS", help="Darknet .weights file")
    add_device_options(p)
    p.add_argument("--nms", type=float, help="NMS threshold (the cfg's nms_kind)")
    p.add_argument(
        "--letterbox",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="letterbox instead of stretching; default: the cfg's letter_box",
    )
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: also run every image at 0.83x (mirrored) and 0.67x the input "
        "size, boxes merged before NMS (Scaled-YOLOv4's --augment)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_parsers(sub):
    m = sub.add_parser(
        "map",
        help="Darknet mAP and COCO AP on the .data's valid list",
        description="Darknet's `detector map` (conf 0.005, NMS 0.45) plus pycocotools' COCO metrics "
        "on the same detections; ground truth from YOLO label files, or from a COCO "
        "annotation file named by 'annotations =' in the .data file.",
    )
    _common(m)
    m.add_argument("--conf", type=float, help="detection confidence threshold (default 0.005, as Darknet's map)")
    m.add_argument(
        "--thresh", type=float, default=0.25, help="threshold for precision/recall/F1/TP/FP/FN/avg IoU (default 0.25)"
    )
    m.add_argument("--iou-thresh", type=float, default=0.5, help="IoU threshold for Darknet's mAP (default 0.5)")
    m.add_argument("--points", type=int, default=0, help="0 (area under the envelope, default), 11 or 101")
    m.add_argument("--json", metavar="FILE", help="write the metrics as JSON")
    m.add_argument("--plot", metavar="FILE", help="draw the precision/recall curves (per class and overall) as a PNG")
    m.add_argument("--no-coco", action="store_true", help="skip the pycocotools metrics")
    m.set_defaults(func=cmd_map)

    v = sub.add_parser(
        "valid",
        help="Darknet's `detector valid`: COCO-format results json",
        description="Detect on the .data's valid list (conf 0.001, NMS 0.6) and write COCO results.",
    )
    _common(v)
    v.add_argument("--conf", type=float, help="confidence threshold (default 0.001)")
    v.add_argument("--out", metavar="FILE", help="results json (default <results>/coco_results.json)")
    v.set_defaults(func=cmd_valid)
