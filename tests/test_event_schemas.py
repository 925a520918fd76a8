"""The events' JSON Schemas committed under docs/events/ stay what the models say, and no change breaks a
consumer of a committed version without a new schema_version (waflow_common.events.schemas)."""

from __future__ import annotations

import json

from waflow_common.events.schemas import breaking_changes, event_schemas
from waflow_testing.fixtures import REPO

COMMITTED = REPO / "docs" / "events"


def test_no_change_breaks_a_committed_schema() -> None:
    current = event_schemas()
    problems: list[str] = []
    for path in sorted(COMMITTED.glob("*.schema.json")):
        if path.name not in current:
            problems.append(f"{path.name}: no event has this type and version any more")
            continue
        for change in breaking_changes(json.loads(path.read_text()), current[path.name]):
            problems.append(f"{path.name}: {change}")
    assert not problems, (
        "these changes break consumers of a committed event version; give the event a new schema_version "
        "(a new file) instead:\n" + "\n".join(problems)
    )


def test_the_committed_schemas_are_the_models_schemas() -> None:
    """A compatible change is committed too (`make schemas`), so the files say what producers write now."""
    current = event_schemas()
    committed = {path.name: json.loads(path.read_text()) for path in COMMITTED.glob("*.schema.json")}
    missing = sorted(current.keys() - committed.keys())
    assert not missing, f"run `make schemas`: no committed schema for {missing}"
    stale = sorted(name for name, schema in current.items() if committed[name] != schema)
    assert not stale, f"run `make schemas`: the committed schemas of {stale} differ from the models"
