"""What every command group shares: exit codes, error printing, device options and the expansion of image
sources (files, folders, list files) given on the command line.

Exit codes: 0 success; 1 some inputs could not be read (missing or unreadable images; every other image was
still processed); 2 a bad command line, no images to process, or a model that cannot be loaded (missing cfg,
weights or names, weights that do not fit the cfg, an unavailable device); 130 interrupted.
"""

from __future__ import annotations

import os
import pathlib
import sys

from pydarknet.data.dataset import read_image_list
from pydarknet.errors import DataError, UsageError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def error(msg):
    print(f"error: {msg}", file=sys.stderr, flush=True)


def add_device_options(group):
    """--device, --precision, --width and --height, as detect, map and valid take them (pydarknet.load's)."""
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    group.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "bf16"],
        help="fp32 (default); bf16: bfloat16 convolutions on the CPU, bf16 activations on the GPU; "
        "fp16: GPU only (fp16/bf16 convolutions run on the tensor cores)",
    )
    group.add_argument("--width", type=int, help="override the network input width")
    group.add_argument("--height", type=int, help="override the network input height")


# ----- input expansion -------------------------------------------------------------------------------------
def ensure_writable_folder(option, folder):
    """Create ``folder`` (named by the command-line ``option``) if needed and check it can be written, before any
    work starts, so a bad output path fails at once with the option's name."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{option}: cannot create the folder {folder} ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option}: cannot write into {folder}")


def _is_image_name(name):
    from pydarknet.data.images import IMAGE_EXTENSIONS

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
        # os.path's checks answer False for names the OS refuses (too long, NUL bytes) where pathlib's raise
        if os.path.isdir(p):
            many = True
            found = sorted((q for q in p.iterdir() if q.is_file() and _is_image_name(q.name)), key=lambda q: q.name)
            if not found:
                items.append((str(p), f"{p}: no images in this folder"))
            items.extend((str(q), None) for q in found)
        elif p.suffix.lower() in (".txt", ".list") and os.path.isfile(p):
            many = True
            try:
                listed = read_image_list(p)
            except DataError as e:
                items.append((str(p), str(e)))
                continue
            for q in map(pathlib.Path, listed):
                items.append((str(q), None if os.path.exists(q) else f"{q}: no such file (listed in {p})"))
        elif os.path.exists(p):
            items.append((str(p), None))
        else:
            items.append((str(p), f"{p}: no such file or folder"))
    return items, many


def weights_mismatch(e, cfg) -> str:
    """The command line's message for weights that do not fit ``cfg`` (a :class:`pydarknet.WeightsError`): the
    Python API's ``partial=True`` advice becomes what to type instead."""
    text = f"{e.path or '<weights>'}: {e.problem}"
    if getattr(e, "too_short", False):
        text += (
            f"\nA backbone prefix such as yolov4-tiny.conv.29 (made by `pydarknet partial`) is where a training run "
            f"starts, not a model to run: `pydarknet train {cfg} DATA {e.path}` loads it as one. "
            "detect, map and valid need the whole weights file."
        )
    return text + f"\nThe weights do not fit {cfg}: check that the cfg and the weights belong to the same model."
