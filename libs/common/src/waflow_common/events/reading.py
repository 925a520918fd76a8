"""How every consumer reads an event: as a tolerant reader.

Producers build events from the strict models (`extra="forbid"`: a typo in our own code fails loudly). Consumers
read what any producer, of any version, wrote, so that events can evolve (docs/subscribers.md has the rules):
- a field the consumer does not know is ignored (`extra="ignore"` at validation), so adding an optional field to
  an event is safe for every older consumer;
- an event type, or a `schema_version` of a known type, that the consumer does not know is `UnknownEvent`: the
  consumer skips and counts it (a breaking change is a new version, read side by side by consumers that know it,
  so an old consumer must not dead-letter it);
- anything else that does not validate is invalid, and goes to the dead-letter topic with the reason.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError

E = TypeVar("E")

log = logging.getLogger(__name__)

SKIPPED = Counter(
    "waflow_events_skipped_total",
    "Events of a type or schema version this consumer does not read (skipped, not dead-lettered)",
    ["topic", "event_type", "schema_version"],
)

# The envelope fields whose pinned Literal says "not a type (or version) I know".
_PINNED = ("event_type", "schema_version")


class UnknownEvent(ValueError):
    """A well-formed event of a type or schema version this consumer does not read."""

    def __init__(self, event_type: str, schema_version: str) -> None:
        super().__init__(f"unknown event {event_type} v{schema_version}")
        self.event_type = event_type
        self.schema_version = schema_version


def skipped(topic: str, unknown: UnknownEvent) -> None:
    """Counts (and logs) an event a consumer skipped because it does not read its type or version."""
    SKIPPED.labels(topic, unknown.event_type[:80], unknown.schema_version[:8]).inc()
    log.info("skipped an event this consumer does not read", extra={"topic": topic, "event": str(unknown)})


def read_event(adapter: TypeAdapter[E], value: bytes) -> E:
    """The event in `value`, ignoring fields it does not know; `UnknownEvent` for a type or version it does not
    know; `ValidationError` for anything else that is not an event of this topic."""
    try:
        return adapter.validate_json(value, extra="ignore")
    except ValidationError as exc:
        unknown = _unknown(exc, value)
        if unknown is not None:
            raise unknown from exc
        raise


def _unknown(exc: ValidationError, value: bytes) -> UnknownEvent | None:
    errors = exc.errors()
    # An unknown type fails a union's discriminator at the root, or a single model's pinned event_type; an unknown
    # version fails the pinned schema_version (under the member's tag in a union). What else fails then is the
    # payload read against a schema it was not written for, so it says nothing.
    if not any(_pinned_mismatch(e["type"], e["loc"]) for e in errors):
        return None
    try:
        raw: Any = json.loads(value)
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("event_type"), str):
        return None
    version = raw.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return None
    return UnknownEvent(raw["event_type"], str(version))


def _pinned_mismatch(kind: str, loc: tuple[int | str, ...]) -> bool:
    if kind == "union_tag_invalid":
        return not loc
    in_envelope = len(loc) == 1 or (len(loc) == 2 and loc[0] != "payload")  # (field) or (union tag, field)
    return kind == "literal_error" and in_envelope and loc[-1] in _PINNED
