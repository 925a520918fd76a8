"""A benchmark's headline figures, as one machine-readable line each beside its human-readable output, so that
`make bench` (bench/__main__.py) can gather every benchmark's figures into one table."""

from __future__ import annotations

import json

MARKER = "BENCH-FIGURE "


def figure(name: str, result: float | int | str, *, unit: str = "", target: str = "") -> None:
    """Prints one figure: `name` says what and under which load, `target` what it should be (if anything)."""
    shown = f"{result:,.2f}".rstrip("0").rstrip(".") if isinstance(result, float) else str(result)
    print(MARKER + json.dumps({"name": name, "result": f"{shown} {unit}".strip(), "target": target}), flush=True)


def parse(line: str) -> dict[str, str] | None:
    if not line.startswith(MARKER):
        return None
    parsed: dict[str, str] = json.loads(line[len(MARKER) :])
    return parsed
