"""Malformed input: every bad cfg is a CfgError naming the file and the line, and nothing crashes the process.

Each cfg test writes a small file and checks the error's type (CfgError, which is also a ValueError and a
DarknetError), its `.path`, its `.line` and that the message starts with "path:line:". A seeded fuzz test then
mutates the project's yolov4-tiny.cfg and requires every case to either build or raise a DarknetError.
"""

import random
import resource
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import pydarknet
from pydarknet import _core

CFG_DIR = Path(__file__).resolve().parents[1] / "cfg"
TINY = CFG_DIR / "yolov4-tiny.cfg"

NET = """\
[net]
width=16
height=16
channels=3
"""

CONV = """
[convolutional]
filters=4
size=3
stride=1
pad=1
activation=leaky
"""


def write(tmp_path, text, name="bad.cfg"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def line_of(text, needle, occurrence=1):
    """1-based number of the line that is exactly `needle` (its n-th occurrence)."""
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() == needle:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} is not a line of the test cfg")


def expect_cfg_error(path, line, *fragments, **load_kwargs):
    """Load `path` and check the CfgError: type, .path, .line, 'path:line:' prefix and message fragments."""
    with pytest.raises(pydarknet.CfgError) as info:
        pydarknet.load(path, **load_kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, pydarknet.DarknetError)
    assert err.path == str(path)
    message = str(err)
    assert str(path) in message
    if line is None:
        assert err.line is None
    else:
        assert err.line == line, message
        assert message.startswith(f"{path}:{line}:"), message
    for fragment in fragments:
        assert fragment in message, message
    return err


def check_text(tmp_path, text, needle, *fragments, occurrence=1):
    """Write `text`, expect a CfgError on the line `needle`."""
    path = write(tmp_path, text)
    return expect_cfg_error(path, line_of(text, needle, occurrence), *fragments)


# ----- syntax ---------------------------------------------------------------------------------------------


def test_key_before_any_section(tmp_path):
    text = "width=416\n" + NET + CONV
    check_text(tmp_path, text, "width=416", "width=416")


def test_comments_and_blank_lines_before_the_first_section_are_fine(tmp_path):
    path = write(tmp_path, "# a comment\n; another\n\n" + NET + CONV)
    assert pydarknet.load(path).input_shape == (3, 16, 16)


def test_line_without_equals(tmp_path):
    text = NET + "\n[convolutional]\nfilters=4\nbatch_normalize\nactivation=linear\n"
    check_text(tmp_path, text, "batch_normalize", "batch_normalize")


def test_line_with_empty_key(tmp_path):
    text = NET + "\n[convolutional]\nfilters=4\n=3\n"
    check_text(tmp_path, text, "=3")


def test_unknown_section(tmp_path):
    text = NET + CONV + "\n[frobnicate]\nx=1\n"
    check_text(tmp_path, text, "[frobnicate]", "frobnicate")


def test_unknown_section_lenient_is_a_warning(tmp_path):
    text = NET + CONV + "\n[frobnicate]\nx=1\n"
    path = write(tmp_path, text)
    with pytest.warns(pydarknet.CfgWarning, match="frobnicate"):
        net = pydarknet.load(path, lenient=True)
    assert len(net.layers) == 2
    assert net.layers[1].out_shape == net.layers[0].out_shape


def test_unknown_key(tmp_path):
    text = NET + "\n[convolutional]\nfilters=4\nbogus_key=1\nactivation=linear\n"
    check_text(tmp_path, text, "bogus_key=1", "bogus_key")


def test_unknown_key_in_net_section(tmp_path):
    text = NET + "widht=32\n" + CONV
    check_text(tmp_path, text, "widht=32", "widht")


def test_unknown_key_lenient_is_a_warning_and_the_network_builds(tmp_path):
    text = NET + "\n[convolutional]\nfilters=4\nbogus_key=1\nactivation=linear\n"
    path = write(tmp_path, text)
    with pytest.warns(pydarknet.CfgWarning) as record:
        net = pydarknet.load(path, lenient=True)
    messages = [str(w.message) for w in record if issubclass(w.category, pydarknet.CfgWarning)]
    assert any("bogus_key" in m and f"{path}:{line_of(text, 'bogus_key=1')}" in m for m in messages), messages
    assert net.layers[0].out_shape == (4, 16, 16)
    out = net.forward(np.zeros((1, 3, 16, 16), np.float32))
    assert out[0].shape == (1, 4, 16, 16)


def test_strict_mode_does_not_warn_for_a_good_cfg(tmp_path):
    path = write(tmp_path, NET + CONV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pydarknet.load(path)


def test_duplicate_key(tmp_path):
    text = NET + "\n[convolutional]\nfilters=4\nsize=3\nfilters=8\n"
    check_text(tmp_path, text, "filters=8", "filters")


def test_duplicate_key_in_net_section(tmp_path):
    text = NET + "width=32\n" + CONV
    check_text(tmp_path, text, "width=32", "width")


def test_first_section_is_not_net(tmp_path):
    text = CONV.lstrip() + "\n" + NET
    check_text(tmp_path, text, "[convolutional]", "[net]")


@pytest.mark.parametrize("header", ["[convolutional", "convolutional]", "[]", "[conv]x", "[[conv]"])
def test_malformed_section_header(tmp_path, header):
    text = NET + f"\n{header}\nfilters=4\n"
    path = write(tmp_path, text)
    # "convolutional]" has no '[' and is read as a line without '='; either way it is that line's error.
    expect_cfg_error(path, line_of(text, header))


def test_second_net_section(tmp_path):
    text = NET + CONV + "\n[network]\nbatch=1\n"
    check_text(tmp_path, text, "[network]")


def test_no_layers_after_net(tmp_path):
    path = write(tmp_path, NET)
    expect_cfg_error(path, None)


def test_net_without_size(tmp_path):
    text = "[net]\nbatch=1\n" + CONV
    path = write(tmp_path, text)
    err = expect_cfg_error(path, line_of(text, "[net]"))
    assert "channels" in str(err) or "width" in str(err)


# ----- layer references ------------------------------------------------------------------------------------

# Layer 0 is a conv, layer 1 a conv; the layer under test is layer 2.
TWO_CONVS = NET + CONV + CONV


@pytest.mark.parametrize("section,key", [("route", "layers"), ("shortcut", "from"), ("sam", "from")])
@pytest.mark.parametrize(
    "value", ["-3", "-100", "2", "3", "50"], ids=["too-negative", "far-negative", "itself", "forward", "far-forward"]
)
def test_reference_out_of_range(tmp_path, section, key, value):
    text = TWO_CONVS + f"\n[{section}]\n{key}={value}\n"
    check_text(tmp_path, text, f"{key}={value}", key)


@pytest.mark.parametrize("value", ["0,5", "-1,-7", "-1,2"])
def test_route_with_one_bad_entry(tmp_path, value):
    text = TWO_CONVS + f"\n[route]\nlayers={value}\n"
    check_text(tmp_path, text, f"layers={value}", "layers")


def test_valid_references_build(tmp_path):
    text = TWO_CONVS + "\n[route]\nlayers=-1,0\n\n[shortcut]\nfrom=-3\n\n[sam]\nfrom=2\n"
    net = pydarknet.load(write(tmp_path, text))
    assert [l.type for l in net.layers] == ["convolutional", "convolutional", "route", "shortcut", "sam"]
    assert net.layers[2].out_shape == (8, 16, 16)


def test_route_of_layers_with_different_sizes(tmp_path):
    text = NET + CONV + "\n[maxpool]\nsize=2\nstride=2\n\n[route]\nlayers=-1,-2\n"
    err = check_text(tmp_path, text, "layers=-1,-2")
    assert "8" in str(err) and "16" in str(err)


def test_route_missing_layers(tmp_path):
    text = TWO_CONVS + "\n[route]\ngroups=1\n"
    err = check_text(tmp_path, text, "[route]", "layers")
    assert err.line == line_of(text, "[route]")


def test_route_empty_layers(tmp_path):
    text = TWO_CONVS + "\n[route]\nlayers=\n"
    check_text(tmp_path, text, "layers=", "layers")


# ----- groups --------------------------------------------------------------------------------------------


def test_conv_groups_not_dividing_input_channels(tmp_path):
    text = NET + CONV + "\n[convolutional]\nfilters=6\ngroups=3\nsize=1\n"  # input has 4 channels
    check_text(tmp_path, text, "groups=3", "groups")


def test_conv_groups_not_dividing_filters(tmp_path):
    text = NET + CONV + "\n[convolutional]\nfilters=5\ngroups=2\nsize=1\n"
    check_text(tmp_path, text, "groups=2", "groups")


def test_route_groups_not_dividing_channels(tmp_path):
    text = NET + CONV + "\n[route]\nlayers=-1\ngroups=3\ngroup_id=0\n"
    check_text(tmp_path, text, "groups=3", "groups")


def test_route_group_id_out_of_range(tmp_path):
    text = NET + CONV + "\n[route]\nlayers=-1\ngroups=2\ngroup_id=2\n"
    check_text(tmp_path, text, "group_id=2", "group_id")


# ----- [yolo] --------------------------------------------------------------------------------------------


def yolo_cfg(filters=21, mask="0,1,2", anchors="10,14, 23,27, 37,58", classes=2, num=3):
    return (
        NET
        + f"""
[convolutional]
filters={filters}
size=1
activation=linear

[yolo]
mask={mask}
anchors={anchors}
classes={classes}
num={num}
"""
    )


def test_good_yolo_builds(tmp_path):
    net = pydarknet.load(write(tmp_path, yolo_cfg()))
    assert net.yolo_layers == [1]


@pytest.mark.parametrize("filters,classes", [(20, 2), (255, 2), (21, 80)])
def test_yolo_filters_do_not_match_mask_and_classes(tmp_path, filters, classes):
    text = yolo_cfg(filters=filters, classes=classes)
    path = write(tmp_path, text)
    with pytest.raises(pydarknet.CfgError) as info:
        pydarknet.load(path)
    err = info.value
    # The problem is the [yolo] section (its mask/classes) or the conv's filters: any of those lines names it.
    candidates = {
        line_of(text, "[yolo]"),
        line_of(text, "mask=0,1,2"),
        line_of(text, f"classes={classes}"),
        line_of(text, f"filters={filters}"),
    }
    assert err.line in candidates, str(err)
    assert str(err).startswith(f"{path}:{err.line}:")
    assert str(filters) in str(err)
    assert str(3 * (classes + 5)) in str(err)


@pytest.mark.parametrize("mask", ["0,1,3", "0,1,7", "0,-1,2"])
def test_mask_index_not_below_num(tmp_path, mask):
    check_text(tmp_path, yolo_cfg(mask=mask), f"mask={mask}", "mask")


def test_too_few_anchors(tmp_path):
    text = yolo_cfg(anchors="10,14, 23,27, 37")
    check_text(tmp_path, text, "anchors=10,14, 23,27, 37", "anchors")


def test_malformed_anchors(tmp_path):
    text = yolo_cfg(anchors="10,14, 23,x, 37,58")
    check_text(tmp_path, text, "anchors=10,14, 23,x, 37,58", "anchors")


# ----- values --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["filters=abc", "size=x3", "stride=", "pad=yes"])
def test_non_numeric_integer(tmp_path, line):
    text = NET + f"\n[convolutional]\n{line}\nactivation=linear\n"
    key = line.split("=")[0]
    check_text(tmp_path, text, line, key)


def test_non_numeric_float(tmp_path):
    text = yolo_cfg() + "scale_x_y=big\n"
    check_text(tmp_path, text, "scale_x_y=big", "scale_x_y")


def test_non_numeric_net_value(tmp_path):
    text = NET.replace("width=16", "width=wide") + CONV
    check_text(tmp_path, text, "width=wide", "width")


def test_unknown_activation(tmp_path):
    text = NET + "\n[convolutional]\nfilters=4\nactivation=sparkle\n"
    check_text(tmp_path, text, "activation=sparkle", "sparkle")


def test_unknown_activation_lenient_warns(tmp_path):
    text = NET + "\n[convolutional]\nfilters=4\nactivation=sparkle\n"
    with pytest.warns(pydarknet.CfgWarning, match="sparkle"):
        pydarknet.load(write(tmp_path, text), lenient=True)


@pytest.mark.parametrize(
    "section,line",
    [
        ("convolutional", "size=0"),
        ("convolutional", "size=-3"),
        ("convolutional", "filters=0"),
        ("convolutional", "filters=-4"),
        ("convolutional", "groups=0"),
        ("convolutional", "dilation=0"),
        ("maxpool", "size=0"),
        ("maxpool", "size=-2"),
        ("connected", "output=0"),
        ("connected", "output=-1"),
        ("upsample", "stride=0"),
        ("reorg3d", "stride=0"),
    ],
)
def test_zero_or_negative_size(tmp_path, section, line):
    text = NET + CONV + f"\n[{section}]\n{line}\n"
    if section == "convolutional" and not line.startswith("size"):
        text += "size=3\npad=1\n"
    check_text(tmp_path, text, line, line.split("=")[0])


@pytest.mark.parametrize(
    "section,line",
    [
        ("convolutional", "stride=0"),
        ("convolutional", "stride=-2"),
        ("maxpool", "stride=0"),
        ("maxpool", "stride=-1"),
        ("local_avgpool", "stride=0"),
    ],
)
def test_zero_or_negative_stride(tmp_path, section, line):
    text = NET + CONV + f"\n[{section}]\n{line}\nsize=2\n"
    check_text(tmp_path, text, line, "stride")


@pytest.mark.parametrize("line", ["width=0", "width=-16", "height=0", "channels=0", "channels=-3"])
def test_zero_or_negative_input_size(tmp_path, line):
    key = line.split("=")[0]
    text = "\n".join(line if l.startswith(key + "=") else l for l in NET.splitlines()) + "\n" + CONV
    check_text(tmp_path, text, line, key)


@pytest.mark.parametrize("line", ["width=100000", "height=1000000", "channels=100000"])
def test_absurd_input_size(tmp_path, line):
    key = line.split("=")[0]
    text = "\n".join(line if l.startswith(key + "=") else l for l in NET.splitlines()) + "\n" + CONV
    check_text(tmp_path, text, line, key)


@pytest.mark.parametrize("line", ["filters=1000000000", "filters=99999999999999999999", "size=100000"])
def test_absurd_layer_size(tmp_path, line):
    text = NET + f"\n[convolutional]\n{line}\n"
    check_text(tmp_path, text, line, line.split("=")[0])


def _refused_quickly(path, line, *fragments):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    expect_cfg_error(path, line, *fragments)
    elapsed = time.perf_counter() - start
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert elapsed < 2.0, f"refusing took {elapsed:.1f} s"
    assert grown_kib < 512 * 1024, f"peak memory grew by {grown_kib} KiB while refusing"


def test_network_needing_too_much_activation_memory_is_refused_quickly(tmp_path):
    # 40000x40000 input: the first conv alone is 4*40000*40000*4 bytes = 25.6 GB per image.
    text = "[net]\nwidth=40000\nheight=40000\nchannels=3\n" + CONV
    _refused_quickly(write(tmp_path, text), line_of(text, "[convolutional]"), "GiB")


def test_activation_memory_adds_up_over_layers(tmp_path):
    # Each layer's output is 16*4096*4096*4 bytes = exactly 1 GiB; the 9th layer takes the total past 8 GiB.
    layer = "\n[convolutional]\nfilters=16\nsize=1\nactivation=linear\n"
    text = "[net]\nwidth=4096\nheight=4096\nchannels=3\n" + layer * 12
    _refused_quickly(write(tmp_path, text), line_of(text, "[convolutional]", occurrence=9), "GiB")


def test_network_with_too_many_parameters_is_refused_quickly(tmp_path):
    # 65536 x 65536 connected layer = 4 G floats = 16 GiB of parameters.
    text = NET + "\n[connected]\noutput=65536\nactivation=linear\n\n[connected]\noutput=65536\nactivation=linear\n"
    _refused_quickly(write(tmp_path, text), line_of(text, "[connected]", occurrence=2), "parameters")


# ----- whole files ---------------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    expect_cfg_error(write(tmp_path, ""), None)


def test_file_of_only_comments(tmp_path):
    expect_cfg_error(write(tmp_path, "# nothing here\n\n; nor here\n"), None)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_file(tmp_path, seed):
    data = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path = write(tmp_path, data, "garbage.cfg")
    with pytest.raises(pydarknet.CfgError) as info:
        pydarknet.load(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)


def test_binary_file_without_nul_bytes(tmp_path):
    data = bytes(range(1, 256)) * 8
    path = write(tmp_path, data, "garbage.cfg")
    with pytest.raises(pydarknet.CfgError) as info:
        pydarknet.load(path)
    assert str(path) in str(info.value)


def test_weights_file_given_as_cfg(tmp_path):
    net = pydarknet.load(write(tmp_path, NET + CONV, "good.cfg"))
    weights = tmp_path / "good.weights"
    net.save_weights(weights)
    with pytest.raises(pydarknet.CfgError) as info:
        pydarknet.load(weights)
    assert str(weights) in str(info.value)


def test_missing_cfg(tmp_path):
    path = tmp_path / "does-not-exist.cfg"
    expect_cfg_error(path, None)


def test_directory_as_cfg(tmp_path):
    expect_cfg_error(tmp_path, None)


def test_windows_line_endings_are_fine(tmp_path):
    path = tmp_path / "crlf.cfg"
    path.write_bytes((NET + CONV).replace("\n", "\r\n").encode())
    assert pydarknet.load(path).layers[0].out_shape == (4, 16, 16)


def test_line_numbers_count_crlf_lines(tmp_path):
    text = NET + "\n[convolutional]\nfilters=4\nbogus_key=1\n"
    path = tmp_path / "crlf.cfg"
    path.write_bytes(text.replace("\n", "\r\n").encode())
    expect_cfg_error(path, line_of(text, "bogus_key=1"), "bogus_key")


# ----- fuzz ----------------------------------------------------------------------------------------------

FUZZ_VALUES = [
    "0",
    "-1",
    "1",
    "2",
    "3",
    "-3",
    "5",
    "13",
    "32",
    "255",
    "416",
    "-0",
    "+7",
    "0.5",
    "-0.5",
    "1e9",
    "1e999",
    "65536",
    "100000",
    "1000000000",
    "99999999999999999999",
    "abc",
    "",
    ",",
    "1,2",
    "-1,-2",
    "0,1,2,3,4,5,6,7,8",
    "nan",
    "inf",
    "leaky",
    "mish",
    "linear",
    "logistic",
    "foo",
    "#",
    "=",
    "[",
    "]",
    "1.5e-3",
    "3,,4",
    "\t2 ",
]
FUZZ_KEYS = [
    "filters",
    "size",
    "stride",
    "pad",
    "groups",
    "group_id",
    "layers",
    "from",
    "mask",
    "num",
    "classes",
    "anchors",
    "width",
    "height",
    "channels",
    "batch_normalize",
    "activation",
    "scale_x_y",
    "dontload",
    "dontloadscales",
    "padding",
    "dilation",
    "stride_x",
    "stride_y",
    "output",
    "maxpool_depth",
    "bogus",
]
FUZZ_SECTIONS = [
    "[net]",
    "[convolutional]",
    "[route]",
    "[shortcut]",
    "[maxpool]",
    "[upsample]",
    "[yolo]",
    "[connected]",
    "[avgpool]",
    "[softmax]",
    "[sam]",
    "[scale_channels]",
    "[reorg3d]",
    "[dropout]",
    "[local_avgpool]",
    "[batchnorm]",
    "[region]",
    "[bogus]",
    "[",
    "[]",
]


def mutate(text, rng):
    """Apply 1-4 random edits to cfg text: delete, duplicate, move or alter lines and values."""
    lines = text.splitlines()
    for _ in range(rng.randint(1, 4)):
        if not lines:
            lines = [""]
        i = rng.randrange(len(lines))
        kind = rng.random()
        if kind < 0.2:
            del lines[i]
        elif kind < 0.35:
            lines.insert(rng.randrange(len(lines) + 1), lines[i])
        elif kind < 0.7:
            # Alter the value of a random key=value line (or append one to a random line).
            kv = [j for j, l in enumerate(lines) if "=" in l]
            if kv:
                j = rng.choice(kv)
                key = lines[j].split("=", 1)[0]
                lines[j] = f"{key}={rng.choice(FUZZ_VALUES)}"
        elif kind < 0.8:
            lines.insert(i, f"{rng.choice(FUZZ_KEYS)}={rng.choice(FUZZ_VALUES)}")
        elif kind < 0.87:
            lines.insert(i, rng.choice(FUZZ_SECTIONS))
        elif kind < 0.93:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            # Cut the file (or one line) at a random character.
            if rng.random() < 0.5:
                joined = "\n".join(lines)
                lines = joined[: rng.randrange(len(joined) + 1)].splitlines()
            else:
                lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
    return "\n".join(lines) + "\n"


FUZZ_CASES = 200


def test_fuzzed_cfgs_build_or_raise_darknet_error(tmp_path):
    rng = random.Random(20240607)
    original = TINY.read_text()
    path = tmp_path / "fuzz.cfg"
    outcomes = {"built": 0, "refused": 0}
    for case in range(FUZZ_CASES):
        text = mutate(original, rng)
        lenient = rng.random() < 0.4
        path.write_text(text)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pydarknet.CfgWarning)
                pydarknet.load(path, lenient=lenient)
        except pydarknet.DarknetError as err:
            assert str(path) in str(err), f"case {case}: the error does not name the file: {err}"
            outcomes["refused"] += 1
        except Exception as err:
            pytest.fail(f"fuzz case {case} (lenient={lenient}) raised {type(err).__name__}: {err}\n--- cfg ---\n{text}")
        else:
            outcomes["built"] += 1
    # The mutations should exercise both outcomes.
    assert outcomes["built"] > 10 and outcomes["refused"] > 10, outcomes


def test_fuzz_is_reproducible():
    original = TINY.read_text()
    a = [mutate(original, random.Random(7)) for _ in range(3)]
    b = [mutate(original, random.Random(7)) for _ in range(3)]
    assert a == b
    assert any(m != original for m in a)


# ----- forward() input checks ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    path = tmp_path_factory.mktemp("net") / "small.cfg"
    path.write_text(NET + CONV)
    return pydarknet.load(path, seed=0)


def test_forward_accepts_the_right_input(small_net):
    out = small_net.forward(np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32))
    assert len(out) == 1 and out[0].shape == (2, 4, 16, 16)


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 16, 17), (1, 3, 17, 16), (1, 4, 16, 16), (1, 1, 16, 16), (1, 16, 16, 3), (2, 3, 8, 8), (0, 3, 16, 16)],
)
def test_forward_wrong_shape(small_net, shape):
    with pytest.raises(ValueError):
        small_net.forward(np.zeros(shape, np.float32))


@pytest.mark.parametrize("shape", [(), (16,), (16, 16), (1, 1, 3, 16, 16), (1, 1, 1, 3, 16, 16)])
def test_forward_wrong_ndim(small_net, shape):
    with pytest.raises(ValueError):
        small_net.forward(np.zeros(shape, np.float32))


@pytest.mark.parametrize(
    "make",
    [
        lambda s: np.zeros(s, np.complex64),
        lambda s: np.full(s, "0.5"),
        lambda s: np.full(s, None, dtype=object),
        lambda s: np.zeros(s, "datetime64[s]"),
        lambda s: np.zeros(s, [("a", np.float32), ("b", np.float32)]),
    ],
    ids=["complex", "str", "object", "datetime", "structured"],
)
def test_forward_wrong_dtype(small_net, make):
    x = make((1, 3, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a silent lossy cast (e.g. ComplexWarning) is not a refusal
        with pytest.raises(ValueError):
            small_net.forward(x)


def test_forward_non_array_input(small_net):
    for bad in (None, "image.jpg", [[1.0, 2.0]]):
        with pytest.raises(ValueError):
            small_net.forward(bad)


def test_forward_all_checks_the_input_too(small_net):
    with pytest.raises(ValueError):
        small_net.forward_all(np.zeros((1, 3, 15, 16), np.float32))


# ----- devices -------------------------------------------------------------------------------------------


@pytest.mark.skipif(_core.cuda_device_count() > 0, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "CUDA"])
def test_cuda_without_a_gpu(tmp_path, device):
    with pytest.raises(pydarknet.DeviceError) as info:
        pydarknet.load(write(tmp_path, NET + CONV), device=device)
    assert isinstance(info.value, pydarknet.DarknetError)
    assert isinstance(info.value, ValueError)


def test_unknown_device(tmp_path):
    with pytest.raises(pydarknet.DeviceError):
        pydarknet.load(write(tmp_path, NET + CONV), device="tpu")
