"""Consumers are tolerant readers: unknown fields are ignored, unknown event types and versions are told apart
from invalid events (skipped and counted, not dead-lettered)."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from waflow_common.events import ALL_EVENTS, event_class
from waflow_common.events.conversation import conversation_adapter
from waflow_common.events.inbound import inbound_adapter
from waflow_common.events.outbound import outbound_command_adapter, outbound_result_adapter
from waflow_common.events.reading import UnknownEvent, read_event
from waflow_common.events.tenants import tenants_adapter

EXAMPLES = files("waflow_common.events") / "examples"
EVENT_TYPES = sorted(cls.model_fields["event_type"].default for cls in ALL_EVENTS)
UNIONS: list[TypeAdapter[Any]] = [
    inbound_adapter,
    conversation_adapter,
    outbound_command_adapter,
    outbound_result_adapter,
    tenants_adapter,
]


def _example(event_type: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((EXAMPLES / f"{event_type}.json").read_text())
    return raw


def _adapters(event_type: str) -> list[TypeAdapter[Any]]:
    """The event's own model, and the union of its topic when it has one."""
    own: TypeAdapter[Any] = TypeAdapter(event_class(event_type))
    example = json.dumps(_example(event_type))
    return [own, *(a for a in UNIONS if _reads(a, example))]


def _reads(adapter: TypeAdapter[Any], value: str) -> bool:
    try:
        adapter.validate_json(value)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_fields_a_consumer_does_not_know_are_ignored(event_type: str) -> None:
    raw = _example(event_type)
    newer = raw | {"added_later": {"any": "thing"}, "payload": raw["payload"] | {"optional_since_v1_1": 7}}
    for adapter in _adapters(event_type):
        event = read_event(adapter, json.dumps(newer).encode())
        assert json.loads(event.model_dump_json()) == raw


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_a_type_or_version_the_consumer_does_not_know_is_unknown_not_invalid(event_type: str) -> None:
    raw = _example(event_type)
    for adapter in _adapters(event_type):
        with pytest.raises(UnknownEvent) as unknown_type:
            read_event(adapter, json.dumps(raw | {"event_type": "chat.pinned", "extra": 1}).encode())
        assert (unknown_type.value.event_type, unknown_type.value.schema_version) == ("chat.pinned", "1")
        with pytest.raises(UnknownEvent) as unknown_version:
            read_event(adapter, json.dumps(raw | {"schema_version": 2, "payload": {"reshaped": True}}).encode())
        assert (unknown_version.value.event_type, unknown_version.value.schema_version) == (event_type, "2")


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_an_event_that_breaks_its_own_schema_is_still_invalid(event_type: str) -> None:
    raw = _example(event_type)
    broken = [
        raw | {"event_id": "not-a-uuid"},
        {k: v for k, v in raw.items() if k != "payload"},
        raw | {"payload": "text"},
        raw | {"event_type": 5},
    ]
    for adapter in _adapters(event_type):
        for value in broken:
            with pytest.raises(ValidationError):
                read_event(adapter, json.dumps(value).encode())
        with pytest.raises(ValidationError):
            read_event(adapter, b"not json")
