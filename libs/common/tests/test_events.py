"""Every event type has one model and an example payload that validates and round-trips."""

from __future__ import annotations

import json
import uuid
from importlib.resources import files

import pytest
from waflow_common.events import ALL_EVENTS, event_class
from waflow_common.events.envelope import EVENT_NAMESPACE, derived_event_id
from waflow_common.events.inbound import inbound_adapter

EXAMPLES = files("waflow_common.events") / "examples"
EVENT_TYPES = sorted(cls.model_fields["event_type"].default for cls in ALL_EVENTS)


def test_every_event_type_has_exactly_one_example() -> None:
    names = sorted(p.name.removesuffix(".json") for p in EXAMPLES.iterdir() if p.name.endswith(".json"))
    assert names == EVENT_TYPES


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_example_validates_against_its_model_and_round_trips(event_type: str) -> None:
    raw = json.loads((EXAMPLES / f"{event_type}.json").read_text())
    cls = event_class(event_type)
    event = cls.model_validate(raw)
    assert event.event_type == event_type
    assert event.schema_version >= 1
    assert json.loads(event.model_dump_json()) == raw
    assert cls.model_validate_json(event.to_json()) == event
    headers = event.headers()
    assert headers["event_type"] == event_type
    assert headers["schema_version"] == str(event.schema_version)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_unknown_fields_and_wrong_types_are_refused(event_type: str) -> None:
    raw = json.loads((EXAMPLES / f"{event_type}.json").read_text())
    cls = event_class(event_type)
    with pytest.raises(ValueError, match="Extra inputs"):
        cls.model_validate(raw | {"surprise": 1})
    with pytest.raises(ValueError, match="event_type"):
        cls.model_validate(raw | {"event_type": "something.else"})


def test_inbound_adapter_picks_the_type_by_event_type() -> None:
    raw = (EXAMPLES / "message.status.json").read_text()
    assert type(inbound_adapter.validate_json(raw)).__name__ == "MessageStatusEvent"


def test_derived_event_ids_are_stable_and_distinct() -> None:
    assert derived_event_id("t", "wamid.1") == derived_event_id("t", "wamid.1")
    assert derived_event_id("t", "wamid.1") != derived_event_id("u", "wamid.1")
    # The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert derived_event_id("ab", "c") != derived_event_id("a", "bc")


def test_derived_event_ids_are_uuid5_in_the_event_namespace() -> None:
    # Ids already on topics were made with uuid.uuid5: a faster derivation must give the very same ids.
    for parts in (("t", "wamid.1"), ("tenant-a", "wamid.HBgL", "read", "1700000000"), ("é", "")):
        assert derived_event_id(*parts) == uuid.uuid5(EVENT_NAMESPACE, "\x1f".join(parts))
