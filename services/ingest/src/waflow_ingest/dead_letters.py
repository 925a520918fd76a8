"""Dead letters for single items of a webhook batch that could not be read (the rest of the batch goes on)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import orjson
from waflow_common import topics
from waflow_common.events.dead_letter import DeadLetter
from waflow_common.producer import Record
from waflow_common.settings import CommonSettings

from waflow_ingest.domain import ItemFailure


def item_dead_letters(
    failures: list[ItemFailure], settings: CommonSettings, *, app_id: str, correlation_id: str, now: datetime
) -> Iterator[Record]:
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
        yield Record(
            topic=settings.topic(topics.dlq(topics.INBOUND)),
            value=letter.model_dump_json().encode(),
            key=f"{failure.tenant_id or ''}".encode(),
            headers=[("tenant_id", (failure.tenant_id or "").encode()), ("dlq_error_type", letter.error_type.encode())],
        )
