"""Reading Darknet `.cfg` files.

Darknet's syntax: every space, tab and CR is removed from a line before it is looked at; lines starting with `#`
or `;` are comments; `[name]` opens a section; everything else is `key=value`. The first section must be
`[net]`. Values are read lazily, by the layer that knows their type, so that an error can name the line of the
offending key. Keys nobody read are reported at the end (an error, or a warning in lenient mode).
"""

import math
import re
import warnings
from pathlib import Path

from pydarknet.errors import CfgError, CfgWarning
from pydarknet.utils import files
from pydarknet.utils.files import short

# ASCII digits only: Python's \d (and int()) also accept fullwidth and other Unicode digits, which Darknet's atoi
# does not read as numbers.
_INT_PREFIX = re.compile(r"[+-]?[0-9]+")
_FLOAT_PREFIX = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
# Darknet stores cfg integers in a C int and numbers in a C float: values outside these ranges cannot mean anything.
INT_MAX = 2**31 - 1
FLOAT_MAX = 3.4028234663852886e38
_UTF8_BOM = b"\xef\xbb\xbf"


class Section:
    """One `[section]` of a cfg: its name, the line it starts on and its key=value items."""

    def __init__(self, name, line, path):
        self.name = name
        self.line = line
        self.path = path
        self.items = {}  # key -> (raw value, line)
        self.used = set()

    def error(self, problem, key=None):
        line = self.items[key][1] if key in self.items else self.line
        return CfgError(f"[{short(self.name)}] {problem}", self.path, line)

    def has(self, key):
        return key in self.items

    def raw(self, key):
        self.used.add(key)
        return self.items[key][0]

    def _ascii(self, key, value):
        if not value.isascii():
            raise self.error(f"'{key}={short(value)}' contains non-ASCII characters; write numbers with 0-9", key)

    def _to_int(self, key, text, shown):
        digits = text.lstrip("+-").lstrip("0")
        # Checked on the digits before int(): Python refuses to convert more than 4,300 of them.
        if len(digits) > 10 or int(text) > INT_MAX or int(text) < -INT_MAX - 1:
            raise self.error(f"'{key}={short(shown)}' is out of range for an integer (at most {INT_MAX})", key)
        return int(text)

    def _to_float(self, key, text, shown):
        value = float(text)
        if not math.isfinite(value) or abs(value) > FLOAT_MAX:
            raise self.error(f"'{key}={short(shown)}' is out of range for a 32-bit float (at most {FLOAT_MAX:g})", key)
        return value

    def int(self, key, default=None):
        if key not in self.items:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return default
        value = self.raw(key)
        self._ascii(key, value)
        match = _INT_PREFIX.match(value)
        if not match:
            raise self.error(f"'{key}={short(value)}' is not an integer", key)
        return self._to_int(key, match.group(0), value)

    def float(self, key, default=None):
        if key not in self.items:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return float(default)
        value = self.raw(key)
        self._ascii(key, value)
        match = _FLOAT_PREFIX.match(value)
        if not match:
            raise self.error(f"'{key}={short(value)}' is not a number", key)
        return self._to_float(key, match.group(0), value)

    def str(self, key, default=None):
        if key not in self.items:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return default
        return self.raw(key)

    def _list(self, key, parse, default):
        if key not in self.items:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return list(default)
        value = self.raw(key).split("#")[0]
        self._ascii(key, value)
        out = []
        for part in value.split(","):
            if part == "":
                continue
            match = parse.match(part)
            if not match or match.group(0) != part:
                raise self.error(f"'{key}' has a malformed entry '{short(part)}'", key)
            out.append(match.group(0))
        return out

    def int_list(self, key, default=None):
        return [v if isinstance(v, int) else self._to_int(key, v, v) for v in self._list(key, _INT_PREFIX, default)]

    def float_list(self, key, default=None):
        return [
            float(v) if not isinstance(v, str) else self._to_float(key, v, v)
            for v in self._list(key, _FLOAT_PREFIX, default)
        ]

    def unused(self):
        return [k for k in self.items if k not in self.used]


def parse_cfg_text(text, path=None, lenient=False):
    """Split cfg text into Sections. Raises CfgError naming the line of any syntax problem."""
    sections = []
    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        line = re.sub(r"[ \t\r\f\v]", "", raw_line)
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"malformed section header '{short(raw_line.strip())}'", path, lineno)
            sections.append(Section(line[1:-1], lineno, path))
            continue
        if not sections:
            raise CfgError(f"'{short(raw_line.strip())}' appears before any [section]", path, lineno)
        if "=" not in line:
            raise CfgError(f"line '{short(raw_line.strip())}' is not key=value", path, lineno)
        key, value = line.split("=", 1)
        if not key:
            raise CfgError(f"line '{short(raw_line.strip())}' has an empty key", path, lineno)
        section = sections[-1]
        if key in section.items:
            first = section.items[key][1]
            problem = f"duplicate key '{short(key)}' in [{short(section.name)}] (first set on line {first})"
            if not lenient:
                raise CfgError(problem, path, lineno)
            warnings.warn(f"{path}:{lineno}: {problem}; the first value wins, as in Darknet", CfgWarning)
            continue
        section.items[key] = (value, lineno)
    if not sections:
        raise CfgError("the cfg has no sections", path, None)
    if sections[0].name not in ("net", "network"):
        raise CfgError(f"the first section must be [net], not [{sections[0].name}]", path, sections[0].line)
    return sections


def read_cfg(path, lenient=False):
    """Read and split a cfg file: a regular file of at most ``files.MAX_CFG_BYTES``; a UTF-8 byte-order mark is
    accepted (Windows editors write one)."""
    path = Path(path)
    data = files.read_bounded(path, files.MAX_CFG_BYTES, lambda problem: CfgError(problem, path))
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    if b"\0" in data:
        raise CfgError("this is not a text cfg file (it contains NUL bytes)", path)
    return parse_cfg_text(data.decode("utf-8", errors="replace"), path, lenient)
