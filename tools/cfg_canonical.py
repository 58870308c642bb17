"""Write a Darknet cfg in pydarknet's canonical form.

The canonical form keeps exactly the sections, keys and values of the input (so the same weights load and the
same network is built) and drops everything Darknet ignores: comments, blank lines, spacing. One `key=value` per
line, a blank line between sections.

    python tools/cfg_canonical.py ORIGINAL.cfg [more.cfg ...] --out-dir cfg/
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pydarknet.core.cfg import read_cfg


def canonical_text(path):
    sections = read_cfg(path)
    lines = [f"# {Path(path).stem}: pydarknet canonical form of the Darknet cfg (same sections, keys and values)"]
    for sec in sections:
        lines.append("")
        lines.append(f"[{sec.name}]")
        lines.extend(f"{key}={value}" for key, (value, _) in sec.items.items())
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cfgs", nargs="+")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for cfg in args.cfgs:
        target = out_dir / Path(cfg).name
        target.write_text(canonical_text(cfg))
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
