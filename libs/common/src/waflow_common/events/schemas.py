"""Each event's JSON Schema, as committed under docs/events/, and what counts as a breaking change to it.

`make schemas` writes `docs/events/<event_type>.v<schema_version>.schema.json` from the models. A test compares
the models with the committed files on every run (tests/test_event_schemas.py): a change that breaks a consumer
of the committed version fails it until the event gets a new `schema_version` (and its own file), as
docs/subscribers.md asks. For a consumer that reads tolerantly, these changes break an event:
- a field removed, or renamed (a removal and an addition);
- a field that was required made optional (a producer may then leave out what consumers rely on);
- a field added as required, or an optional one made required (events written before lack it);
- a field's type changed, its allowed values (`enum`, `const`) changed, or a union's members changed.
Adding an optional field, and changing titles, descriptions, defaults or examples, do not.

    uv run python -m waflow_common.events.schemas docs/events docs/asyncapi.json   # writes the files

The same command writes the AsyncAPI document of every topic and event (`waflow_common.events.asyncapi`), by
default beside the folder (docs/asyncapi.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from waflow_common.events import ALL_EVENTS

Schema = dict[str, Any]

_ANNOTATIONS = {"title", "description", "default", "examples"}
_COMBINERS = ("anyOf", "oneOf", "allOf")


def schema_name(event_type: str, schema_version: int) -> str:
    return f"{event_type}.v{schema_version}.schema.json"


def event_schemas() -> dict[str, Schema]:
    """Every event's schema by its file name."""
    found: dict[str, Schema] = {}
    for cls in ALL_EVENTS:
        fields = cls.model_fields
        name = schema_name(fields["event_type"].default, fields["schema_version"].default)
        found[name] = cls.model_json_schema(mode="validation")
    return found


def _resolve(schema: Any, defs: Schema, depth: int = 0) -> Any:
    """The schema with every local `$ref` replaced by what it names."""
    if depth > 40:
        raise ValueError("schema nested too deeply (a recursive model?)")
    if isinstance(schema, list):
        return [_resolve(item, defs, depth + 1) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {k: v for k, v in schema.items() if k != "$ref"} | target
        return _resolve(merged, defs, depth + 1)
    return {k: _resolve(v, defs, depth + 1) for k, v in schema.items() if k != "$defs"}


def _bare(schema: Any) -> Any:
    """The schema without annotations, for comparing what it accepts."""
    if isinstance(schema, list):
        return [_bare(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {k: _bare(v) for k, v in schema.items() if k not in _ANNOTATIONS and k != "discriminator"}


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """What in `new` breaks a consumer of `old` (module docstring); empty when it is compatible."""
    found: list[str] = []
    _compare(_resolve(old, old.get("$defs", {})), _resolve(new, new.get("$defs", {})), "", found)
    return found


def _compare(old: Any, new: Any, path: str, found: list[str]) -> None:
    where = path or "(the event)"
    if not isinstance(old, dict) or not isinstance(new, dict):
        if _bare(old) != _bare(new):
            found.append(f"{where}: changed")
        return
    if "properties" in old or "properties" in new:
        _compare_objects(old, new, path, found)
        return
    for combiner in _COMBINERS:
        if combiner in old or combiner in new:
            members_old, members_new = old.get(combiner), new.get(combiner)
            if not isinstance(members_old, list) or not isinstance(members_new, list):
                found.append(f"{where}: {combiner} changed")
            elif len(members_old) != len(members_new):
                found.append(f"{where}: {combiner} has {len(members_new)} members, not {len(members_old)}")
            else:
                for i, (a, b) in enumerate(zip(members_old, members_new, strict=True)):
                    _compare(a, b, f"{path}[{combiner} {i}]", found)
            return
    if "items" in old or "items" in new:
        rest_old = {k: v for k, v in old.items() if k != "items"}
        rest_new = {k: v for k, v in new.items() if k != "items"}
        if _bare(rest_old) != _bare(rest_new):
            found.append(f"{where}: changed")
        _compare(old.get("items"), new.get("items"), f"{path}[]", found)
        return
    if _bare(old) != _bare(new):
        found.append(f"{where}: {json.dumps(_bare(old))} became {json.dumps(_bare(new))}")


def _compare_objects(old: Schema, new: Schema, path: str, found: list[str]) -> None:
    props_old: Schema = old.get("properties", {})
    props_new: Schema = new.get("properties", {})
    required_old, required_new = set(old.get("required", [])), set(new.get("required", []))
    for name, schema in props_old.items():
        field = f"{path}.{name}" if path else name
        if name not in props_new:
            found.append(f"{field}: removed")
            continue
        if name in required_old and name not in required_new:
            found.append(f"{field}: no longer required")
        if name not in required_old and name in required_new:
            found.append(f"{field}: now required")
        _compare(schema, props_new[name], field, found)
    for name in props_new.keys() - props_old.keys():
        if name in required_new:
            found.append(f"{path + '.' if path else ''}{name}: added as required")


def write(folder: Path) -> list[Path]:
    """Writes every event's schema into `folder`; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in sorted(event_schemas().items()):
        path = folder / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    from waflow_common.events import asyncapi

    events_folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/events")
    for written_path in write(events_folder):
        print(written_path)
    print(asyncapi.write(Path(sys.argv[2]) if len(sys.argv) > 2 else events_folder.parent / "asyncapi.json"))
