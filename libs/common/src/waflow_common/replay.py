"""Replaying a tenant's webhooks: the raw deliveries archived on whatsapp.webhooks.v1 in a time range, sent to
ingest again exactly as Meta sent them (body and signature).

Ingest reads them as it read them the first time, and every event it makes has the id it had then (derived
from the wamid, the status and its time), so each consumer drops what it applied already: a replay changes only
what went missing (a consumer's data restored from a backup, a bug fixed in how a delivery is read). A delivery
that carried entries of other tenants too is sent whole, so theirs are read again as well, with the same
result. Ingest archives the replayed delivery again: the archive is a log of what ingest was given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import httpx
from pydantic import ValidationError
from rich.progress import Progress

from waflow_common import topics
from waflow_common.events.webhooks import WebhookReceivedEvent
from waflow_common.settings import CommonSettings
from waflow_common.topic_reading import NoSuchTopic, records_to, whole_topic


class ReplayError(RuntimeError):
    pass


@dataclass
class Replayed:
    scanned: int = 0  # archived deliveries read in the range's offsets
    matched: int = 0  # of the tenant, received in the range
    sent: int = 0  # accepted by ingest again
    refused: int = 0  # answered with something else than 200


async def archived(
    settings: CommonSettings, tenant_id: str, since: datetime, until: datetime, progress: Progress | None = None
) -> AsyncIterator[tuple[WebhookReceivedEvent | None, bool]]:
    """Every archived delivery from `since` on (by the records' time), up to the archive's end when it began:
    (the event, whether it is the tenant's and received in the range); None for a record that is not one."""
    try:
        async with whole_topic(settings.kafka_bootstrap_servers, settings.topic(topics.WEBHOOKS)) as (consumer, ends):
            partitions = list(ends)
            starts = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
            todo = {tp: (starts[tp].offset if starts[tp] is not None else ends[tp]) for tp in partitions}
            total = sum(ends[tp] - todo[tp] for tp in partitions)
            task = progress.add_task("archived deliveries", total=total) if progress is not None else None
            for tp in partitions:
                consumer.seek(tp, todo[tp])
                async for record in records_to(consumer, tp, ends[tp]):
                    if progress is not None and task is not None:
                        progress.advance(task)
                    try:
                        event = WebhookReceivedEvent.model_validate_json(record.value or b"")
                    except ValidationError:
                        yield None, False
                        continue
                    received = event.payload.received_at
                    yield event, tenant_id in event.payload.tenant_ids and since <= received < until
    except NoSuchTopic as exc:
        raise ReplayError(str(exc)) from exc


async def replay(
    settings: CommonSettings,
    ingest_url: str,
    tenant_id: str,
    since: datetime,
    until: datetime,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Replayed:
    """Sends the tenant's archived deliveries of [since, until) to ingest again (`dry_run`: only counts them)."""
    if until <= since:
        raise ReplayError("--until must be after --since")
    done = Replayed()
    async with httpx.AsyncClient(base_url=ingest_url, timeout=30) as http:
        async for event, wanted in archived(settings, tenant_id, since, until, progress):
            done.scanned += 1
            if event is None or not wanted:
                continue
            done.matched += 1
            if dry_run:
                continue
            answer = await http.post(
                f"/webhooks/whatsapp/{event.payload.app_id}",
                content=event.payload.body.encode(),
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": event.payload.signature},
            )
            if answer.status_code == 200:
                done.sent += 1
            else:
                done.refused += 1
    return done
