"""Datasets (pydarknet.data) and the training loader (pydarknet.loader).

Label-path rules case by case; .data and data.yaml parsing with Darknet's path resolution; strict label parsing
and the bad.list / bad_label.list reports; the loader's reproducibility (same seed and iteration -> the same
batch, whatever the number of workers), its epoch order and Darknet's multi-scale rule.
"""

import os
import pathlib
import weakref

import numpy as np
import pytest
from PIL import Image

from pydarknet.data import dataset as D
from pydarknet.data import labels as L
from pydarknet.data.augment import AugmentSettings
from pydarknet.data.loader import Loader, input_size


def write_image(path, colour=(120, 80, 40), size=(64, 48)):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.empty((size[1], size[0], 3), np.uint8)
    img[:] = colour
    Image.fromarray(img).save(path)
    return path


def write(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ----- label paths -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image,label",
    [
        ("/coco/images/train2017/0001.jpg", "/coco/labels/train2017/0001.txt"),
        ("/coco/images/val2017/0001.jpg", "/coco/labels/val2017/0001.txt"),
        ("/coco/images/train2014/COCO_train2014_1.jpg", "/coco/labels/train2014/COCO_train2014_1.txt"),
        ("/coco/images/val2014/x.JPG", "/coco/labels/val2014/x.txt"),
        ("/voc/VOC2007/JPEGImages/000005.jpg", "/voc/VOC2007/labels/000005.txt"),
        ("C:\\coco\\images\\val2014\\x.png", "C:\\coco\\labels\\val2014\\x.txt"),
        ("D:\\voc\\JPEGImages\\x.jpeg", "D:\\voc\\labels\\x.txt"),
    ],
)
def test_alexeyab_substitutions(image, label):
    assert L.label_candidates(image)[0] == label


@pytest.mark.parametrize(
    "image,beside",
    [
        ("/d/a/x.jpg", "/d/a/x.txt"),
        ("/d/a/x.PNG", "/d/a/x.txt"),
        ("/d/a/x.tif", "/d/a/x.txt"),
        ("/d/a/x.webp", "/d/a/x.txt"),
        ("/d/a/x.tar.jpg", "/d/a/x.tar.txt"),
        ("rel/x.bmp", "rel/x.txt"),
        ("/d/a/noext", "/d/a/noext.txt"),
    ],
)
def test_extension_becomes_txt(image, beside):
    assert L.label_candidates(image)[-1] == beside


def test_label_path_finds_each_layout(tmp_path):
    # AlexeyAB / COCO: images/train2017 -> labels/train2017
    coco = write_image(tmp_path / "coco/images/train2017/a.jpg")
    write(tmp_path / "coco/labels/train2017/a.txt", "")
    assert L.label_path(coco) == str(tmp_path / "coco/labels/train2017/a.txt")
    # ultralytics / pjreddie: labels/ beside images/, any subfolder
    ul = write_image(tmp_path / "ds/images/train/sub/b.png")
    write(tmp_path / "ds/labels/train/sub/b.txt", "")
    assert L.label_path(ul) == str(tmp_path / "ds/labels/train/sub/b.txt")
    # hank-ai: beside the image
    flat = write_image(tmp_path / "flat/c.jpg")
    write(tmp_path / "flat/c.txt", "")
    assert L.label_path(flat) == str(tmp_path / "flat/c.txt")
    # beside wins over labels/ (AlexeyAB's rule gives the one beside the image first for a plain images/ folder)
    both = write_image(tmp_path / "both/images/d.jpg")
    write(tmp_path / "both/images/d.txt", "")
    write(tmp_path / "both/labels/d.txt", "")
    assert L.label_path(both) == str(tmp_path / "both/images/d.txt")
    # none exists: where a Darknet-style layout would put it
    assert L.label_path("/nowhere/images/e.jpg") == "/nowhere/labels/e.txt"
    assert L.label_path("/nowhere/e.jpg") == "/nowhere/e.txt"


# ----- .data, lists, names -----------------------------------------------------------------------------------
def _dataset(root, n=4, classes=2, names=True, rel=True):
    """root/obj/{train,valid}.txt listing root/obj/img/*.jpg (relative to the .data's folder when ``rel``)."""
    obj = root / "obj"
    paths = []
    for i in range(n):
        p = write_image(obj / "img" / f"{i}.jpg", colour=(20 * i, 100, 200 - 20 * i))
        write(p.with_suffix(".txt"), f"{i % classes} 0.5 0.5 0.25 0.5\n")
        paths.append(p)
    entries = [f"obj/img/{p.name}" if rel else str(p) for p in paths]
    write(root / "obj/train.txt", "# images\n" + "\n".join(entries[:-1]) + "\n\n")
    write(root / "obj/valid.txt", entries[-1] + "\n")
    text = f"classes = {classes}\ntrain = obj/train.txt\nvalid = obj/valid.txt\n"
    if names:
        write(root / "obj/obj.names", "".join(f"c{i}\n" for i in range(classes)))
        text += "names = obj/obj.names\n"
    text += "backup = backup/\n"
    return write(root / "obj.data", "; comment\n# comment\n" + text)


def test_read_data_file_syntax(tmp_path):
    p = write(tmp_path / "a.data", "# c\n; c\nclasses= 3\n  train =  t.txt  \nlabels = x.names\n")
    assert D.read_data_file(p) == {"classes": "3", "train": "t.txt", "labels": "x.names", "names": "x.names"}
    bad = write(tmp_path / "b.data", "classes = 3\ntrain t.txt\n")
    with pytest.raises(D.DataError, match=r"b.data:2: expected 'key = value'"):
        D.read_data_file(bad)
    with pytest.raises(D.DataError, match="cannot read"):
        D.read_data_file(tmp_path / "missing.data")


def test_data_file_paths_relative_to_its_folder(tmp_path, monkeypatch):
    data_path = _dataset(tmp_path / "ds")
    monkeypatch.chdir(tmp_path)  # obj/... does not exist here: the .data's folder
    ds = D.load_dataset("ds/obj.data")
    assert ds.classes == 2 and ds.names == ["c0", "c1"]
    assert [pathlib.Path(p).name for p in ds.train] == ["0.jpg", "1.jpg", "2.jpg"]
    assert all(os.path.isfile(p) for p in ds.train + ds.valid)
    assert [pathlib.Path(p).name for p in ds.valid] == ["3.jpg"]
    assert ds.backup == pathlib.Path("backup/")  # does not exist anywhere: as written, Darknet's way
    monkeypatch.chdir(tmp_path / "ds")  # relative to the working folder, as Darknet does
    ds2 = D.load_dataset("obj.data")
    assert ds2.train == ["obj/img/0.jpg", "obj/img/1.jpg", "obj/img/2.jpg"]
    assert data_path.is_file()


def test_working_folder_wins_over_the_data_folder(tmp_path, monkeypatch):
    _dataset(tmp_path / "ds")
    write(tmp_path / "obj/train.txt", "other.jpg\n")  # the same relative path from the working folder
    write(tmp_path / "obj/valid.txt", "other.jpg\n")
    write_image(tmp_path / "other.jpg")
    write(tmp_path / "obj/obj.names", "a\nb\n")
    monkeypatch.chdir(tmp_path)
    ds = D.load_dataset(tmp_path / "ds/obj.data")
    assert ds.train == ["other.jpg"] and ds.names == ["a", "b"]


def test_data_file_defaults_and_errors(tmp_path):
    root = tmp_path / "ds"
    _dataset(root, names=False)
    text = (root / "obj.data").read_text().replace("valid = obj/valid.txt\n", "")
    write(root / "novalid.data", text)
    ds = D.load_dataset(root / "novalid.data")
    assert ds.valid == ds.train  # valid defaults to the train list
    assert ds.names == ["0", "1"]  # no names file: numbered classes
    write(root / "bad_classes.data", "classes = two\ntrain = obj/train.txt\n")
    with pytest.raises(D.DataError, match="classes='two' is not a number"):
        D.load_dataset(root / "bad_classes.data")
    write(root / "no_train.data", "classes = 2\n")
    with pytest.raises(D.DataError, match="no 'train' list"):
        D.load_dataset(root / "no_train.data")
    write(root / "missing_list.data", "classes = 2\ntrain = obj/nope.txt\n")
    with pytest.raises(D.DataError, match="train list .*nope.txt: no such file"):
        D.load_dataset(root / "missing_list.data")
    write(root / "three.names", "a\nb\nc\n")
    write(root / "names.data", "classes = 2\ntrain = obj/train.txt\nnames = three.names\n")
    with pytest.raises(D.DataError, match="has 3 names but .* says classes=2"):
        D.load_dataset(root / "names.data")
    assert D.load_dataset(root / "novalid.data", backup=tmp_path / "bk").backup == tmp_path / "bk"


def test_image_list_resolution(tmp_path, monkeypatch):
    write_image(tmp_path / "lists/imgs/a.jpg")
    write_image(tmp_path / "b.jpg")
    lst = write(tmp_path / "lists/l.txt", "  imgs/a.jpg  \n# skipped\n\nb.jpg\n/abs/missing.jpg\n")
    monkeypatch.chdir(tmp_path)
    assert D.read_image_list(lst) == [str(tmp_path / "lists/imgs/a.jpg"), "b.jpg", "/abs/missing.jpg"]


# ----- data.yaml ---------------------------------------------------------------------------------------------
def test_data_yaml_folders_lists_and_names(tmp_path):
    pytest.importorskip("yaml")
    root = tmp_path / "ul"
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            write_image(root / "images" / split / ("deep" if i == 2 else "") / f"{split}{i}.jpg")
            write(root / "labels" / split / ("deep" if i == 2 else "") / f"{split}{i}.txt", "1 0.5 0.5 0.2 0.2\n")
    write(root / "extra.txt", "./images/val/val0.jpg\n")
    y = write(root / "data.yaml", "train: images/train\nval: [images/val, extra.txt]\nnames:\n  0: cat\n  1: dog\n")
    ds = D.load_dataset(y)
    assert ds.names == ["cat", "dog"] and ds.classes == 2
    assert sorted(pathlib.Path(p).name for p in ds.train) == ["train0.jpg", "train1.jpg", "train2.jpg"]
    assert len(ds.valid) == 3
    assert all(os.path.isfile(L.label_path(p)) and "/labels/" in L.label_path(p) for p in ds.train + ds.valid)
    y2 = write(root / "list.yaml", f"path: {root}\ntrain: images/train/train0.jpg\nnames: [a, b, c]\nnc: 3\n")
    ds2 = D.load_dataset(y2)
    assert ds2.names == ["a", "b", "c"] and ds2.valid == ds2.train and len(ds2.train) == 1


@pytest.mark.parametrize(
    "text,needle",
    [
        ("train: images\nnames: [a]\nnc: 2\n", "nc=2 but 1 names"),
        ("train: nowhere\nnames: [a]\n", "no such file or folder"),
        ("names: [a]\n", "no 'train'"),
        ("train: images\nnames: {0: a, 2: b}\n", "without gaps"),
        ("train: images\nnames: 5\n", "'names' must be"),
        ("- a\n- b\n", "expected a mapping"),
        ("train: [images\n", "not valid YAML"),
        ("train: images\nnc: two\n", "nc='two' is not a positive number"),
    ],
)
def test_data_yaml_errors(tmp_path, text, needle):
    pytest.importorskip("yaml")
    write_image(tmp_path / "images/a.jpg")
    with pytest.raises(D.DataError, match=needle):
        D.load_dataset(write(tmp_path / "d.yml", text))


# ----- labels ------------------------------------------------------------------------------------------------
def test_parse_labels_good_and_clipped(tmp_path):
    p = write(
        tmp_path / "l.txt", "0 0.5 0.5 0.2 0.4\n\n  2 0.1 0.9 0.2 0.2  \n1 0.996 0.5 0.01 0.1\n3.0 0.5 0.5 1.004 1\n"
    )
    boxes, problems = L.parse_labels(p, classes=4)
    assert problems == []
    assert boxes.dtype == np.float32 and boxes.shape == (4, 5)
    assert np.allclose(boxes[0], [0.5, 0.5, 0.2, 0.4, 0])
    assert np.allclose(boxes[1], [0.1, 0.9, 0.2, 0.2, 2])
    # right edge 1.001: clipped to 1, the centre and width follow
    assert np.allclose(boxes[2], [(0.991 + 1) / 2, 0.5, 1 - 0.991, 0.1, 1], atol=1e-6)
    assert np.allclose(boxes[3], [0.5, 0.5, 1, 1, 3])
    empty = write(tmp_path / "e.txt", "\n")
    assert L.parse_labels(empty, 2)[0].shape == (0, 5)


@pytest.mark.parametrize(
    "line,needle",
    [
        ("0 0.5 0.5 0.2", "5 numbers"),
        ("0 0.5 0.5 0.2 0.2 0.9", "5 numbers"),
        ("0 0.5 zero 0.2 0.2", "not numbers"),
        ("0 nan 0.5 0.2 0.2", "non-finite"),
        ("2 0.5 0.5 0.2 0.2", r"class 2 is not an integer in \[0, 1\]"),
        ("-1 0.5 0.5 0.2 0.2", "class -1"),
        ("0.5 0.5 0.5 0.2 0.2", "class 0.5"),
        ("0 1.2 0.5 0.2 0.2", "not inside"),
        ("0 0.5 0.5 0 0.2", "not inside"),
        ("0 0.5 0.5 -0.1 0.2", "not inside"),
        ("0 0.95 0.5 0.2 0.2", "reaches outside"),
        ("0 0.5 0.02 0.2 0.1", "reaches outside"),
    ],
)
def test_parse_labels_rejects(tmp_path, line, needle):
    p = write(tmp_path / "l.txt", "0 0.5 0.5 0.1 0.1\n" + line + "\n")
    boxes, problems = L.parse_labels(p, classes=2)
    assert len(problems) == 1 and problems[0].startswith("line 2:")
    assert __import__("re").search(needle, problems[0]), problems[0]
    with pytest.raises(D.DataError, match="l.txt: line 2"):
        L.read_labels(p, 2)


def test_parse_labels_unreadable(tmp_path):
    assert "cannot read" in L.parse_labels(tmp_path / "none.txt", 2)[1][0]
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"0 0.5\0 0.5")
    assert "not a text file" in L.parse_labels(binary, 2)[1][0]


def test_parse_labels_bom_crlf_and_many_bad_lines(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes("\ufeff0 0.5 0.5 0.2 0.2\r\n1 0.25 0.25 0.1 0.1\r\n".encode("utf-8"))
    boxes, problems = L.parse_labels(p, 2)
    assert problems == [] and boxes.shape == (2, 5)
    many = write(tmp_path / "many.txt", "x\n" * 100)
    _, problems = L.parse_labels(many, 2)
    assert len(problems) == L.MAX_PROBLEMS_LISTED + 1 and problems[-1] == "... and 80 more bad lines"


# ----- the loader: bad files ---------------------------------------------------------------------------------
def _plain_settings(w=32, h=32):
    return AugmentSettings(width=w, height=h, flip=False)


def test_bad_files_are_reported_and_skipped(tmp_path):
    good = [write_image(tmp_path / f"g{i}.jpg", colour=(40 * i, 0, 0)) for i in range(3)]
    for p in good:
        write(p.with_suffix(".txt"), "0 0.5 0.5 0.5 0.5\n")
    bad_label = write_image(tmp_path / "bl.jpg")
    write(tmp_path / "bl.txt", "0 0.5 0.5 0.5 0.5\n5 0.5 0.5 0.5 0.5\n0 0.5 0.5\n")
    no_label = write_image(tmp_path / "nl.jpg")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    write(tmp_path / "corrupt.txt", "0 0.5 0.5 0.5 0.5\n")
    missing = tmp_path / "missing.jpg"
    images = [*good, bad_label, no_label, corrupt, missing]
    loader = Loader(images, 2, _plain_settings(), batch=6, seed=0, problems=tmp_path / "backup")
    assert len(loader) == 5  # 3 good, the one without labels, the corrupt one
    bad_label_list = (tmp_path / "backup/bad_label.list").read_text()
    assert f'{tmp_path / "bl.txt"} "line 2: class 5 is not an integer in [0, 1]"' in bad_label_list
    assert "line 3: expected 'class x y w h' (5 numbers), got 3 fields" in bad_label_list
    bad_list = (tmp_path / "backup/bad.list").read_text()
    assert f'{missing} "no such file"' in bad_list
    assert f'{tmp_path / "nl.txt"} "no label file for {no_label}; the image is used without objects"' in bad_list
    images_out, truths = loader.batch(0)  # 6 slots over 5 usable images: every one is met
    assert images_out.shape == (6, 3, 32, 32) and len(truths) == 6
    bad_list = (tmp_path / "backup/bad.list").read_text()
    assert f'{corrupt} "cannot read the image' in bad_list and bad_list.count(str(corrupt)) == 1
    assert sum(len(t) == 0 for t in truths) >= 1  # the background image
    again, _ = Loader(images, 2, _plain_settings(), batch=6, seed=0).batch(0)
    assert np.array_equal(images_out, again)  # the replacement is the same in every run


def test_no_usable_image_is_an_error(tmp_path):
    with pytest.raises(D.DataError, match="no usable training images"):
        Loader([tmp_path / "nope.jpg"], 2, _plain_settings(), batch=1)


# ----- the loader: reproducibility and order -----------------------------------------------------------------
@pytest.fixture(scope="module")
def colours_dataset(tmp_path_factory):
    """12 images of distinct solid colours, each with a box of its own class-free label."""
    root = tmp_path_factory.mktemp("colours")
    paths, colours = [], []
    for i in range(12):
        c = (20 * i + 5, 250 - 20 * i, (90 * i) % 256)
        p = write_image(root / f"{i:02d}.png", colour=c, size=(40 + 4 * i, 30 + 2 * i))
        img = np.asarray(Image.open(p))
        img = img.copy()
        h, w = img.shape[:2]
        img[h // 4 : h // 2, w // 4 : w // 2] = 255 - np.asarray(c)
        Image.fromarray(img).save(p)
        write(p.with_suffix(".txt"), f"{i % 3} 0.375 0.375 0.25 0.25\n")
        paths.append(p)
        colours.append(c)
    return paths, colours


FULL = dict(
    jitter=0.3,
    resize=1.5,
    hue=0.1,
    saturation=1.5,
    exposure=1.5,
    blur=5,
    gaussian_noise=10,
    random=1.0,
    max_batches=500,
)


@pytest.mark.parametrize("mixing", [dict(mosaic=True), dict(mixup=True), {}])
def test_same_seed_and_iteration_give_the_same_batch(colours_dataset, mixing):
    paths, _ = colours_dataset
    s = AugmentSettings(width=64, height=64, **FULL, **mixing)
    a = Loader(paths, 3, s, batch=4, seed=7)
    b = Loader(paths, 3, s, batch=4, seed=7)
    for it in (0, 13, 5, 13):  # any order: nothing carries over between batches
        xa, ta = a.batch(it)
        xb, tb = b.batch(it)
        assert np.array_equal(xa, xb) and all(np.array_equal(u, v) for u, v in zip(ta, tb))
    x1, _ = a.batch(1, 64, 64)
    x2, _ = a.batch(2, 64, 64)
    assert not np.array_equal(x1, x2)
    x1_other_seed, _ = Loader(paths, 3, s, batch=4, seed=8).batch(1, 64, 64)
    assert not np.array_equal(x1, x1_other_seed)


def test_batch_format(colours_dataset):
    paths, _ = colours_dataset
    s = AugmentSettings(width=96, height=64, **FULL, mosaic=True)
    x, truths = Loader(paths, 3, s, batch=5, seed=1).batch(11, 96, 64)
    assert x.shape == (5, 3, 64, 96) and x.dtype == np.float32 and x.flags.c_contiguous
    assert 0 <= x.min() and x.max() <= 1
    for t in truths:
        assert t.dtype == np.float32 and t.ndim == 2 and t.shape[1] == 5
        assert ((t[:, :4] >= 0) & (t[:, :4] <= 1)).all() and np.isin(t[:, 4], [0, 1, 2]).all()


def test_workers_do_not_change_the_batches(colours_dataset):
    paths, _ = colours_dataset
    s = AugmentSettings(width=64, height=64, **FULL, mosaic=True)
    inline = Loader(paths, 3, s, batch=3, seed=3, workers=0)
    with Loader(paths, 3, s, batch=3, seed=3, workers=2, prefetch=2) as parallel:
        for it in range(8):  # consecutive: prefetched batches are used
            xi, ti = inline.batch(it)
            xp, tp = parallel.batch(it)
            assert xp.shape == xi.shape and np.array_equal(xi, xp)
            assert all(np.array_equal(u, v) for u, v in zip(ti, tp))
        xi, _ = inline.batch(40, 96, 64)  # a size the prefetch did not guess
        xp, _ = parallel.batch(40, 96, 64)
        assert np.array_equal(xi, xp)


def test_each_epoch_is_a_permutation(colours_dataset):
    paths, colours = colours_dataset
    s = AugmentSettings(width=16, height=16, flip=False)  # no augmentation: each sample is its image
    loader = Loader(paths, 3, s, batch=4, seed=11)

    def identify(img):
        corner = np.rint(img[:, 14, 14] * 255)  # the solid part, away from the drawn square
        return min(range(12), key=lambda i: np.abs(corner - colours[i]).sum())

    epochs = []
    for e in range(3):
        order = []
        for it in range(3 * e, 3 * e + 3):  # 12 images / batch 4: 3 iterations per epoch
            x, _ = loader.batch(it)
            order += [identify(img) for img in x]
        assert sorted(order) == list(range(12))
        epochs.append(order)
    assert epochs[0] != epochs[1] != epochs[2]
    assert loader.epoch(6) == 2.0


def test_mixing_on_about_half_of_the_batches(colours_dataset):
    paths, _ = colours_dataset
    loader = Loader(paths, 3, AugmentSettings(width=32, height=32, mosaic=True), batch=1, seed=0)
    modes = [loader.mode(i) for i in range(400)]
    assert set(modes) == {"plain", "mosaic"} and 160 < modes.count("mosaic") < 240
    assert Loader(paths, 3, AugmentSettings(width=32, height=32), batch=1).mode(3) == "plain"


# ----- multi-scale -------------------------------------------------------------------------------------------
def test_multiscale_sizes_follow_darknets_rule():
    s = AugmentSettings(width=416, height=320, random=1.0, max_batches=2000)
    sizes = [input_size(i, s, seed=5) for i in range(2000)]
    max_size = (608, 480)  # roundl(1.4*416/32 + 1)*32, roundl(1.4*320/32 + 1)*32
    assert sizes[:10] == [max_size] * 10  # the first block: the largest size
    assert all(sz == max_size for sz in sizes[1910:])  # blocks starting after max_batches - 100
    for b in range(0, 2000, 10):  # one size per block of 10 iterations
        assert len(set(sizes[b : b + 10])) == 1
    allowed = set()
    for r in np.linspace(1 / 1.4, 1.4, 20001):
        w, h = (int(np.floor(r * v / 32 + 1 + 0.5)) * 32 for v in (416, 320))
        if r < 1 and (w > 416 or h > 320):
            w, h = 416, 320
        allowed.add((w, h))
    assert set(sizes) <= allowed and len(set(sizes)) >= 6
    assert any(w < 416 for w, _ in sizes) and any(w > 416 for w, _ in sizes)
    assert sizes == [input_size(i, s, seed=5) for i in range(2000)]
    assert sizes != [input_size(i, s, seed=6) for i in range(2000)]


def test_multiscale_coefficient_and_step():
    s = AugmentSettings(width=256, height=256, random=1.2, resize_step=64, max_batches=0)
    sizes = {input_size(i, s, seed=1) for i in range(0, 3000, 10)}
    assert input_size(0, s) == (384, 384)  # roundl(1.2*256/64 + 1)*64 = 6*64
    assert all(w % 64 == 0 and w == h and 256 <= w <= 384 for w, h in sizes)
    assert input_size(123, AugmentSettings(width=320, height=192)) == (320, 192)  # random=0: the cfg size


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_built_in_the_allocators_arrays_and_recycled_when_free(colours_dataset, workers):
    """With ``allocate`` every batch lies in an array the allocator returned (no other copy of it is made), equal
    to the plain loader's; an array is reused only once nobody holds a batch built in it, so a batch kept by the
    caller never changes, and steady use needs a bounded number of arrays."""
    paths, _ = colours_dataset
    s = AugmentSettings(width=64, height=64, **dict(FULL, random=0), mosaic=True)  # one size: prefetches are used
    made = []  # weak references: a reference held here would keep every array busy

    def allocate(shape):
        array = np.full(shape, np.nan, np.float32)
        made.append(weakref.ref(array))
        return array

    plain = Loader(paths, 3, s, batch=3, seed=3)
    with Loader(paths, 3, s, batch=3, seed=3, workers=workers, prefetch=2, allocate=allocate) as loader:
        kept, kept_copy = None, None
        for it in range(10):
            x, truths = loader.batch(it)
            want, want_truths = plain.batch(it)
            assert np.array_equal(x, want) and all(np.array_equal(u, v) for u, v in zip(truths, want_truths))
            assert any(a() is not None and np.shares_memory(x, a()) for a in made), "not in an allocated array"
            if it == 2:
                kept, kept_copy = x, x.copy()
            del x
        assert np.array_equal(kept, kept_copy)  # held by the caller: never reused meanwhile
        # the kept batch and the current one, and with workers the two prefetched ones
        assert len(made) <= (4 if workers else 2)
        assert loader._buffers.allocations == len(made)
        with pytest.raises(ValueError, match="float32"):
            Loader(paths, 3, s, batch=3, allocate=lambda shape: np.empty(shape, np.float64)).batch(0)
