"""Darknet `.weights` files: exact layout, bit-exact round trips, partial files and every kind of bad file.

Layout (Darknet parser.c): int32 major, minor, revision; `seen` as uint64 when major*10+minor >= 2 (else
uint32); then float32 tensors in layer order. conv+BN: biases, scales, rolling_mean, rolling_variance, weights;
conv: biases, weights; connected: biases, weights, then (BN) scales, rolling_mean, rolling_variance. A header
with major or minor > 1000 marks [connected] matrices stored transposed ([in][out]).
"""

import struct
from pathlib import Path

import numpy as np
import pytest

import pydarknet

CFG_DIR = Path(__file__).resolve().parents[1] / "cfg"
TINY = CFG_DIR / "yolov4-tiny.cfg"

# conv+BN 3->4 (3x3), conv 4->2 (1x1), maxpool 8x8->4x4, connected+BN 32->5, connected 5->3.
SMALL_CFG = """\
[net]
width=8
height=8
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=2
size=1
stride=1
activation=linear

[maxpool]
size=2
stride=2

[connected]
output=5
batch_normalize=1
activation=linear

[connected]
output=3
activation=linear
"""

# Tensors of SMALL_CFG in file order: (layer, name, shape).
SMALL_LAYOUT = [
    (0, "biases", (4,)),
    (0, "scales", (4,)),
    (0, "rolling_mean", (4,)),
    (0, "rolling_variance", (4,)),
    (0, "weights", (4, 3, 3, 3)),
    (1, "biases", (2,)),
    (1, "weights", (2, 4, 1, 1)),
    (3, "biases", (5,)),
    (3, "weights", (5, 32)),
    (3, "scales", (5,)),
    (3, "rolling_mean", (5,)),
    (3, "rolling_variance", (5,)),
    (4, "biases", (3,)),
    (4, "weights", (3, 5)),
]
SMALL_FLOATS = sum(int(np.prod(shape)) for _, _, shape in SMALL_LAYOUT)  # 332


def write_cfg(tmp_path, text, name="net.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def small_cfg(tmp_path):
    return write_cfg(tmp_path, SMALL_CFG, "small.cfg")


def fill_distinct(net, seed=0):
    """Give every parameter a distinct, non-trivial value (positive variances), through the layer views."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        for name, view in layer.params.items():
            values = rng.standard_normal(view.shape).astype(np.float32)
            if name == "rolling_variance":
                values = np.abs(values) + 0.1
            view[...] = values
    return net


def random_tensors(rng, layout):
    """Standard-normal tensors for ``layout`` ((index, name, shape) rows), variances made positive as a real
    file's are (a negative rolling_variance is refused on load)."""
    out = []
    for _, name, shape in layout:
        values = rng.standard_normal(shape).astype(np.float32)
        out.append(np.abs(values) + np.float32(0.1) if name == "rolling_variance" else values)
    return out


def params_bytes(net):
    return np.array(net.params, copy=True).tobytes()


def read_header(path):
    data = Path(path).read_bytes()
    major, minor, revision = struct.unpack_from("<iii", data, 0)
    if major * 10 + minor >= 2:
        return (major, minor, revision), struct.unpack_from("<Q", data, 12)[0], 20
    return (major, minor, revision), struct.unpack_from("<I", data, 12)[0], 16


def digits(text):
    """The message with thousands separators removed, so byte counts can be found either way they are written."""
    out = []
    for i, ch in enumerate(text):
        if ch in ",_ '" and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit():
            continue
        out.append(ch)
    return "".join(out)


def expect_weights_error(net, path, *fragments, partial=False, byte_counts=()):
    before = params_bytes(net)
    with pytest.raises(pydarknet.WeightsError) as info:
        net.load_weights(path, partial=partial)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, pydarknet.DarknetError)
    message = str(err)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    for count in byte_counts:
        assert str(count) in digits(message), f"{count} not in: {message}"
    return err, before


# ----- exact layout ------------------------------------------------------------------------------------------


def test_small_cfg_tensor_shapes(small_cfg):
    net = pydarknet.load(small_cfg)
    shapes = [(l.index, name, v.shape) for l in net.layers for name, v in l.params.items()]
    assert sorted(shapes) == sorted(SMALL_LAYOUT)
    assert net.params.size == SMALL_FLOATS
    assert net.params.dtype == np.float32


def test_file_layout_is_byte_exact(small_cfg, tmp_path):
    net = pydarknet.load(small_cfg)
    # Each tensor gets values that encode (tensor number, element number), so any misplacement shows.
    expected = []
    for k, (index, name, shape) in enumerate(SMALL_LAYOUT):
        values = (1000 * (k + 1) + np.arange(int(np.prod(shape)), dtype=np.float32)).reshape(shape)
        net.layers[index].params[name][...] = values
        expected.append(values)
    net.seen = 123456789
    path = tmp_path / "small.weights"
    net.save_weights(path)

    data = path.read_bytes()
    assert len(data) == 20 + 4 * SMALL_FLOATS
    assert struct.unpack_from("<iiiQ", data, 0) == (0, 2, 5, 123456789)
    body = np.frombuffer(data, dtype="<f4", offset=20)
    position = 0
    for (index, name, shape), values in zip(SMALL_LAYOUT, expected):
        n = values.size
        np.testing.assert_array_equal(
            body[position : position + n].reshape(shape), values, err_msg=f"layer {index} {name}"
        )
        position += n
    assert position == body.size
    # net.params is the same buffer, in file order.
    assert np.asarray(net.params).astype("<f4").tobytes() == data[20:]


def test_hand_written_file_loads_into_the_right_tensors(small_cfg, tmp_path):
    rng = np.random.default_rng(5)
    tensors = random_tensors(rng, SMALL_LAYOUT)
    path = tmp_path / "hand.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 2, 5, 4242) + b"".join(t.astype("<f4").tobytes() for t in tensors))
    net = pydarknet.load(small_cfg, path)
    assert net.seen == 4242
    for (index, name, shape), values in zip(SMALL_LAYOUT, tensors):
        np.testing.assert_array_equal(net.layers[index].params[name], values, err_msg=f"layer {index} {name}")


def test_load_via_pydarknet_load_and_load_weights_agree(small_cfg, tmp_path):
    src = fill_distinct(pydarknet.load(small_cfg, seed=1))
    path = tmp_path / "a.weights"
    src.save_weights(path)
    a = pydarknet.load(small_cfg, path, seed=2)
    b = pydarknet.load(small_cfg, seed=3)
    b.load_weights(path)
    assert params_bytes(a) == params_bytes(b) == params_bytes(src)


# ----- round trips -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seen", [0, 1, 2**32 - 1, 2**32 + 12345, 2**63 + 7])
def test_round_trip_0_2_5_with_64_bit_seen(small_cfg, tmp_path, seen):
    src = fill_distinct(pydarknet.load(small_cfg, seed=1))
    src.seen = seen
    path = tmp_path / "v025.weights"
    src.save_weights(path, version=(0, 2, 5))
    assert read_header(path) == ((0, 2, 5), seen, 20)
    assert path.stat().st_size == 20 + 4 * SMALL_FLOATS

    dst = pydarknet.load(small_cfg, seed=2)
    assert params_bytes(dst) != params_bytes(src)
    dst.load_weights(path)
    assert params_bytes(dst) == params_bytes(src)
    assert dst.seen == seen
    # Saving again gives the identical file.
    again = tmp_path / "again.weights"
    dst.save_weights(again)
    assert again.read_bytes() == path.read_bytes()


def test_round_trip_keeps_nan_free_special_values(small_cfg, tmp_path):
    src = pydarknet.load(small_cfg, seed=1)
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 3.4028235e38, -3.4028235e38, 1.17549435e-38, 1.0], dtype=np.float32)
    src.params[:] = np.resize(special, src.params.size)
    for layer in src.layers:  # a negative variance is refused on load (test_hardening); the rest stays special
        if "rolling_variance" in layer.params:
            layer.params["rolling_variance"][...] = np.abs(layer.params["rolling_variance"])
    path = tmp_path / "special.weights"
    src.save_weights(path)
    dst = pydarknet.load(small_cfg, path, seed=2)
    assert params_bytes(dst) == params_bytes(src)  # bit-exact, including -0.0 and denormals


@pytest.mark.parametrize("version", [(0, 1, 0), (0, 0, 0)])
def test_round_trip_old_header_with_32_bit_seen(small_cfg, tmp_path, version):
    src = fill_distinct(pydarknet.load(small_cfg, seed=1))
    src.seen = 3_000_000_000  # fits in uint32
    path = tmp_path / "old.weights"
    src.save_weights(path, version=version)
    data = path.read_bytes()
    assert len(data) == 16 + 4 * SMALL_FLOATS  # 16-byte header
    assert struct.unpack_from("<iiiI", data, 0) == (*version, 3_000_000_000)
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", offset=16), np.asarray(src.params))

    dst = pydarknet.load(small_cfg, seed=2)
    dst.load_weights(path)
    assert params_bytes(dst) == params_bytes(src)
    assert dst.seen == 3_000_000_000
    assert tuple(dst.version) == version


def test_hand_written_old_header_file(small_cfg, tmp_path):
    floats = np.concatenate(random_tensors(np.random.default_rng(3), SMALL_LAYOUT), axis=None).astype("<f4")
    path = tmp_path / "yolov2-era.weights"
    path.write_bytes(struct.pack("<iiiI", 0, 1, 0, 64000) + floats.tobytes())
    net = pydarknet.load(small_cfg, path)
    assert net.seen == 64000
    np.testing.assert_array_equal(np.asarray(net.params), floats)
    # The same floats behind a 20-byte header would be misread by 4 bytes: this file is not that one.
    assert path.stat().st_size == 16 + 4 * SMALL_FLOATS


def test_old_header_file_with_a_20_byte_header_is_refused(small_cfg, tmp_path):
    """A 0.1.x header followed by a 64-bit seen: 4 bytes too many for the network."""
    floats = np.zeros(SMALL_FLOATS, "<f4")
    path = tmp_path / "wrong.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 1, 0, 0) + floats.tobytes())
    net = pydarknet.load(small_cfg)
    expect_weights_error(net, path, byte_counts=(20 + 4 * SMALL_FLOATS, 16 + 4 * SMALL_FLOATS))


@pytest.mark.parametrize("version", [(1001, 2, 0), (0, 1001, 0), (2000, 2000, 5)])
def test_round_trip_transposed_connected(small_cfg, tmp_path, version):
    src = fill_distinct(pydarknet.load(small_cfg, seed=1))
    path = tmp_path / "transposed.weights"
    src.save_weights(path, version=version)
    data = path.read_bytes()
    header_version, seen, hsize = read_header(path)
    assert header_version == version and hsize == 20
    assert len(data) == 20 + 4 * SMALL_FLOATS
    body = np.frombuffer(data, "<f4", offset=20)

    # Walk the file: conv tensors as usual, connected weights stored as [in][out].
    position = 0
    for index, name, shape in SMALL_LAYOUT:
        n = int(np.prod(shape))
        stored = body[position : position + n]
        actual = src.layers[index].params[name]
        if name == "weights" and src.layers[index].type == "connected":
            out_n, in_n = shape
            np.testing.assert_array_equal(stored.reshape(in_n, out_n), actual.T, err_msg=f"layer {index}")
            assert not np.array_equal(stored, actual.reshape(-1))
        else:
            np.testing.assert_array_equal(stored.reshape(shape), actual, err_msg=f"layer {index} {name}")
        position += n

    dst = pydarknet.load(small_cfg, seed=2)
    dst.load_weights(path)
    assert params_bytes(dst) == params_bytes(src)
    assert tuple(dst.version) == version


def test_transposed_file_written_by_hand(small_cfg, tmp_path):
    """A file with the transposed flag loads its connected matrices transposed, and nothing else."""
    rng = np.random.default_rng(9)
    tensors = random_tensors(rng, SMALL_LAYOUT)
    stored = [
        t.T.copy() if (name == "weights" and index in (3, 4)) else t
        for (index, name, _), t in zip(SMALL_LAYOUT, tensors)
    ]
    path = tmp_path / "t.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 1001, 0, 0) + b"".join(s.astype("<f4").tobytes() for s in stored))
    net = pydarknet.load(small_cfg, path)
    for (index, name, _), values in zip(SMALL_LAYOUT, tensors):
        np.testing.assert_array_equal(net.layers[index].params[name], values, err_msg=f"layer {index} {name}")

    # The same bytes with a normal header give the untransposed (different) matrices.
    normal = tmp_path / "n.weights"
    normal.write_bytes(struct.pack("<iiiQ", 0, 2, 0, 0) + path.read_bytes()[20:])
    other = pydarknet.load(small_cfg, normal)
    np.testing.assert_array_equal(other.layers[0].params["weights"], net.layers[0].params["weights"])
    assert not np.array_equal(other.layers[3].params["weights"], net.layers[3].params["weights"])


def test_forward_is_unchanged_by_a_round_trip(small_cfg, tmp_path):
    src = fill_distinct(pydarknet.load(small_cfg, seed=1))
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    expected = src.forward(x)[0].copy()
    path = tmp_path / "f.weights"
    src.save_weights(path, version=(0, 1001, 0))
    dst = pydarknet.load(small_cfg, path, seed=2)
    np.testing.assert_array_equal(dst.forward(x)[0], expected)


def test_loading_into_a_network_that_already_ran_uses_the_new_weights(small_cfg, tmp_path):
    """Weights loaded after a forward pass (which may cache fused BN parameters) take effect."""
    src = fill_distinct(pydarknet.load(small_cfg, seed=1), seed=1)
    path = tmp_path / "new.weights"
    src.save_weights(path)
    x = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    net = fill_distinct(pydarknet.load(small_cfg, seed=2), seed=2)
    old = net.forward(x)[0].copy()
    net.load_weights(path)
    new = net.forward(x)[0]
    np.testing.assert_array_equal(new, src.forward(x)[0])
    assert not np.array_equal(new, old)


def test_save_does_not_leave_temporary_files(small_cfg, tmp_path):
    net = pydarknet.load(small_cfg)
    out = tmp_path / "out"
    out.mkdir()
    net.save_weights(out / "a.weights")
    net.save_weights(out / "a.weights")  # overwrite
    assert sorted(p.name for p in out.iterdir()) == ["a.weights"]


# ----- partial files (yolov4-tiny.conv.29) -------------------------------------------------------------------

TINY_FULL_BYTES = 24_251_276
TINY_PARTIAL_BYTES = 19_789_716


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    net = pydarknet.load(TINY, seed=11)
    fill_distinct(net, seed=11)
    net.seen = 64 * 500500
    full, partial = directory / "yolov4-tiny.weights", directory / "yolov4-tiny.conv.29"
    net.save_weights(full)
    net.save_weights(partial, cutoff=29)
    return net, full, partial


def test_partial_file_size(tiny_files):
    _, full, partial = tiny_files
    assert full.stat().st_size == TINY_FULL_BYTES
    assert partial.stat().st_size == TINY_PARTIAL_BYTES


def test_partial_file_is_a_prefix_of_the_full_file(tiny_files):
    _, full, partial = tiny_files
    full_data, part_data = full.read_bytes(), partial.read_bytes()
    assert struct.unpack_from("<iiiQ", full_data, 0) == (0, 2, 5, 64 * 500500)
    assert struct.unpack_from("<iiiQ", part_data, 0) == (0, 2, 5, 0)  # seen reset, like `darknet partial`
    assert part_data[20:] == full_data[20:TINY_PARTIAL_BYTES]


def test_partial_load_fills_exactly_the_first_layers(tiny_files):
    src, _, partial = tiny_files
    dst = pydarknet.load(TINY, seed=99)
    dst.seen = 777
    before = {l.index: {k: v.copy() for k, v in l.params.items()} for l in dst.layers}
    dst.load_weights(partial, partial=True)
    assert dst.seen == 0
    for layer in dst.layers:
        for name, value in layer.params.items():
            if layer.index < 29:
                expected = src.layers[layer.index].params[name]
            else:
                expected = before[layer.index][name]
            assert value.tobytes() == expected.tobytes(), f"layer {layer.index} {name}"
    # Layers from 29 on really had something to keep (the test is not vacuous).
    assert any(l.params for l in dst.layers[29:])


def test_partial_load_via_pydarknet_load(tiny_files):
    src, _, partial = tiny_files
    net = pydarknet.load(TINY, partial, partial=True, seed=5)
    assert (
        np.asarray(net.params)[: (TINY_PARTIAL_BYTES - 20) // 4].tobytes()
        == np.asarray(src.params)[: (TINY_PARTIAL_BYTES - 20) // 4].tobytes()
    )


def test_partial_file_without_partial_flag_is_refused(tiny_files):
    _, _, partial = tiny_files
    net = pydarknet.load(TINY, seed=3)
    err, before = expect_weights_error(net, partial, byte_counts=(TINY_PARTIAL_BYTES, TINY_FULL_BYTES))
    assert params_bytes(net) == before
    assert "partial" in str(err)


def test_full_file_with_partial_flag_loads_everything(tiny_files):
    src, full, _ = tiny_files
    net = pydarknet.load(TINY, seed=4)
    net.load_weights(full, partial=True)
    assert params_bytes(net) == params_bytes(src)
    assert net.seen == 64 * 500500


@pytest.mark.parametrize("cutoff", [0, 1, 2, 4])
def test_partial_cutoffs_on_small_net(small_cfg, tmp_path, cutoff):
    src = fill_distinct(pydarknet.load(small_cfg, seed=1))
    src.seen = 99
    path = tmp_path / f"small.conv.{cutoff}"
    src.save_weights(path, cutoff=cutoff)
    floats = sum(int(np.prod(s)) for i, _, s in SMALL_LAYOUT if i < cutoff)
    assert path.stat().st_size == 20 + 4 * floats
    assert read_header(path)[1] == 0
    dst = pydarknet.load(small_cfg, seed=2)
    untouched = params_bytes(dst)
    dst.load_weights(path, partial=True)
    got = np.asarray(dst.params)
    assert got[:floats].tobytes() == np.asarray(src.params)[:floats].tobytes()
    assert got[floats:].tobytes() == untouched[4 * floats :]


def test_partial_cutoff_at_the_end_equals_the_full_file_except_seen(small_cfg, tmp_path):
    src = fill_distinct(pydarknet.load(small_cfg, seed=1))
    src.seen = 5
    src.save_weights(tmp_path / "full.weights")
    src.save_weights(tmp_path / "cut.weights", cutoff=len(src.layers))
    full, cut = (tmp_path / "full.weights").read_bytes(), (tmp_path / "cut.weights").read_bytes()
    assert cut[20:] == full[20:] and read_header(tmp_path / "cut.weights")[1] == 0


@pytest.mark.parametrize("cutoff", [-1, 6, 100])
def test_bad_cutoff(small_cfg, tmp_path, cutoff):
    net = pydarknet.load(small_cfg)
    with pytest.raises(ValueError):
        net.save_weights(tmp_path / "x.weights", cutoff=cutoff)
    assert not (tmp_path / "x.weights").exists()


def test_partial_file_cut_mid_layer_is_refused_even_with_partial(small_cfg, tmp_path):
    src = fill_distinct(pydarknet.load(small_cfg, seed=1))
    path = tmp_path / "cut.weights"
    src.save_weights(path, cutoff=2)
    data = path.read_bytes()
    path.write_bytes(data[:-8])  # two floats short of the end of layer 1
    net = pydarknet.load(small_cfg, seed=2)
    expect_weights_error(net, path, partial=True)


# ----- bad files ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_file(small_cfg, tmp_path):
    src = fill_distinct(pydarknet.load(small_cfg, seed=1))
    path = tmp_path / "small.weights"
    src.save_weights(path)
    return path


FULL_SMALL_BYTES = 20 + 4 * SMALL_FLOATS


@pytest.mark.parametrize(
    "keep",
    [FULL_SMALL_BYTES - 4, FULL_SMALL_BYTES - 400, 20 + 4 * 10, 20 + 4 * 300],
    ids=["last-float", "100-floats-short", "inside-layer0", "inside-layer3"],
)
@pytest.mark.parametrize("partial", [False, True])
def test_truncated_mid_layer(small_cfg, small_file, keep, partial):
    small_file.write_bytes(small_file.read_bytes()[:keep])
    net = pydarknet.load(small_cfg, seed=2)
    counts = () if partial else (keep, FULL_SMALL_BYTES)
    expect_weights_error(net, small_file, partial=partial, byte_counts=counts)


@pytest.mark.parametrize("keep", [0, 1, 4, 11, 12, 15, 19])
@pytest.mark.parametrize("partial", [False, True])
def test_truncated_inside_the_header(small_cfg, small_file, keep, partial):
    small_file.write_bytes(small_file.read_bytes()[:keep])
    net = pydarknet.load(small_cfg, seed=2)
    expect_weights_error(net, small_file, partial=partial)


def test_empty_file(small_cfg, tmp_path):
    path = tmp_path / "empty.weights"
    path.write_bytes(b"")
    net = pydarknet.load(small_cfg)
    expect_weights_error(net, path)
    with pytest.raises(pydarknet.WeightsError, match="empty.weights"):
        pydarknet.load(small_cfg, path)


@pytest.mark.parametrize("extra", [4, 400, 4 * SMALL_FLOATS])
@pytest.mark.parametrize("partial", [False, True])
def test_oversized_file(small_cfg, small_file, extra, partial):
    small_file.write_bytes(small_file.read_bytes() + b"\0" * extra)
    net = pydarknet.load(small_cfg, seed=2)
    expect_weights_error(net, small_file, partial=partial, byte_counts=(FULL_SMALL_BYTES + extra, FULL_SMALL_BYTES))


@pytest.mark.parametrize("extra", [1, 2, 3])
def test_body_not_a_multiple_of_four_bytes(small_cfg, small_file, extra):
    data = small_file.read_bytes()
    net = pydarknet.load(small_cfg, seed=2)
    small_file.write_bytes(data + b"\0" * extra)  # too long, odd size
    expect_weights_error(net, small_file)
    small_file.write_bytes(data[:-4] + b"\0" * extra)  # too short, odd size
    expect_weights_error(net, small_file)
    small_file.write_bytes(data[: 20 + 4 * 24] + b"\0" * extra)  # a partial file with a ragged end
    expect_weights_error(net, small_file, partial=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 20, SMALL_FLOATS - 1], ids=["conv-bias", "conv-weights", "last"])
def test_non_finite_weights(small_cfg, small_file, bad, where):
    data = bytearray(small_file.read_bytes())
    struct.pack_into("<f", data, 20 + 4 * where, bad)
    small_file.write_bytes(bytes(data))
    net = pydarknet.load(small_cfg, seed=2)
    err, _ = expect_weights_error(net, small_file)
    assert "nan" in str(err).lower() or "inf" in str(err).lower() or "finite" in str(err).lower()


def test_failed_load_leaves_the_network_unchanged(small_cfg, small_file):
    """A file refused for NaN must not leave half its values (or the NaN) in the network."""
    data = bytearray(small_file.read_bytes())
    struct.pack_into("<f", data, 20 + 4 * (SMALL_FLOATS - 1), np.nan)
    small_file.write_bytes(bytes(data))
    net = pydarknet.load(small_cfg, seed=2)
    net.seen = 31
    _, before = expect_weights_error(net, small_file)
    assert params_bytes(net) == before
    assert np.all(np.isfinite(net.params))
    assert net.seen == 31


def test_failed_partial_load_leaves_the_network_unchanged(small_cfg, small_file):
    small_file.write_bytes(small_file.read_bytes()[: 20 + 4 * 300])  # ends inside layer 3
    net = pydarknet.load(small_cfg, seed=2)
    _, before = expect_weights_error(net, small_file, partial=True)
    assert params_bytes(net) == before


def test_missing_file(small_cfg, tmp_path):
    path = tmp_path / "nope" / "missing.weights"
    net = pydarknet.load(small_cfg)
    expect_weights_error(net, path)
    with pytest.raises(pydarknet.WeightsError) as info:
        pydarknet.load(small_cfg, path)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(small_cfg, tmp_path):
    net = pydarknet.load(small_cfg)
    expect_weights_error(net, tmp_path)
    expect_weights_error(net, tmp_path, partial=True)


def test_negative_header_version_is_refused(small_cfg, small_file):
    data = bytearray(small_file.read_bytes())
    struct.pack_into("<i", data, 0, -1)
    small_file.write_bytes(bytes(data))
    expect_weights_error(pydarknet.load(small_cfg), small_file)


def test_weights_of_another_network_are_refused(small_cfg, tmp_path):
    other = write_cfg(tmp_path, SMALL_CFG.replace("output=3", "output=4"), "other.cfg")
    path = tmp_path / "other.weights"
    pydarknet.load(other).save_weights(path)
    expect_weights_error(pydarknet.load(small_cfg), path, byte_counts=(FULL_SMALL_BYTES + 4 * 6, FULL_SMALL_BYTES))


# ----- dontload / dontloadscales -----------------------------------------------------------------------------


def test_dontload_layer_is_not_in_the_file(tmp_path):
    cfg = write_cfg(tmp_path, SMALL_CFG.replace("filters=2\n", "filters=2\ndontload=1\n"))
    net = pydarknet.load(cfg, seed=2)
    # The file holds every tensor except those of layer 1 (biases 2 + weights 8).
    rng = np.random.default_rng(1)
    present = [(i, n, s) for i, n, s in SMALL_LAYOUT if i != 1]
    tensors = random_tensors(rng, present)
    path = tmp_path / "dontload.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 2, 5, 0) + b"".join(t.astype("<f4").tobytes() for t in tensors))
    assert path.stat().st_size == FULL_SMALL_BYTES - 4 * 10

    layer1 = {k: v.copy() for k, v in net.layers[1].params.items()}
    net.load_weights(path)
    for (index, name, _), values in zip(present, tensors):
        np.testing.assert_array_equal(net.layers[index].params[name], values, err_msg=f"layer {index} {name}")
    for name, value in net.layers[1].params.items():
        assert value.tobytes() == layer1[name].tobytes()

    # A file that does contain layer 1 does not fit.
    full = tmp_path / "full.weights"
    pydarknet.load(write_cfg(tmp_path, SMALL_CFG, "plain.cfg")).save_weights(full)
    expect_weights_error(net, full, byte_counts=(FULL_SMALL_BYTES, FULL_SMALL_BYTES - 40))


def test_dontload_round_trip(tmp_path):
    cfg = write_cfg(tmp_path, SMALL_CFG.replace("filters=4\n", "filters=4\ndontload=1\n"))
    src = fill_distinct(pydarknet.load(cfg, seed=1))
    path = tmp_path / "rt.weights"
    src.save_weights(path)
    dst = pydarknet.load(cfg, seed=2)
    layer0 = params_bytes(dst)
    dst.load_weights(path)
    n0 = 4 * 4 + 108
    assert np.asarray(dst.params)[n0:].tobytes() == np.asarray(src.params)[n0:].tobytes()
    assert np.asarray(dst.params)[:n0].tobytes() == layer0[: 4 * n0]


def test_conv_dontloadscales_file_has_no_bn_triplet(tmp_path):
    cfg = write_cfg(
        tmp_path,
        SMALL_CFG.replace("batch_normalize=1\nfilters=4\n", "batch_normalize=1\nfilters=4\ndontloadscales=1\n"),
    )
    net = pydarknet.load(cfg, seed=2)
    present = [
        (i, n, s) for i, n, s in SMALL_LAYOUT if not (i == 0 and n in ("scales", "rolling_mean", "rolling_variance"))
    ]
    rng = np.random.default_rng(2)
    tensors = random_tensors(rng, present)
    path = tmp_path / "dls.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 2, 5, 0) + b"".join(t.astype("<f4").tobytes() for t in tensors))
    assert path.stat().st_size == FULL_SMALL_BYTES - 4 * 12

    bn = {n: net.layers[0].params[n].copy() for n in ("scales", "rolling_mean", "rolling_variance")}
    net.load_weights(path)
    for (index, name, _), values in zip(present, tensors):
        np.testing.assert_array_equal(net.layers[index].params[name], values, err_msg=f"layer {index} {name}")
    for name, value in bn.items():
        np.testing.assert_array_equal(net.layers[0].params[name], value, err_msg=name)


def test_connected_dontloadscales_file_has_no_bn_triplet(tmp_path):
    """Darknet's load_connected_weights reads scales/mean/variance only when !dontloadscales, like conv."""
    cfg = write_cfg(
        tmp_path, SMALL_CFG.replace("output=5\nbatch_normalize=1\n", "output=5\nbatch_normalize=1\ndontloadscales=1\n")
    )
    net = pydarknet.load(cfg, seed=2)
    present = [
        (i, n, s) for i, n, s in SMALL_LAYOUT if not (i == 3 and n in ("scales", "rolling_mean", "rolling_variance"))
    ]
    rng = np.random.default_rng(3)
    tensors = random_tensors(rng, present)
    path = tmp_path / "dls.weights"
    path.write_bytes(struct.pack("<iiiQ", 0, 2, 5, 0) + b"".join(t.astype("<f4").tobytes() for t in tensors))

    bn = {n: net.layers[3].params[n].copy() for n in ("scales", "rolling_mean", "rolling_variance")}
    net.load_weights(path)
    for (index, name, _), values in zip(present, tensors):
        np.testing.assert_array_equal(net.layers[index].params[name], values, err_msg=f"layer {index} {name}")
    for name, value in bn.items():
        np.testing.assert_array_equal(net.layers[3].params[name], value, err_msg=name)


def test_saved_weights_are_ordinary_readable_files(tmp_path):
    import os
    import stat

    cfg = write_cfg(tmp_path, SMALL_CFG)
    net = pydarknet.load(str(cfg))
    path = tmp_path / "perm.weights"
    net.save_weights(str(path))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
