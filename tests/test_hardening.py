"""Bounded inputs and errors with a place: decompression bombs, FIFOs and devices, YAML alias bombs, huge or odd
cfg values, full disks, absurd numbers that would turn into NaN, and the sha256 pins of the model registry.

Each test builds the hostile input itself (small files; a FIFO via os.mkfifo) and checks the typed error, that it
names the file (and the line where there is one), and that nothing hangs: reads that could block run in a thread
with a deadline.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

import pydarknet
from pydarknet.cli.main import main
from pydarknet.data import dataset, images, labels
from pydarknet.errors import CfgError, DataError, ImageError, NonFiniteError, TrainingError, WeightsError, WriteError
from pydarknet.hub import models
from pydarknet.utils import atomic

TINY_DETECTOR = """\
[net]
width=32
height=32
channels={channels}

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=21
size=1
stride=1
activation=linear

[yolo]
mask=0,1,2
anchors=8,8, 16,16, 32,32
classes=2
num=3
{yolo}
"""


def tiny_cfg(tmp_path, channels=3, yolo="", name="tiny.cfg"):
    path = tmp_path / name
    path.write_text(TINY_DETECTOR.format(channels=channels, yolo=yolo))
    return path


def finishes(fn, seconds=10.0):
    """Run fn() in a thread; return its result or exception, failing the test if it does not finish in time."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed back to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"did not finish within {seconds} s (blocked reading?)"
    return box.get("error", box.get("value"))


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    yield path
    # Unblock a reader left waiting on the FIFO (only if the code under test opened it).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def png_header_only(path, width, height):
    """A PNG whose header declares width x height RGB pixels but whose data is a few bytes (a decompression bomb's
    header: decoding it would allocate width*height*3 bytes)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# ----- 2. decompression bombs ---------------------------------------------------------------------------------
def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 13000, 13000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not be what the user sees
        t0 = time.perf_counter()
        with pytest.raises(ImageError) as info:
            images.load_image(bomb)
        elapsed = time.perf_counter() - t0
    message = str(info.value)
    assert str(bomb) in message and "13000x13000" in message and "169,000,000" in message
    assert "MAX_IMAGE_PIXELS" in message and "PYDARKNET_MAX_IMAGE_PIXELS" in message
    assert elapsed < 1.0  # refused from the header, nothing decoded


def test_pixel_cap_is_a_setting(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10), (1, 2, 3)).save(path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 199)
    with pytest.raises(ImageError, match="20x10 = 200 pixels"):
        images.load_image(path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 200)
    assert images.load_image(path)[0].shape == (10, 20, 3)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", None)
    assert images.load_image(path)[0].shape == (10, 20, 3)


def test_pixel_cap_above_pils_own_cap_is_honoured(tmp_path, monkeypatch):
    """When our cap allows an image PIL's fixed cap refuses, ours decides (and PIL's setting is put back)."""
    path = tmp_path / "img.png"
    Image.new("RGB", (20, 20), (9, 9, 9)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # PIL refuses above 2 * 50 pixels, warns above 50
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb, _ = images.load_image(path)
        assert images.image_size(path) == (20, 20)
    assert rgb.shape == (20, 20, 3) and Image.MAX_IMAGE_PIXELS == 50


def test_pixel_cap_from_the_environment(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 10)).save(path)
    code = (
        "import sys; from pydarknet.data import images\n"
        "try:\n    images.load_image(sys.argv[1]); print('loaded', images.MAX_IMAGE_PIXELS)\n"
        "except images.ImageError as e:\n    print('refused', images.MAX_IMAGE_PIXELS)\n"
    )
    for value, expected in (("100", "refused 100"), ("0", "loaded None"), ("", "loaded 67108864")):
        env = dict(os.environ, PYDARKNET_MAX_IMAGE_PIXELS=value)
        out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True)
        assert out.stdout.strip() == expected, out.stderr


def test_cli_detect_goes_on_after_a_bomb(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    weights = tmp_path / "tiny.weights"
    pydarknet.load(cfg, seed=1).save_weights(weights)
    bomb = png_header_only(tmp_path / "bomb.png", 13000, 13000)
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (50, 100, 150)).save(good)
    code = main(["detect", str(bomb), str(good), "--cfg", str(cfg), "--weights", str(weights)])
    out, err = capsys.readouterr()
    assert code == 1  # some inputs failed, the rest were processed
    assert f"{bomb}: the image is 13000x13000" in err
    assert f"{good}: Predicted in" in out


# ----- 3. unbounded reads -------------------------------------------------------------------------------------
def test_weights_from_a_fifo_or_a_device_are_refused(tmp_path, fifo):
    net = pydarknet.load(tiny_cfg(tmp_path))
    err = finishes(lambda: net.load_weights(fifo))
    assert isinstance(err, WeightsError) and "FIFO" in str(err) and str(fifo) in str(err)
    err = finishes(lambda: net.load_weights("/dev/zero"))
    assert isinstance(err, WeightsError) and "character device" in str(err)


def test_weights_size_is_checked_before_reading(tmp_path, monkeypatch):
    """A 6 GiB sparse file: refused from its size, without reading (read_bytes would need 6 GiB)."""
    net = pydarknet.load(tiny_cfg(tmp_path))
    big = tmp_path / "big.weights"
    with open(big, "wb") as f:
        f.write(struct.pack("<iiiQ", 0, 2, 5, 0))
        f.truncate(6 << 30)
    reads = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def read(self, n=-1):
            reads.append(n)
            assert 0 <= n <= 20, f"read({n}) of a 6 GiB file whose size alone says it does not fit"
            return self.f.read(n)

        def seek(self, *a):
            return self.f.seek(*a)

    def counting_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Counting(f) if str(path) == str(big) else f

    monkeypatch.setattr("builtins.open", counting_open)
    monkeypatch.setattr("io.open", counting_open)  # what pathlib's read_bytes opens with
    with pytest.raises(WeightsError, match="6,442,450,944 bytes") as info:
        net.load_weights(big)
    assert "too long" in str(info.value)
    assert reads and all(0 <= n <= 20 for n in reads), reads  # only the header was read


def test_images_from_a_fifo_are_refused(fifo):
    err = finishes(lambda: images.load_image(fifo))
    assert isinstance(err, ImageError) and "FIFO" in str(err) and str(fifo) in str(err)
    err = finishes(lambda: images.image_size(fifo))
    assert isinstance(err, ImageError) and "FIFO" in str(err)


def test_cfg_and_dataset_files_from_a_fifo_or_dev_zero_are_refused(tmp_path, fifo):
    for fn, kind in (
        (lambda p: pydarknet.load(p), CfgError),
        (dataset.read_data_file, DataError),
        (dataset.read_image_list, DataError),
        (dataset.read_names, DataError),
        (lambda p: dataset.read_data_yaml(p), DataError),
        (labels.read_yolo_labels, DataError),
    ):
        for source in (fifo, "/dev/zero"):
            err = finishes(lambda fn=fn, source=source: fn(source))
            assert isinstance(err, kind), (fn, source, err)
            assert str(source) in str(err) and "not a regular file" in str(err)
    boxes, problems = finishes(lambda: labels.parse_labels(fifo, 2))
    assert len(boxes) == 0 and "FIFO" in problems[0]


def test_oversized_text_files_are_refused_by_size(tmp_path, monkeypatch):
    from pydarknet.utils import files

    big = tmp_path / "huge.cfg"
    with open(big, "wb") as f:
        f.truncate(files.MAX_CFG_BYTES + 1)
    with pytest.raises(CfgError, match="more than the 8,388,608 bytes"):
        pydarknet.load(big)
    names = tmp_path / "huge.names"
    names.write_text("a\n" * 100)
    monkeypatch.setattr(files, "MAX_TEXT_BYTES", 100)
    with pytest.raises(DataError, match="huge.names: the names file is 200 bytes, more than the 100"):
        dataset.read_names(names)


# ----- 4. YAML alias bombs --------------------------------------------------------------------------------------
def test_yaml_alias_bomb_is_refused(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, 9):
        prev, cur = chr(ord("a") + k - 1), chr(ord("a") + k)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("names: *i")
    lines.append("train: .")
    bomb = tmp_path / "data.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 600
    t0 = time.perf_counter()
    with pytest.raises(DataError) as info:
        dataset.load_dataset(bomb)
    assert time.perf_counter() - t0 < 1.0
    assert str(info.value).startswith(f"{bomb}:1: YAML anchor &a is not allowed")


def test_yaml_alias_alone_is_refused_with_its_line(tmp_path):
    doc = tmp_path / "data.yaml"
    doc.write_text("names: [cat]\ntrain: .\nval: *x\n")
    with pytest.raises(DataError, match=r"data.yaml:3: YAML alias \*x is not allowed"):
        dataset.read_data_yaml(doc)


def test_deeply_nested_yaml_is_a_data_error(tmp_path):
    doc = tmp_path / "data.yaml"
    doc.write_text("names: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(DataError, match="nested too deeply"):
        dataset.read_data_yaml(doc)


# ----- 7. errors with a place -----------------------------------------------------------------------------------
def _cfg_with(tmp_path, key_value, name="bad.cfg"):
    path = tmp_path / name
    path.write_text(f"[net]\nwidth=32\nheight=32\nchannels=3\n\n[convolutional]\n{key_value}\nsize=1\n")
    return path


def test_huge_integer_is_a_cfg_error_with_its_line(tmp_path):
    path = _cfg_with(tmp_path, "filters=" + "9" * 5000)
    with pytest.raises(CfgError) as info:
        pydarknet.load(path)
    assert info.value.line == 7 and "out of range for an integer" in str(info.value)
    assert len(str(info.value)) < 400  # the 5,000 digits are not echoed


def test_long_line_is_not_echoed_whole(tmp_path):
    path = tmp_path / "long.cfg"
    path.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n" + "x" * 5_000_000 + "\n")
    with pytest.raises(CfgError) as info:
        pydarknet.load(path)
    assert info.value.line == 5 and "5,000,000 characters" in str(info.value)
    assert len(str(info.value)) < 400


def test_utf8_bom_is_accepted(tmp_path):
    path = tiny_cfg(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert pydarknet.load(path).input_shape == (3, 32, 32)


def test_fullwidth_digits_are_refused(tmp_path):
    for value in ("filters=\uff13\uff12", "filters=3\uff12"):
        with pytest.raises(CfgError, match="non-ASCII") as info:
            pydarknet.load(_cfg_with(tmp_path, value))
        assert info.value.line == 7
    path = tmp_path / "list.cfg"
    path.write_text(TINY_DETECTOR.format(channels=3, yolo="").replace("mask=0,1,2", "mask=0,\uff11,2"))
    with pytest.raises(CfgError, match="non-ASCII"):
        pydarknet.load(path)


def test_float_beyond_float32_is_refused(tmp_path):
    with pytest.raises(CfgError, match="out of range for a 32-bit float") as info:
        pydarknet.load(tiny_cfg(tmp_path, yolo="scale_x_y=1e39"))
    assert info.value.line == 24


def test_full_disk_names_the_file(tmp_path, monkeypatch):
    net = pydarknet.load(tiny_cfg(tmp_path))
    target = tmp_path / "out.weights"

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(WriteError) as info:
        net.save_weights(target)
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, pydarknet.DarknetError) and err.errno == errno.ENOSPC
    assert str(err) == f"cannot write {target}: {os.strerror(errno.ENOSPC)} (the disk is full)"
    assert not target.exists() and not list(tmp_path.glob(".out.weights.*"))  # nothing half-written left


def test_write_error_survives_pickling():
    import pickle

    err = WriteError("/x/y", OSError(errno.ENOSPC, "No space left on device"))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is WriteError and str(back) == str(err) and back.errno == errno.ENOSPC


@pytest.fixture
def train_files(tmp_path):
    from pydarknet.data.synthetic import generate

    data = generate(tmp_path / "ds", n_train=4, n_valid=2, size=32, classes=2, seed=0)
    cfg = tiny_cfg(tmp_path)
    text = cfg.read_text().replace("channels=3", "channels=3\nmax_batches=2\nbatch=2")
    cfg.write_text(text)
    return cfg, data


def test_backup_naming_a_file(train_files, tmp_path, capsys):
    cfg, data = train_files
    backup = tmp_path / "a_file"
    backup.write_text("x")
    code = main(["train", str(cfg), str(data), "--backup", str(backup), "--workers", "0", "-q"])
    _, err = capsys.readouterr()
    assert code == 2 and f"--backup {backup}: is a file, not a folder" in err
    from pydarknet.train.trainer import Trainer, TrainOptions

    with pytest.raises(TrainingError, match="is a file, not a folder"):
        Trainer(cfg, data, options=TrainOptions(backup=str(backup), quiet=True))


def test_negative_iterations_are_refused(train_files, tmp_path, capsys):
    cfg, data = train_files
    code = main(["train", str(cfg), str(data), "--iterations", "-5", "--backup", str(tmp_path / "b"), "-q"])
    _, err = capsys.readouterr()
    assert code == 2 and "--iterations -5: must be at least 1" in err
    assert not (tmp_path / "b").exists()


def test_training_csv_on_a_full_disk_names_the_file(train_files, tmp_path, monkeypatch):
    from pydarknet.train import trainer as trainer_mod

    cfg, data = train_files
    backup = tmp_path / "backup"
    t = trainer_mod.Trainer(cfg, data, options=trainer_mod.TrainOptions(backup=str(backup), quiet=True))

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, s):
            if s.startswith("1,"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(s)

        def flush(self):
            self.f.flush()

        def close(self):
            self.f.close()

    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda p, *a, **k: FullFile(real_open(p, *a, **k)) if str(p).endswith("results.csv") else real_open(p, *a, **k),
    )
    with pytest.raises(WriteError, match=f"cannot write {backup / 'results.csv'}: .*disk is full"):
        t.run(stop_after=1)


@pytest.mark.parametrize("channels", [1, 4])
def test_detect_on_grey_and_rgba_networks(tmp_path, channels):
    net = pydarknet.load(tiny_cfg(tmp_path, channels=channels), seed=3)
    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    res = net.detect(rgb, thresh=0.0)
    assert res.image.shape == (24, 40, 3)
    from pydarknet.inference.detect import Detector

    prepared = Detector(net).prepare(rgb)
    assert prepared.tensor.shape == (channels, 32, 32)
    if channels == 1:
        # OpenCV's own RGB->grey (what Darknet's IMREAD_GRAYSCALE gives), then Darknet's value/255 and resize
        cv2 = pytest.importorskip("cv2")
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        expected = images.resize_image(images.TO_FLOAT[grey][None], 32, 32)
        np.testing.assert_array_equal(prepared.tensor, expected)
    else:
        np.testing.assert_array_equal(prepared.tensor[3], np.ones((32, 32), np.float32))  # opaque alpha


def test_rgba_network_keeps_the_files_alpha(tmp_path):
    net = pydarknet.load(tiny_cfg(tmp_path, channels=4), seed=3)
    path = tmp_path / "a.png"
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(path)
    from pydarknet.inference.detect import Detector

    prepared = Detector(net).prepare(path)
    np.testing.assert_allclose(prepared.tensor[3], np.float32(128 / 255))
    assert prepared.image.shape == (32, 32, 3)


def test_network_with_two_channels_cannot_detect(tmp_path):
    net = pydarknet.load(tiny_cfg(tmp_path, channels=2))
    with pytest.raises(CfgError, match="channels=2") as info:
        net.detect(np.zeros((8, 8, 3), np.uint8))
    assert "1 (grey), 3 (RGB) or 4 (RGBA)" in str(info.value)


# ----- 8. absurd values -----------------------------------------------------------------------------------------
def test_softmax_temperature_zero_is_refused(tmp_path):
    path = tmp_path / "soft.cfg"
    path.write_text("[net]\nwidth=4\nheight=4\nchannels=3\n\n[softmax]\ntemperature=0\n")
    with pytest.raises(CfgError, match="temperature=0 must be greater than 0") as info:
        pydarknet.load(path)
    assert info.value.line == 7


def test_scale_x_y_must_be_positive(tmp_path):
    with pytest.raises(CfgError, match="scale_x_y=0 must be greater than 0"):
        pydarknet.load(tiny_cfg(tmp_path, yolo="scale_x_y=0"))


def test_dropout_probability_one_is_refused(tmp_path):
    path = tmp_path / "drop.cfg"
    path.write_text("[net]\nwidth=4\nheight=4\nchannels=3\n\n[dropout]\nprobability=1\n")
    with pytest.raises(CfgError, match=r"probability=1 must be in \[0, 1\)"):
        pydarknet.load(path)


def test_non_finite_detection_names_the_first_layer(tmp_path):
    net = pydarknet.load(tiny_cfg(tmp_path), seed=0)
    layer = net.layers[1]
    layer.params["weights"][:] = 3e38  # finite weights whose products overflow float32
    with pytest.raises(NonFiniteError) as info:
        net.detect(np.full((32, 32, 3), 255, np.uint8))
    message = str(info.value)
    assert "layer 1 [convolutional]" in message and f"{tmp_path / 'tiny.cfg'} line 13" in message


def test_box_sizes_that_overflow_are_an_error_not_inf(tmp_path):
    """Finite head outputs whose exp() overflows (w = 1000) would give infinite boxes and NaN in NMS."""
    net = pydarknet.load(tiny_cfg(tmp_path), seed=0)
    head = net.layers[1].params
    head["weights"][:] = 0
    biases = np.zeros(21, np.float32)
    for anchor in range(3):
        biases[anchor * 7 + 2] = 1000.0  # width output
        biases[anchor * 7 + 4] = 10.0  # objectness: logistic(10) ~ 1
        biases[anchor * 7 + 5] = 10.0  # class 0
    head["biases"][:] = biases
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warnings either
        with pytest.raises(NonFiniteError, match=r"layer 2 \[yolo\] .* line 19\) decodes to boxes that are not finite"):
            net.detect(np.zeros((32, 32, 3), np.uint8))


def test_negative_rolling_variance_in_weights(tmp_path):
    cfg = tmp_path / "bn.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nbatch_normalize=1\nfilters=4\nsize=1\n")
    net = pydarknet.load(cfg)
    net.layers[0].params["rolling_variance"][:] = [1, 1, -0.5, 1]
    path = tmp_path / "bn.weights"
    net.save_weights(path)
    with pytest.raises(WeightsError, match="rolling_variance of layer 0 .*cfg line 6.* negative value") as info:
        pydarknet.load(cfg, path)
    assert str(path) in str(info.value)


# ----- 9. sha256 pins -------------------------------------------------------------------------------------------
def test_big_models_with_a_published_sha256_are_pinned():
    assert models.get("yolov3").sha256 == "523e4e69e1d015393a1b0a441cef1d9c7659e3eb2d7e15f793f060a21b32f297"
    assert models.get("yolov4").sha256 == "e8a4f6c62188738d86dc6898d82724ec0964d0eb9d2ae0f0a9d53d65d108d562"


def test_cached_file_of_the_right_size_but_wrong_content(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYDARKNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "expected_size", lambda name: 1000)
    for name in ("yolov4", "p5"):
        dest = models.weights_path(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"\0" * 1000)
    assert models.cache_state("yolov4") == "damaged" and not models.is_cached("yolov4")
    with pytest.raises(models.ModelError, match="sha256 .* not the published e8a4f6c6"):
        models.fetch("yolov4", quiet=True)
    # an unpinned model: used, but said to be unverified
    assert models.cache_state("p5") == "unverified" and models.is_cached("p5")
    assert models.fetch("p5") == models.weights_path("p5")
    assert "unverified" in capsys.readouterr().err


# ----- found by tools/fuzz.py -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_path", ["x" * 5000, "~no_such_user_pydarknet/list.txt", "a/" + "b" * 300 + "/c.txt"])
def test_dataset_paths_the_os_refuses_are_data_errors(tmp_path, bad_path):
    """A path too long for the OS (ENAMETOOLONG) or naming an unknown user's home made pathlib raise."""
    data = tmp_path / "obj.data"
    data.write_text(f"classes = 1\ntrain = {bad_path}\n")
    with pytest.raises(DataError, match="no such file"):
        dataset.load_dataset(data)
    doc = tmp_path / "data.yaml"
    doc.write_text(f"names: [a]\ntrain: {bad_path}\n")
    with pytest.raises(DataError, match="no such file"):
        dataset.load_dataset(doc)


def test_yaml_integer_too_long_to_convert(tmp_path):
    doc = tmp_path / "data.yaml"
    doc.write_text("names: [a]\nnc: " + "9" * 5000 + "\ntrain: .\n")
    with pytest.raises(DataError, match="data.yaml: a value cannot be read"):
        dataset.read_data_yaml(doc)


def test_absurd_class_counts_are_refused_at_once(tmp_path):
    """classes=99999999999999999999 and no names file made a list of that many default names (a hang)."""
    (tmp_path / "train.txt").write_text("a.jpg\n")
    data = tmp_path / "obj.data"
    for value, message in (
        ("99999999999999999999", "not a number of classes"),
        ("100001", "out of range"),
        ("--1", "not a number of classes"),  # int() raised a plain ValueError
        ("\uff13", "not a number of classes"),
    ):
        data.write_text(f"classes = {value}\ntrain = train.txt\n")
        err = finishes(lambda: dataset.load_dataset(data), seconds=5)
        assert isinstance(err, DataError) and message in str(err)
    doc = tmp_path / "data.yaml"
    doc.write_text("nc: 99999999999\ntrain: train.txt\n")
    err = finishes(lambda: dataset.load_dataset(doc), seconds=5)
    assert isinstance(err, DataError) and "is not a positive number of classes (at most 100000)" in str(err)


def test_png_chunk_declaring_2_gib_under_a_memory_limit(tmp_path):
    """PIL reserved the declared IDAT length (2 GiB) before reading: a MemoryError under an address-space limit."""
    import io

    buf = io.BytesIO()
    Image.new("RGBA", (16, 12), (1, 2, 3, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT") - 4
    data[idat : idat + 4] = struct.pack(">I", 0x80000317)
    path = tmp_path / "big_chunk.png"
    path.write_bytes(bytes(data))
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))\n"
        "from pydarknet.data import images\n"
        "try:\n    images.load_image(sys.argv[1]); print('ok')\n"
        "except images.ImageError as e:\n    print('ImageError')\n"
        "except MemoryError:\n    print('MemoryError')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert out.stdout.strip() in ("ok", "ImageError"), out.stdout + out.stderr


def test_tiff_with_a_rational_strip_offset_is_an_image_error(tmp_path):
    """PIL's TIFF reader raised TypeError on a StripOffsets tag stored as a RATIONAL."""
    import io

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (5, 6, 7)).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack_from("<H", data, entry)[0] == 273:  # StripOffsets
            struct.pack_into("<H", data, entry + 2, 5)  # type RATIONAL
    path = tmp_path / "rational.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="rational.tif: cannot read image"):
        images.load_image(path)


def test_cli_source_name_too_long_for_the_os(capsys):
    code = main(["detect", "x" * 5000])
    _, err = capsys.readouterr()
    assert code == 2 and "no such file or folder" in err


def test_a_list_used_for_train_and_valid_is_read_once(tmp_path, monkeypatch):
    """Resolving a long list of missing entries is the slow part of loading a .data: do it once, not twice."""
    (tmp_path / "train.txt").write_text("".join(f"missing/{k}.jpg\n" for k in range(100)))
    data = tmp_path / "obj.data"
    data.write_text("classes = 1\ntrain = train.txt\nvalid = train.txt\n")
    calls = []
    real = dataset.read_image_list
    monkeypatch.setattr(dataset, "read_image_list", lambda *a, **k: calls.append(a) or real(*a, **k))
    ds = dataset.load_dataset(data)
    assert len(calls) == 1 and ds.train == ds.valid and len(ds.train) == 100
    assert ds.train is not ds.valid
