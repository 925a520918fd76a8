"""Prints (or, with --write, stores) the capacity tables; see bench/capacity/__init__.py."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.capacity import DOC, INPUTS, load_inputs, model, render_doc, with_figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--figures", type=Path, help="the output of `make bench` (its BENCH-FIGURE lines)")
    parser.add_argument("--write", action="store_true", help="store the figures in inputs.json, the table in docs")
    args = parser.parse_args()
    inputs = load_inputs()
    if args.figures is not None:
        inputs, replaced = with_figures(inputs, args.figures.read_text().splitlines())
        print(f"measured figures taken from {args.figures}: {', '.join(replaced) or 'none'}\n")
    lines = model(inputs)
    print("\n".join(lines))
    if args.write:
        INPUTS.write_text(json.dumps(inputs, indent=2) + "\n")
        DOC.write_text(render_doc(DOC.read_text(), lines))
        print(f"\nwrote {INPUTS.name} and {DOC.name}")


if __name__ == "__main__":
    main()
