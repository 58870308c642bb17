"""calc_anchors: Darknet's k-means on 1 - IoU, checked by hand on tiny sets, against an independent float64
loop of do_kmeans, and on constructed data with known clusters read from a .data file like Darknet does."""

import numpy as np
import pytest

from pydarknet.train.anchors import AnchorsError, calc_anchors, format_anchors, kmeans_anchors


def iou64(a, b):
    inter = min(a[0], b[0]) * min(a[1], b[1])
    return inter / (a[0] * a[1] + b[0] * b[1] - inter)


def kmeans_reference(boxes, centers):
    """do_kmeans written out in float64: nearest by 1-IoU (first on ties), mean, zero keeps the old value."""
    boxes = [tuple(map(float, b)) for b in boxes]
    centers = [list(map(float, c)) for c in centers]
    assign = [0] * len(boxes)
    rounds = 0
    while rounds < 1000:
        new = []
        for b in boxes:
            dists = [1 - iou64(b, c) for c in centers]
            new.append(dists.index(min(dists)))
        if new == assign:
            break
        assign = new
        old = [c[:] for c in centers]
        for j in range(len(centers)):
            members = [b for b, a in zip(boxes, assign) if a == j]
            for d in range(2):
                value = sum(m[d] for m in members) / len(members) if members else 0.0
                centers[j][d] = old[j][d] if value == 0 else value
        rounds += 1
    return np.array(centers), rounds


def test_two_obvious_clusters_by_hand():
    boxes = [(1, 1), (1, 1), (4, 4), (4, 4)]
    centers, _ = kmeans_anchors(boxes, 2, seed=0)
    assert sorted(map(tuple, centers.tolist())) == [(1.0, 1.0), (4.0, 4.0)]


def test_one_cluster_is_the_mean():
    centers, rounds = kmeans_anchors([(2, 2), (4, 4), (6, 6)], 1, seed=0)
    assert centers.tolist() == [[4.0, 4.0]] and rounds == 0


def test_an_empty_cluster_keeps_its_centre():
    # (1,1) ties between centres 1 and 2 and goes to 1 (the first); centre 2 gets no box and keeps its value.
    centers, rounds = kmeans_anchors([(1, 1), (5, 5), (4, 4)], 3, init=[(5, 5), (1, 1), (1, 1)])
    assert centers.tolist() == [[4.5, 4.5], [1.0, 1.0], [1.0, 1.0]] and rounds == 1


def test_stops_at_once_when_everything_starts_on_centre_zero():
    # Assignments start at centre 0, so a first pass that puts every box there counts as converged.
    centers, rounds = kmeans_anchors([(1, 1), (5, 5)], 2, init=[(1, 1), (1, 1)])
    assert centers.tolist() == [[1.0, 1.0], [1.0, 1.0]] and rounds == 0


def test_matches_an_independent_float64_loop():
    rng = np.random.default_rng(5)
    boxes = np.exp(rng.uniform(np.log(4), np.log(400), size=(300, 2))).astype(np.float32)
    init = boxes[:6]
    got, rounds = kmeans_anchors(boxes, 6, init=init)
    want, want_rounds = kmeans_reference(boxes, init)
    assert rounds == want_rounds and rounds > 1
    np.testing.assert_allclose(got, want, rtol=1e-5)


def write_dataset(root, clusters, per_cluster, seed):
    """Label files for images/<k>.jpg (3 boxes each), a train list and a .data file; returns the box sizes."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir()
    (root / "labels").mkdir()
    sizes = [np.array(c) * rng.uniform(0.95, 1.05, size=(per_cluster, 2)) for c in clusters]
    boxes = np.concatenate(sizes)
    classes = np.arange(len(boxes)) % 3
    order = rng.permutation(len(boxes))
    images = []
    for start in range(0, len(order), 3):
        name = f"images/{start // 3}.jpg"
        rows = [
            f"{classes[i]} 0.5 0.5 {boxes[i, 0] / 416:.6f} {boxes[i, 1] / 416:.6f}" for i in order[start : start + 3]
        ]
        (root / name.replace("images", "labels").replace(".jpg", ".txt")).write_text("\n".join(rows) + "\n")
        images.append(name)
    (root / "train.txt").write_text("\n".join(images) + "\n")
    (root / "obj.data").write_text("classes = 3\ntrain = train.txt\nnames = obj.names\n")
    return boxes, np.bincount(classes, minlength=3).tolist()


def test_known_clusters_from_a_data_file(tmp_path):
    clusters = [(10, 14), (40, 70), (150, 110)]
    boxes, counts = write_dataset(tmp_path, clusters, 60, seed=2)
    # the box sizes Darknet sees: label values (6 decimals) times the network size
    pixels = np.array([[round(w / 416, 6) * 416, round(h / 416, 6) * 416] for w, h in boxes])
    results = [calc_anchors(tmp_path / "obj.data", 3, 416, 416, seed=s) for s in range(12)]
    for res in results:
        assert res.boxes == 180 and res.counts_per_class == counts
        assert not res.wrong_labels and not res.missing_labels
        areas = res.anchors[:, 0] * res.anchors[:, 1]
        assert (np.diff(areas) >= 0).all()  # ascending area
        # average IoU recomputed independently from the label values and the returned anchors
        want = np.mean([max(iou64(b, a) for a in res.anchors.astype(np.float64)) for b in pixels])
        assert res.mean_iou == pytest.approx(want, rel=1e-5)
    # Darknet starts from random boxes (no k-means++), so some starts end in a local optimum (two centres in
    # one cluster); the starts with one box per cluster recover the clusters, and those score best.
    found = [r for r in results if np.allclose(r.anchors, clusters, rtol=0.03)]
    assert found and len(found) < len(results)
    best = max(results, key=lambda r: r.mean_iou)
    np.testing.assert_allclose(best.anchors, clusters, rtol=0.03)
    assert 0.9 < best.mean_iou < 1.0
    assert calc_anchors(tmp_path / "obj.data", 3, 416, 416, seed=3).anchors.tolist() == results[3].anchors.tolist()
    res = found[0]
    assert res.report().splitlines()[1:] == [
        "counters_per_class = " + ", ".join(map(str, counts)),
        f"avg IoU = {100 * res.mean_iou:2.2f} %",
        "anchors = " + ", ".join("{:3.0f},{:3.0f}".format(*tuple(a)) for a in res.anchors),
    ]


def test_format_anchors_like_darknet():
    assert format_anchors([(10.4, 13.6), (150.2, 110.0)], 416) == " 10, 14, 150,110"
    assert format_anchors([(0.5, 1.25)], 13) == "0.5000,1.2500"


def test_sources_and_label_problems(tmp_path):
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n1 0.5 0.5 1.5 0.25\n")  # the second row is "wrong"
    res = calc_anchors([tmp_path / "a.txt", tmp_path / "img/missing.jpg"], 1, 64, 64, seed=0)
    assert res.boxes == 2 and len(res.wrong_labels) == 1 and "a.txt: row 2" in res.wrong_labels[0]
    assert res.missing_labels and res.counts_per_class == [1, 1]
    np.testing.assert_allclose(res.anchors, [[(16 + 96) / 2, (32 + 16) / 2]])  # wrong rows still count
    with pytest.raises(AnchorsError, match="2 boxes cannot make 3 clusters"):
        calc_anchors([tmp_path / "a.txt"], 3, 64, 64)
    with pytest.raises(AnchorsError, match="no labelled boxes"):
        calc_anchors([tmp_path / "none.txt"], 1, 64, 64)
    (tmp_path / "bad.txt").write_text("0 0.5 0.5 0.25\n")
    with pytest.raises(AnchorsError, match=r"bad.txt:1"):
        calc_anchors([tmp_path / "bad.txt"], 1, 64, 64)
    with pytest.raises(AnchorsError, match="positive"):
        calc_anchors([tmp_path / "a.txt"], 1, 0, 64)
