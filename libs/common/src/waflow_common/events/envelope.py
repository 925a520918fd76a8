"""The envelope every waflow event travels in, and how its deterministic ids are made."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict

# Fixed namespace: event ids derived from a source id (a wamid) are the same in every process and every run.
EVENT_NAMESPACE = uuid.UUID("5b0e2a1c-7f3d-4c8e-9a61-3d2f0b7c9e41")
_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def derived_event_id(*parts: str) -> uuid.UUID:
    """uuid5 over the parts, so a redelivered source (same wamid, status, ...) makes the same event id.

    What uuid.uuid5(EVENT_NAMESPACE, ...) computes, without its per-call import and namespace conversion (it
    runs twice per webhook on ingest's hot path)."""
    digest = hashlib.sha1(_NAMESPACE_BYTES + "\x1f".join(parts).encode(), usedforsecurity=False).digest()
    return uuid.UUID(bytes=digest[:16], version=5)


class Payload(BaseModel):
    """Base of every event payload: frozen, and strict about unknown fields so that typos fail loudly."""

    model_config = ConfigDict(frozen=True, extra="forbid")


PayloadT = TypeVar("PayloadT")


class Envelope(BaseModel, Generic[PayloadT]):
    """Fields shared by every event; subclasses pin `event_type`, `schema_version`, the topic and the key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: ClassVar[str]

    event_id: uuid.UUID
    event_type: str
    schema_version: int
    # None only for platform-level events that belong to no single tenant (apps, raw webhook deliveries).
    tenant_id: str | None
    occurred_at: AwareDatetime
    produced_at: AwareDatetime
    correlation_id: str
    causation_id: uuid.UUID | None = None
    payload: PayloadT

    def key(self) -> str:
        """The Kafka key: by default the tenant and customer, so one chat stays in one partition.

        The customer is `waflow_common.customers.customer_id`: the BSUID (`user_id`) when the payload has one,
        the wa_id otherwise."""
        user_id = getattr(self.payload, "user_id", None)
        if user_id:
            return f"{self.tenant_id}:{user_id}"
        wa_id = getattr(self.payload, "wa_id", None)
        return f"{self.tenant_id}:{wa_id}" if wa_id is not None else str(self.tenant_id)

    def headers(self) -> dict[str, str]:
        return {
            "event_type": self.event_type,
            "schema_version": str(self.schema_version),
            "tenant_id": self.tenant_id or "",
            "event_id": str(self.event_id),
        }

    @classmethod
    def new(
        cls,
        *,
        tenant_id: str | None,
        payload: Any,
        occurred_at: datetime | None = None,
        event_id: uuid.UUID | None = None,
        correlation_id: str | None = None,
        causation_id: uuid.UUID | None = None,
        clock: Clock = utcnow,
    ) -> Self:
        now = clock()
        return cls(
            event_id=event_id or uuid.uuid4(),
            # __pydantic_fields__ is model_fields without its descriptor's cost (this runs per event).
            event_type=cls.__pydantic_fields__["event_type"].default,
            schema_version=cls.__pydantic_fields__["schema_version"].default,
            tenant_id=tenant_id,
            occurred_at=occurred_at or now,
            produced_at=now,
            correlation_id=correlation_id or str(uuid.uuid4()),
            causation_id=causation_id,
            payload=payload,
        )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode()


class EventError(ValueError):
    """A record that cannot be read as an event of its topic."""
