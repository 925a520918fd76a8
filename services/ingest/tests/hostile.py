"""Hostile webhook bodies shared by the parser fuzzer and the HTTP receiver tests: every field of Meta's samples
replaced by each JSON type, deep nesting, huge strings, missing fields."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from waflow_testing.fixtures import FIXTURES

Path = tuple[Any, ...]

# What the reported fuzzing put in each field: a string, a number, an object, an array, null, a bool.
WRONG_TYPES: dict[str, Any] = {"string": "abc", "number": 5, "object": {"k": "v"}, "array": [1], "null": None}
WRONG_TYPES["bool"] = True


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / "whatsapp" / name).read_text())
    return loaded


def sample_names() -> list[str]:
    return sorted(p.name for p in (FIXTURES / "whatsapp").glob("*.json"))


def paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every path to a field or list item inside `value`, parents before children."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from paths(child, (*prefix, index))


def replaced(body: Any, path: Path, new: Any) -> Any:
    out = copy.deepcopy(body)
    node = out
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = new
    return out


def removed(body: Any, path: Path) -> Any:
    out = copy.deepcopy(body)
    node = out
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return out


def nested(levels: int, leaf: Any = "x") -> Any:
    value = leaf
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return value


def wrong_type_grid(name: str) -> Iterator[tuple[str, Any]]:
    """(label, body): each field of a sample replaced by each wrong type, then each field removed."""
    body = sample(name)
    for path in paths(body):
        for kind, value in WRONG_TYPES.items():
            yield f"{name}:{'.'.join(map(str, path))}={kind}", replaced(body, path, value)
    for path in paths(body):
        yield f"{name}:{'.'.join(map(str, path))} removed", removed(body, path)


def compact(body: Any) -> bytes:
    """Meta's serialisation: compact, non-ASCII escaped."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()
