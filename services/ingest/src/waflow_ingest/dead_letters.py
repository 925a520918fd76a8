"""Dead letters for single items of a webhook batch that could not be read (the rest of the batch goes on)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import orjson
from waflow_common import topics
from waflow_common.events.dead_letter import DeadLetter

from waflow_ingest.domain import ItemFailure


@dataclass(frozen=True)
class OutgoingLetter:
    topic: str
    key: bytes
    value: bytes
    headers: dict[str, str]


def item_dead_letters(
    failures: list[ItemFailure], *, app_id: str, correlation_id: str, now: datetime
) -> Iterator[OutgoingLetter]:
    for failure in failures:
        letter = DeadLetter(
            topic=topics.WEBHOOKS,
            partition=-1,
            offset=-1,
            key=app_id,
            value=orjson.dumps(failure.item).decode(),
            headers={"tenant_id": failure.tenant_id or "", "correlation_id": correlation_id},
            error=failure.reason[:8000],
            error_type="InvalidWebhookItem",
            consumer="ingest",
            attempts=1,
            failed_at=now,
        )
        yield OutgoingLetter(
            topic=topics.dlq(topics.INBOUND),
            key=f"{failure.tenant_id or ''}".encode(),
            value=letter.model_dump_json().encode(),
            headers={"tenant_id": failure.tenant_id or "", "dlq_error_type": letter.error_type},
        )
