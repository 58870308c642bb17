"""Accuracy of the registry models on real COCO ground truth: four COCO val2017 photos with their official
``instances_val2017`` records (45 boxes), scored by ``pydarknet map`` and, as a cross-check, by pycocotools itself.

For every registry model whose weights are at hand (in the cache, or fetchable from the package registry), and for
yolov3-tiny also with Darknet's published cfg (``mask=0,1,2``, see README "yolov3-tiny's mask"):

* ``pydarknet map DATA CFG WEIGHTS`` with ``annotations = instances.json`` in the .data file: Darknet's mAP@0.5
  (over all 80 classes, Darknet's matching, conf 0.005, NMS 0.45) and COCO AP / AP50 (pycocotools, run by map);
* ``pydarknet valid`` with the same conf and NMS (``--conf 0.005 --nms 0.45``) writes the COCO results json, and
  pycocotools is run on it directly here (``COCO.loadRes`` + ``COCOeval``, bbox): its AP / AP50 must equal map's;
* ``pydarknet valid`` with Darknet's ``detector valid`` defaults (conf 0.001, NMS 0.6), scored by pycocotools.

The COCO folder is not part of the project (photos under Flickr licenses); pass it with ``--coco``:

    python benchmarks/accuracy_coco4.py --coco ../shared/data/coco-val2017-4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cli(argv):
    from pydarknet.cli import main as cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    if code != 0:
        raise SystemExit(f"pydarknet {' '.join(argv)} failed with exit code {code}")
    return out.getvalue()


def _pycocotools(annotations, results):
    """pycocotools' own bbox evaluation of a results json (AP, AP50)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
        dt = gt.loadRes(str(results))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def _weights(model):
    """The model's weights file, or None where it cannot be had here (not cached, no package-registry source)."""
    from pydarknet.hub import models

    if models.is_cached(model):
        return models.weights_path(model)
    if model.asset:
        try:
            return models.fetch(model, quiet=True)
        except models.ModelError as e:
            print(f"# {model.name}: {e}", file=sys.stderr)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco", default=str(ROOT.parent / "shared" / "data" / "coco-val2017-4"))
    args = parser.parse_args()

    from pydarknet.hub import models

    coco = pathlib.Path(args.coco).resolve()
    annotations = coco / "instances.json"
    images = sorted((coco / "images").glob("*.jpg"))
    if not annotations.is_file() or not images:
        raise SystemExit(f"{coco}: expected images/*.jpg and instances.json")

    runs = []
    for m in models.MODELS.values():
        weights = _weights(m)
        if weights is None:
            print(f"# {m.name}: weights not available here, skipped", file=sys.stderr)
            continue
        runs.append((m.name, m.cfg, weights))
        if m.darknet_cfg:
            runs.append((m.name, m.darknet_cfg, weights))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "valid.txt").write_text("".join(f"{p}\n" for p in images))
        data = tmp / "coco4.data"
        data.write_text(
            f"classes = 80\nvalid = {tmp / 'valid.txt'}\nnames = {models.find_data_file('coco.names')}\n"
            f"annotations = {annotations}\n"
        )
        for name, cfg_name, weights in runs:
            cfg = str(models.find_data_file(cfg_name))
            metrics_path = tmp / "metrics.json"
            _cli(["map", str(data), cfg, str(weights), "--json", str(metrics_path), "-q"])
            metrics = json.loads(metrics_path.read_text())
            same = tmp / "valid_map_settings.json"
            _cli(["valid", str(data), cfg, str(weights), "--conf", "0.005", "--nms", "0.45", "--out", str(same), "-q"])
            default = tmp / "valid_defaults.json"
            _cli(["valid", str(data), cfg, str(weights), "--out", str(default), "-q"])
            rows.append(
                (
                    name,
                    cfg_name,
                    metrics["map"],
                    metrics["coco"]["AP"],
                    metrics["coco"]["AP50"],
                    *_pycocotools(annotations, same),
                    *_pycocotools(annotations, default),
                )
            )

    print(f"{len(images)} COCO val2017 photos, {len(json.loads(annotations.read_text())['annotations'])} boxes")
    print()
    print(
        "| model | cfg | Darknet mAP@0.5 | map: COCO AP | map: AP50 | pycocotools on valid json (conf .005, NMS .45): "
        "AP / AP50 | pycocotools on valid json (Darknet's valid: conf .001, NMS .6): AP / AP50 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, cfg, dmap, ap, ap50, p_ap, p_ap50, d_ap, d_ap50 in rows:
        print(
            f"| {name} | {cfg} | {dmap:.4f} | {ap:.4f} | {ap50:.4f} | {p_ap:.4f} / {p_ap50:.4f} | "
            f"{d_ap:.4f} / {d_ap50:.4f} |"
        )


if __name__ == "__main__":
    main()
