"""Reading Darknet `.cfg` files.

Darknet's syntax: every space, tab and CR is removed from a line before it is looked at; lines starting with `#`
or `;` are comments; `[name]` opens a section; everything else is `key=value`. The first section must be
`[net]`. Values are read lazily, by the layer that knows their type, so that an error can name the line of the
offending key. Keys nobody read are reported at the end (an error, or a warning in lenient mode).
"""

import re
import warnings
from pathlib import Path

from pydarknet.errors import CfgError, CfgWarning

_INT_PREFIX = re.compile(r"[+-]?\d+")
_FLOAT_PREFIX = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


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
        return CfgError(f"[{self.name}] {problem}", self.path, line)

    def has(self, key):
        return key in self.items

    def raw(self, key):
        self.used.add(key)
        return self.items[key][0]

    def int(self, key, default=None):
        if key not in self.items:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return default
        value = self.raw(key)
        match = _INT_PREFIX.match(value)
        if not match:
            raise self.error(f"'{key}={value}' is not an integer", key)
        return int(match.group(0))

    def float(self, key, default=None):
        if key not in self.items:
            if default is None:
                raise self.error(f"missing required key '{key}'")
            return float(default)
        value = self.raw(key)
        match = _FLOAT_PREFIX.match(value)
        if not match:
            raise self.error(f"'{key}={value}' is not a number", key)
        return float(match.group(0))

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
        out = []
        for part in value.split(","):
            if part == "":
                continue
            match = parse.match(part)
            if not match or match.group(0) != part:
                raise self.error(f"'{key}' has a malformed entry '{part}'", key)
            out.append(match.group(0))
        return out

    def int_list(self, key, default=None):
        return [int(v) for v in self._list(key, _INT_PREFIX, default)]

    def float_list(self, key, default=None):
        return [float(v) for v in self._list(key, _FLOAT_PREFIX, default)]

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
                raise CfgError(f"malformed section header '{raw_line.strip()}'", path, lineno)
            sections.append(Section(line[1:-1], lineno, path))
            continue
        if not sections:
            raise CfgError(f"'{raw_line.strip()}' appears before any [section]", path, lineno)
        if "=" not in line:
            raise CfgError(f"line '{raw_line.strip()}' is not key=value", path, lineno)
        key, value = line.split("=", 1)
        if not key:
            raise CfgError(f"line '{raw_line.strip()}' has an empty key", path, lineno)
        section = sections[-1]
        if key in section.items:
            first = section.items[key][1]
            problem = f"duplicate key '{key}' in [{section.name}] (first set on line {first})"
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
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CfgError(f"cannot read the cfg file: {exc.strerror or exc}", path) from None
    if b"\0" in data:
        raise CfgError("this is not a text cfg file (it contains NUL bytes)", path)
    return parse_cfg_text(data.decode("utf-8", errors="replace"), path, lenient)
