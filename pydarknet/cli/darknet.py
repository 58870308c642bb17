"""Darknet's own command lines, translated into pydarknet's commands.

``pydarknet detector test|train|map|valid|calc_anchors DATA CFG [WEIGHTS] ...`` and ``pydarknet classifier predict
DATA CFG WEIGHTS [IMAGE]`` take Darknet's positional order and single-dash flags (``-thresh 0.3``, ``-ext_output``,
``-dont_show``, ``-out``, ``-map``, ``-gpus``...; darknet-reference.md 6.1). Each is turned into the pydarknet
command that does the same; that command is printed on stderr (so that users learn it) and run. The same flags
are also accepted on pydarknet's own commands (``pydarknet detect CFG WEIGHTS IMAGE -thresh 0.3 -ext_output``).
A flag with no equivalent is either dropped with a note saying why (``-dont_show``: pydarknet never opens a
window) or refused with what to type instead.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from typing import Dict, List, Tuple, Union

from pydarknet.errors import UsageError

# A flag's translation: a list of pydarknet tokens ("{}" stands for the flag's value), or a Note: dropped, with
# the note printed. (takes a value, translation)
Translation = Union[List[str], "Note"]


class Note(str):
    """A Darknet flag pydarknet has no use for: dropped, with this said on stderr."""


_DEVICE = {
    "-i": (True, ["--device", "cuda:{}"]),  # Darknet's global GPU index
    "-nogpu": (False, ["--device", "cpu"]),
}
_NO_WINDOW = (False, [])  # -dont_show: pydarknet never opens a window, so there is nothing to turn off

FLAGS: Dict[str, Dict[str, Tuple[bool, Translation]]] = {
    "detect": {
        "-thresh": (True, ["--thresh", "{}"]),
        "-ext_output": (False, ["--ext-output"]),
        "-out": (True, ["--out", "{}"]),
        "-save_labels": (False, ["--save-txt"]),
        "-letter_box": (False, ["--letterbox"]),
        "-dont_show": _NO_WINDOW,
        "-hier": (True, Note("-hier is for hierarchical (YOLO9000) models, which pydarknet does not run; ignored")),
        **_DEVICE,
    },
    "map": {
        "-thresh": (True, ["--thresh", "{}"]),
        "-iou_thresh": (True, ["--iou-thresh", "{}"]),
        "-points": (True, ["--points", "{}"]),
        "-letter_box": (False, ["--letterbox"]),
        "-dont_show": _NO_WINDOW,
        **_DEVICE,
    },
    "valid": {
        "-letter_box": (False, ["--letterbox"]),
        "-dont_show": _NO_WINDOW,
        **_DEVICE,
    },
    "train": {
        "-map": (False, ["--map"]),
        "-clear": (False, ["--clear"]),
        "-dont_show": _NO_WINDOW,
        "-gpus": (True, ["--gpus", "{}"]),  # a list of GPU indices, one rank each (pydarknet.train.launch)
        "-i": (True, ["--device", "cuda:{}"]),
        "-nogpu": (False, []),
        "-mAP_epochs": (True, Note("-mAP_epochs is not supported; use --map-every ITERATIONS; ignored")),
        "-chart": (True, Note("-chart: the chart is written to the backup folder as chart.png; ignored")),
        "-thresh": (True, Note("-thresh: the mAP during training reports precision/recall at 0.25; ignored")),
        "-iou_thresh": (True, Note("-iou_thresh: the mAP during training uses IoU 0.5; ignored")),
        "-show_imgs": (False, Note("-show_imgs: pydarknet never opens a window; ignored")),
        "-benchmark_layers": (False, Note("-benchmark_layers is not supported; ignored")),
    },
    "calc-anchors": {
        "-num_of_clusters": (True, ["-n", "{}"]),
        "-width": (True, ["--width", "{}"]),
        "-height": (True, ["--height", "{}"]),
        "-show": (False, Note("-show: pydarknet never opens a window (the anchors are printed and saved); ignored")),
        "-dont_show": _NO_WINDOW,
    },
    "classify": {
        "-t": (True, ["--top", "{}"]),
        "-dont_show": _NO_WINDOW,
        **_DEVICE,
    },
}

_DETECTOR_ACTIONS = {"test": "detect", "train": "train", "map": "map", "valid": "valid", "calc_anchors": "calc-anchors"}
_UNSUPPORTED = {
    "demo": "pydarknet does not read video or cameras; run `pydarknet detect` on the frames (a folder or a list)",
    "recall": "`detector recall` is not supported; `pydarknet map DATA CFG WEIGHTS` reports recall at -thresh",
    "draw": "`detector draw` is not supported",
}
_FLAG = re.compile(r"^-[A-Za-z_]")  # a flag, not a negative number


def _note(msg):
    print(f"note: {msg}", file=sys.stderr, flush=True)


def split_flags(command: str, tokens: List[str], *, strict: bool) -> Tuple[List[str], List[str]]:
    """``(positional, translated flags)``: Darknet's flags of ``command`` anywhere in ``tokens`` (as Darknet's
    ``find_arg`` finds them) translated; with ``strict`` any other single-dash word is a usage error (the
    ``detector``/``classifier`` forms), otherwise it is left for pydarknet's own parser."""
    table = FLAGS.get(command, {})
    positional, flags = [], []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in table:
            takes_value, translation = table[tok]
            value = None
            if takes_value:
                if i + 1 >= len(tokens):
                    raise UsageError(f"{tok} needs a value")
                value = tokens[i + 1]
                i += 1
            if isinstance(translation, Note):
                _note(translation)
            else:
                flags.extend(t.replace("{}", value) if value is not None else t for t in translation)
        elif strict and _FLAG.match(tok) and not tok.startswith("--"):
            known = ", ".join(sorted(table)) or "none"
            raise UsageError(f"{tok}: not a Darknet flag pydarknet knows here (known: {known})")
        else:
            positional.append(tok)
        i += 1
    return positional, flags


def _read_data(path):
    from pydarknet.data import dataset

    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    try:
        return dataset.read_data_file(path)
    except dataset.DataError as e:
        raise UsageError(str(e)) from None


def _data_path_value(data, data_path, *keys):
    from pydarknet.data import dataset

    for key in keys:
        if data.get(key):
            return str(dataset.resolve_path(data[key], data_path))
    return None


def _images_from_stdin(usage):
    """Darknet asks for image paths on stdin when none is given; piped paths are read, a terminal is refused."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError(f"no image given (Darknet would prompt for paths; pydarknet takes them as arguments): {usage}")
    paths = [line.strip() for line in sys.stdin if line.strip()]
    if not paths:
        raise UsageError(f"no image given and none on stdin: {usage}")
    return paths


def _need(positional, n, usage):
    if len(positional) < n:
        raise UsageError(f"expected {usage}")


def translate_detector(tokens: List[str]) -> List[str]:
    """``detector ACTION ...`` (Darknet's argv after ``darknet``) -> pydarknet's argv."""
    if not tokens:
        raise UsageError("expected `pydarknet detector test|train|map|valid|calc_anchors DATA CFG [WEIGHTS] ...`")
    action, rest = tokens[0], tokens[1:]
    if action in _UNSUPPORTED:
        raise UsageError(_UNSUPPORTED[action])
    if action not in _DETECTOR_ACTIONS:
        known = ", ".join(_DETECTOR_ACTIONS)
        raise UsageError(f"detector {action}: not a Darknet detector action pydarknet runs ({known})")
    command = _DETECTOR_ACTIONS[action]
    valid_out, rest = _take_valid_out(rest) if command == "valid" else (None, rest)
    pos, flags = split_flags(command, rest, strict=True)
    if command == "detect":
        usage = "pydarknet detector test DATA CFG WEIGHTS IMAGE... (or a list of paths on stdin)"
        _need(pos, 3, usage)
        data_path, cfg, weights, images = pos[0], pos[1], pos[2], pos[3:]
        names = _data_path_value(_read_data(data_path), data_path, "names", "labels")
        if not images:
            images = _images_from_stdin(usage)
        return ["detect", "--cfg", cfg, "--weights", weights, *(["--names", names] if names else []), *flags, *images]
    if command == "train":
        _need(pos, 2, "pydarknet detector train DATA CFG [WEIGHTS]")
        if len(pos) > 3:
            raise UsageError(f"detector train: unexpected {' '.join(pos[3:])} (DATA CFG [WEIGHTS])")
        return ["train", *pos, *flags]
    if command in ("map", "valid"):
        _need(pos, 3, f"pydarknet detector {action} DATA CFG WEIGHTS")
        if len(pos) > 3:
            raise UsageError(f"detector {action}: unexpected {' '.join(pos[3:])} (DATA CFG WEIGHTS)")
        if valid_out is not None:
            # Darknet's valid -out PREFIX writes <results>/<PREFIX>.json (results= of the .data, default results)
            results = _read_data(pos[0]).get("results") or "results"
            flags = ["--out", os.path.join(results, valid_out + ".json"), *flags]
        return [command, *pos, *flags]
    # calc_anchors: Darknet's default is 5 clusters (pydarknet's own command defaults to 9)
    _need(pos, 1, "pydarknet detector calc_anchors DATA -num_of_clusters N -width W -height H")
    if "-n" not in flags:
        flags = ["-n", "5", *flags]
    return ["calc-anchors", pos[0], *flags]


def _take_valid_out(tokens):
    """``(PREFIX or None, the other tokens)`` for Darknet's ``valid -out PREFIX``."""
    if "-out" not in tokens:
        return None, tokens
    k = tokens.index("-out")
    if k + 1 >= len(tokens):
        raise UsageError("-out needs a value")
    return tokens[k + 1], tokens[:k] + tokens[k + 2 :]


def translate_classifier(tokens: List[str]) -> List[str]:
    """``classifier predict DATA CFG WEIGHTS [IMAGE] [-t TOP]`` -> ``classify CFG WEIGHTS IMAGE --names --top``;
    names from the .data's ``names`` (or ``labels``), ``top`` from ``-t``, else the .data's ``top``, else 1, as
    Darknet's ``predict_classifier``."""
    usage = "pydarknet classifier predict DATA CFG WEIGHTS IMAGE [-t TOP] (or a list of paths on stdin)"
    if not tokens or tokens[0] != "predict":
        what = tokens[0] if tokens else ""
        raise UsageError(
            f"classifier {what}: pydarknet runs `classifier predict` only (it trains detectors, not classifiers); "
            f"expected {usage}"
        )
    pos, flags = split_flags("classify", tokens[1:], strict=True)
    _need(pos, 3, usage)
    data_path, cfg, weights, images = pos[0], pos[1], pos[2], pos[3:]
    data = _read_data(data_path)
    names = _data_path_value(data, data_path, "names", "labels")
    if "--top" not in flags:
        top = data.get("top", "1")
        if not re.fullmatch(r"\d+", str(top).strip()):
            raise UsageError(f"{data_path}: top={top} is not a whole number")
        flags = ["--top", str(top).strip(), *flags]
    if not images:
        images = _images_from_stdin(usage)
    return ["classify", cfg, weights, *images, *(["--names", names] if names else []), *flags]


def rewrite(argv: List[str]) -> List[str]:
    """pydarknet's argv for ``argv``: Darknet's ``detector``/``classifier`` forms translated (the result printed on
    stderr), Darknet's single-dash flags on pydarknet's own commands translated; anything else unchanged."""
    if not argv:
        return argv
    head = argv[0]
    if head in ("detector", "classifier") and len(argv) > 1 and argv[1] not in ("-h", "--help"):
        new = translate_detector(argv[1:]) if head == "detector" else translate_classifier(argv[1:])
        print(f"running: pydarknet {shlex.join(new)}", file=sys.stderr, flush=True)
        return new
    if head in FLAGS:
        pos, flags = split_flags(head, argv[1:], strict=False)
        return [head, *pos, *flags]
    return argv


def add_parsers(sub):
    """``detector`` and ``classifier``: listed in ``--help``; their arguments are translated by :func:`rewrite`."""
    import argparse

    d = sub.add_parser(
        "detector",
        help="Darknet's `detector test|train|map|valid|calc_anchors DATA CFG [WEIGHTS] ...` (translated and run)",
        description="Darknet's command lines: `detector test DATA CFG WEIGHTS [IMAGE] [-thresh T] [-ext_output] "
        "[-out result.json] [-save_labels] [-letter_box] [-dont_show]`, `detector train DATA CFG [WEIGHTS] [-map] "
        "[-clear] [-dont_show]`, `detector map DATA CFG WEIGHTS [-thresh T] [-iou_thresh I] [-points N]`, "
        "`detector valid DATA CFG WEIGHTS [-out PREFIX]`, `detector calc_anchors DATA -num_of_clusters N -width W "
        "-height H`. Each is translated into the pydarknet command that does the same, which is printed and run. "
        "-i N selects cuda:N; -gpus 0,1 trains on those GPUs (one rank each, --gpus).",
    )
    d.add_argument("args", nargs=argparse.REMAINDER, help="ACTION DATA CFG [WEIGHTS] [IMAGE] [Darknet flags]")
    d.set_defaults(func=_translated_help)
    c = sub.add_parser(
        "classifier",
        help="Darknet's `classifier predict DATA CFG WEIGHTS [IMAGE] [-t TOP]` (translated and run)",
        description="Darknet's `classifier predict DATA CFG WEIGHTS [IMAGE] [-t TOP]`: class names from the .data's "
        "names= (or labels=), TOP from -t, else the .data's top=, else 1. Runs `pydarknet classify`.",
    )
    c.add_argument("args", nargs=argparse.REMAINDER, help="predict DATA CFG WEIGHTS [IMAGE] [-t TOP]")
    c.set_defaults(func=_translated_help)


def _translated_help(args):
    # reached only with no action at all (rewrite translates every other form before parsing)
    raise UsageError(f"expected an action; see `pydarknet {args.command} --help`")
