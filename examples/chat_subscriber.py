"""An example of another system following waflow's chat events (docs/subscribers.md).

It uses nothing of waflow's code, only a Kafka client, as an outside system would. It follows a tenant's
customers' messages and statuses (wa.inbound.v1) and what happens to their chats (conversation.v1). It prints one
JSON line per event, in each customer's order, each event once.

    uv run python examples/chat_subscriber.py --bootstrap 127.0.0.1:9092 --group crm-sync --tenant dev-tenant

- **Its own consumer group.** It commits after handling, so a restart goes on where it stopped (at least once).
- **Repeats.** A record can come twice; `event_id` is the event's identity, so a repeat is dropped. Here the
  seen ids are kept in memory; a real subscriber keeps them with what it writes (for example, a unique index on
  event_id).
- **Tolerant reading.** Fields it does not know are ignored. Event types and versions it does not handle are
  skipped, not treated as errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer

TOPICS = ("wa.inbound.v1", "conversation.v1")
READS = {  # the event types and schema versions this subscriber handles; others are skipped
    "message.received": {1},
    "message.status": {1},
    "chat.opened": {1},
    "chat.read": {1},
    "note.added": {1},
    "window.opened": {1},
    "window.closed": {1},
}

Handler = Callable[[dict[str, Any]], Awaitable[None]]


def summary(topic: str, key: str | None, event: dict[str, Any]) -> dict[str, Any]:
    """What this example prints of an event: where it came from, and the fields a CRM would take."""
    payload = event.get("payload") or {}
    line = {
        "topic": topic,
        "key": key,
        "event_id": event["event_id"],
        "event_type": event["event_type"],
        "tenant_id": event.get("tenant_id"),
        "occurred_at": event.get("occurred_at"),
        "wa_id": payload.get("wa_id"),
    }
    if event["event_type"] == "message.received":
        line["text"] = (payload.get("content") or {}).get("body")
    if event["event_type"] == "message.status":
        line["status"] = payload.get("status")
    return line


async def follow(
    bootstrap: str, group: str, tenant_id: str, handle: Handler, *, prefix: str = "", stop: asyncio.Event
) -> None:
    """Hands each new event of the tenant to `handle`, in each key's order, until `stop` is set."""
    consumer = AIOKafkaConsumer(
        *(prefix + topic for topic in TOPICS),
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    seen: set[str] = set()
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for partition, records in batches.items():
                for record in records:
                    event = _event(record.value)
                    if event is None or event.get("tenant_id") != tenant_id or event["event_id"] in seen:
                        continue
                    if event.get("schema_version") not in READS.get(event["event_type"], set()):
                        continue  # a type or version this subscriber does not read: skipped, not an error
                    seen.add(event["event_id"])
                    key = record.key.decode() if record.key else None
                    await handle(summary(partition.topic.removeprefix(prefix), key, event))
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()


def _event(value: bytes | None) -> dict[str, Any] | None:
    try:
        event = json.loads(value or b"")
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event_id"), str):
        return None
    return event


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--group", default="example-chat-subscriber")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--prefix", default="", help="the deployment's WAFLOW_TOPIC_PREFIX, if it has one")
    args = parser.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    async def printed(line: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    await follow(args.bootstrap, args.group, args.tenant, printed, prefix=args.prefix, stop=stop)


if __name__ == "__main__":
    asyncio.run(_main())
