"""``pydarknet classify CFG WEIGHTS IMAGE...``: a Darknet classifier (e.g. cfg/darknet53.cfg) on images, printing
the top classes as Darknet's ``classifier predict`` does (``pydarknet classifier predict DATA CFG WEIGHTS IMAGE``
is translated into this command, with the .data's names and top)."""

from __future__ import annotations

import os

from pydarknet.cli.common import EXIT_OK, EXIT_SOME_FAILED, add_device_options, error, expand_sources, weights_mismatch
from pydarknet.errors import UsageError


def cmd_classify(args):
    import pydarknet
    from pydarknet.data.dataset import read_names
    from pydarknet.errors import DarknetError, ImageError
    from pydarknet.inference.classify import classifier_outputs, classify

    if args.top < 1:
        raise UsageError(f"--top {args.top}: must be at least 1")
    for opt, value in (("CFG", args.cfg), ("WEIGHTS", args.weights), ("--names", args.names)):
        if value is not None and not os.path.isfile(value):
            raise UsageError(f"{opt} {value}: no such file")
    try:
        net = pydarknet.load(
            args.cfg, args.weights, device=args.device, precision=args.precision, width=args.width, height=args.height
        )
    except pydarknet.WeightsError as e:
        raise UsageError(weights_mismatch(e, args.cfg)) from None
    except (DarknetError, OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    n = classifier_outputs(net)
    names = [str(i) for i in range(n)]
    if args.names is not None:
        try:
            names = read_names(args.names)
        except DarknetError as e:
            raise UsageError(str(e)) from None
        if len(names) < n:
            raise UsageError(f"{args.names} has {len(names)} names but {args.cfg} gives {n} class scores")
    items, _ = expand_sources(args.sources)
    if not items:
        raise UsageError("no images given")
    failed = 0
    for path, err in items:
        if err is not None:
            failed += 1
            error(err)
            continue
        try:
            result = classify(net, path, top=args.top, names=names)
        except (FileNotFoundError, ImageError, OSError) as e:
            failed += 1
            error(str(e))
            continue
        print("\n".join(result.darknet_lines()), flush=True)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def add_parsers(sub):
    c = sub.add_parser(
        "classify",
        help="a Darknet classifier (e.g. cfg/darknet53.cfg) on images: the top classes, as `classifier predict`",
        description="Run a classifier: each image is scaled so that its shorter side is the network width, cropped "
        "to the network size at the centre, and the TOP highest scores of the last layer are printed as Darknet "
        "prints them (`name: 0.912345`).",
    )
    c.add_argument("cfg", metavar="CFG", help="Darknet classifier .cfg")
    c.add_argument("weights", metavar="WEIGHTS", help="its .weights")
    c.add_argument("sources", nargs="+", metavar="IMAGE", help="images, folders of images, or .txt lists")
    c.add_argument("--names", help="class names, one per line (Darknet's .data names=/labels=); default: indices")
    c.add_argument("--top", type=int, default=5, help="how many classes to print (default 5, as `darknet classify`)")
    add_device_options(c)
    c.set_defaults(func=cmd_classify)
