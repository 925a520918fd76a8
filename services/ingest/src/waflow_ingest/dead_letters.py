"""Dead letters for the parts of a webhook delivery that could not be read (the rest of the delivery goes on)."""

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
    failures: list[ItemFailure],
    settings: CommonSettings,
    *,
    app_id: str,
    correlation_id: str,
    now: datetime,
    body: str,
    archive_id: str,
) -> Iterator[Record]:
    """One record on wa.inbound.v1.dlq per failure. Each names the archived delivery it came from
    (`archive_event_id`, the event id of its webhook.received on whatsapp.webhooks.v1), so the whole body can be
    found and replayed once the reason is fixed."""
    for failure in failures:
        tenant_id = failure.tenant_id or ""
        letter = DeadLetter(
            topic=topics.WEBHOOKS,
            partition=-1,
            offset=-1,
            key=app_id,
            value=body if failure.whole_body else _serialised(failure),
            headers={"tenant_id": tenant_id, "correlation_id": correlation_id, "archive_event_id": archive_id},
            error=failure.reason[:8000],
            error_type="InvalidWebhook" if failure.whole_body else "InvalidWebhookItem",
            consumer="ingest",
            attempts=1,
            failed_at=now,
        )
        yield Record(
            topic=settings.topic(topics.dlq(topics.INBOUND)),
            value=letter.model_dump_json().encode(),
            key=tenant_id.encode(),
            headers=[("tenant_id", tenant_id.encode()), ("dlq_error_type", letter.error_type.encode())],
        )


def _serialised(failure: ItemFailure) -> str:
    if failure.item is None:
        return ""
    try:
        return orjson.dumps(failure.item).decode()
    except orjson.JSONEncodeError:
        # Nested deeper than JSON encoders go: the item is in the archived body (archive_event_id).
        return ""
