"""Print how closely `net.detect` matches OpenCV's Darknet importer on the real photos, per model, mode and photo.

Same procedure as tests/test_detect.py::test_real_photos_match_opencv (whose reference post-processing it
reuses): OpenCV gets the exact network input pydarknet prepared; detections are paired by class and IoU.

    python tools/detect_vs_opencv.py            # markdown table on stdout
"""

import importlib.util
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    spec = importlib.util.spec_from_file_location("test_detect", ROOT / "tests" / "test_detect.py")
    td = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(td)
    from pydarknet.hub import assets
    from pydarknet.inference.detect import Detector

    print("| model | mode | photo | detections (ours / OpenCV) | min box IoU | max |conf diff| | unpaired |")
    print("|---|---|---|---|---|---|---|")
    worst_iou, worst_conf = 1.0, 0.0
    for model in ("yolov4-tiny", "yolov3-tiny"):
        net = td.real_net(model)
        cvn = td.opencv_net(model)
        names = cvn.getUnconnectedOutLayersNames()
        for letterbox in (False, True):
            det = Detector(net, thresh=td.THRESH, nms=td.NMS, letterbox=letterbox, batch=len(td.PHOTOS))
            prepared = [det.prepare(assets.fetch(p)) for p in td.PHOTOS]
            for photo, p, res in zip(td.PHOTOS, prepared, det.infer(prepared)):
                cvn.setInput(p.tensor[None])
                rows = np.concatenate([o.reshape(-1, o.shape[-1]) for o in cvn.forward(names)])
                H, W = p.image.shape[:2]
                ref = td.reference_detections(
                    rows, W, H, det.net_w, det.net_h, letterbox, td.THRESH, td.NMS, det.nms_kind, det.beta_nms
                )
                ours = [(int(c), float(s), tuple(map(float, b))) for c, s, b in zip(res.class_id, res.conf, res.xyxy)]
                pairs, only_ours, only_ref = td.match_detections(ours, ref, td.THRESH)
                min_iou = min((x[2] for x in pairs), default=float("nan"))
                max_dc = max((x[3] for x in pairs), default=float("nan"))
                if pairs:
                    worst_iou, worst_conf = min(worst_iou, min_iou), max(worst_conf, max_dc)
                unpaired = ", ".join(f"{res.names[c]} {s:.3f}" for c, s, _ in only_ours + only_ref) or "-"
                print(
                    f"| {model} | {'letterbox' if letterbox else 'stretch'} | {photo} | {len(ours)} / {len(ref)} | "
                    f"{min_iou:.5f} | {max_dc:.5f} | {unpaired} |"
                )
    print(
        f"\nworst: min IoU {worst_iou:.5f} (1 - IoU = {1 - worst_iou:.2e}), max confidence difference {worst_conf:.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
