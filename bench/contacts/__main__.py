"""Benchmark contacts: search and filter latency with a large tenant among others, and inbound events/s.

    uv run python -m bench.contacts [--contacts 100000] [--other-tenants 10] [--other-size 1000]
                                    [--queries 300] [--inbound 2000]

Uses the Kafka and MongoDB-protocol server of KAFKA_BOOTSTRAP_SERVERS / MONGODB_URI (those `make run` starts by
default), in a namespace of its own that it drops afterwards. Creates the service's indexes, seeds contacts
through the repository (bulk insert, with their search keys), starts the contacts app in this process, then
measures:
  - start-up of the app over the stored contacts (it loads nothing: every listing is a query);
  - GET /v1/contacts through the app (ASGI, no sockets) per query kind: p50/p99 over --queries requests;
  - a contact read by _id (what each change costs, with its compare-and-set write);
  - inbound-to-contact: --inbound message.received events on wa.inbound.v1 until their contact.changed events
    are on contacts.v1 (real consumer, store, outbox relay).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer
from waflow_common import topics
from waflow_common.admin import Admin, AppFile, TenantFile
from waflow_common.events.contacts import ContactListRef, ContactSnapshot
from waflow_common.events.inbound import MessageReceived, MessageReceivedEvent, TextContent
from waflow_common.events.tenants import PhoneNumber
from waflow_common.kafka import EventPublisher, ensure_topics, make_broker
from waflow_common.mongo import make_mongo_client
from waflow_common.secrets import generate_key
from waflow_contacts import domain
from waflow_contacts.main import ContactsSettings, create_app
from waflow_contacts.repository import ContactRepository

from bench.figures import figure

FIRST = ["María", "José", "Ana", "Lucía", "Jürgen", "Zoë", "François", "Mehmet", "Aiko", "Olu", "Sven", "Chloé"]
FIRST += ["Pedro", "Joana", "Ivan", "Fatima", "Noah", "Emma", "Liam", "Sofía", "Mateo", "Valentina", "Ömer"]
LAST = ["García", "Müller", "Smith", "Rossi", "Dubois", "Yilmaz", "Nakamura", "Okafor", "Silva", "Kowalski"]
LAST += ["López", "Martín", "Schmidt", "Bianchi", "Moreau", "Sato", "Nilsson", "Costa", "Novak", "O'Brien"]
TAGS = [f"tag-{i}" for i in range(20)]
APP_ID = "990000000001"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def seed_contact(tenant_id: str, i: int, lists: list[ContactListRef], rng: random.Random) -> ContactSnapshot:
    wa_id = f"346{i:08d}"
    now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i)
    return ContactSnapshot(
        contact_id=domain.contact_id_for(tenant_id, wa_id),
        wa_id=wa_id,
        phone_e164=f"+{wa_id}",
        name=f"{rng.choice(FIRST)} {rng.choice(LAST)}" if rng.random() < 0.7 else None,
        profile_name=f"{rng.choice(FIRST)} {rng.choice(LAST)[0]}." if rng.random() < 0.8 else None,
        tags=rng.sample(TAGS, rng.choice([0, 0, 1, 1, 2, 3])),
        lists=[lst for lst in lists if rng.random() < 0.05],
        fields={"city": rng.choice(["Sevilla", "Berlin", "Lagos"]), "orders": rng.randint(0, 40)},
        deleted=(deleted := rng.random() < 0.01),
        blacklisted=deleted,
        first_seen_at=now,
        last_seen_at=now,
        updated_at=now,
        version=1,
    )


async def seed(repository: ContactRepository, tenant_id: str, count: int, lists: list[ContactListRef]) -> None:
    rng = random.Random(tenant_id)
    batch: list[ContactSnapshot] = []
    for i in range(count):
        batch.append(seed_contact(tenant_id, i, lists, rng))
        if len(batch) == 20_000:
            await repository.insert_many(tenant_id, batch)
            batch = []
    await repository.insert_many(tenant_id, batch)


async def put_tenants(settings: ContactsSettings, tenant_ids: list[str]) -> None:
    async with Admin(settings) as admin:
        await admin.put_app(AppFile(app_id=APP_ID, name="bench", app_secret="bench-secret", verify_token="bench-token"))
        while admin.registry.app(APP_ID) is None:
            await asyncio.sleep(0.05)
        for n, tenant_id in enumerate(tenant_ids):
            number = PhoneNumber(phone_number_id=f"99{n:010d}", waba_id=f"98{n:010d}", display_phone_number="1555")
            await admin.put_tenant(
                TenantFile(
                    tenant_id=tenant_id,
                    name=tenant_id,
                    app_id=APP_ID,
                    phone_numbers=[number],
                    access_token="bench-token",
                    api_keys=[f"key-{tenant_id}"],
                )
            )


QUERIES: dict[str, dict[str, Any]] = {
    "search name (common)": {"q": "mar"},
    "search name (accented)": {"q": "jurgen mull"},
    "search name (rare, few hits)": {"q": "zzz"},
    "search phone (formatted)": {"q": "+34 6 0001"},
    "search phone (national)": {"q": "(600) 012"},
    "filter tag": {"tag": "tag-3"},
    "filter tag + search": {"tag": "tag-3", "q": "ana"},
    "filter list": {"list": None},
    "filter deleted": {"deleted": "true"},
    "listing, no filter": {},
}


async def measure_queries(client: httpx.AsyncClient, list_id: str, count: int) -> None:
    print(f"\nGET /v1/contacts (limit 50), {count} requests per kind, p50 / p99 / max in ms:")
    worst = (0.0, "")
    for label, params in QUERIES.items():
        params = {k: (list_id if k == "list" else v) for k, v in params.items()}
        latencies: list[float] = []
        cursor = None
        hits = 0
        for i in range(count):
            # Every other request asks for the next page, so cursors are measured too.
            page_params = params | ({"cursor": cursor} if cursor and i % 2 else {})
            t = time.perf_counter()
            response = await client.get("/v1/contacts", params=page_params)
            latencies.append((time.perf_counter() - t) * 1000)
            response.raise_for_status()
            body = response.json()
            hits = max(hits, len(body["items"]))
            cursor = body["next_cursor"]
        print(
            f"  {label:<30} p50 {pct(latencies, 50):7.1f}   p99 {pct(latencies, 99):7.1f}"
            f"   max {max(latencies):7.1f}   (page size {hits})"
        )
        worst = max(worst, (pct(latencies, 99), label.strip()))
    figure(f"GET /v1/contacts p99, the slowest kind ({worst[1]})", worst[0], unit="ms", target="< 100 ms at 100k")


async def measure_point_reads(repository: ContactRepository, tenant_id: str, count: int, runs: int) -> None:
    """A contact by id: what every change and every listed contact costs on the MongoDB-protocol server."""
    rng = random.Random(1)
    latencies = []
    for _ in range(runs):
        contact_id = domain.contact_id_for(tenant_id, f"346{rng.randrange(count):08d}")
        t = time.perf_counter()
        await repository.get(tenant_id, contact_id)
        latencies.append((time.perf_counter() - t) * 1000)
    print(f"\ncontact by _id, {runs} reads: p50 {pct(latencies, 50):.1f} ms   p99 {pct(latencies, 99):.1f} ms")


async def measure_inbound(settings: ContactsSettings, tenant_id: str, count: int) -> None:
    broker = make_broker(settings, client_id="bench-contacts")
    await broker.start()
    publisher = EventPublisher(broker, settings)
    reader = AIOKafkaConsumer(
        settings.topic(topics.CONTACTS),
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"bench-{uuid.uuid4().hex}",
        auto_offset_reset="latest",
    )
    await reader.start()
    while not reader.assignment():
        await asyncio.sleep(0.05)
    for tp in reader.assignment():
        await reader.seek_to_end(tp)
        await reader.position(tp)
    now = datetime.now(UTC)
    events = [
        MessageReceivedEvent.new(
            tenant_id=tenant_id,
            payload=MessageReceived(
                wamid=f"wamid.bench{i}",
                phone_number_id="990000000000",
                waba_id="980000000000",
                # Half the messages come from known contacts (a refresh), half from new ones (a create).
                wa_id=f"346{i // 2:08d}" if i % 2 else f"347{i:08d}",
                profile_name="Bench",
                type="text",
                timestamp=now + timedelta(milliseconds=i),
                content=TextContent(body="hola"),
            ),
        )
        for i in range(count)
    ]
    causes = {str(e.event_id) for e in events}
    t = time.perf_counter()
    for start in range(0, count, 500):
        await publisher.publish_many(events[start : start + 500])
    published = time.perf_counter() - t
    seen = 0
    while seen < count and time.perf_counter() - t < 600:
        batches = await reader.getmany(timeout_ms=500)
        for records in batches.values():
            for record in records:
                seen += json.loads(record.value).get("causation_id") in causes
    elapsed = time.perf_counter() - t
    print(
        f"\ninbound-to-contact: {count} message.received (half new contacts, half refreshes) published in "
        f"{published:.1f} s; {seen} contact.changed on contacts.v1 after {elapsed:.1f} s: {seen / elapsed:.0f} events/s"
    )
    figure(f"inbound-to-contact events/s, {count} events", seen / elapsed)
    await reader.stop()
    await broker.stop()


async def main(args: argparse.Namespace) -> None:
    run = uuid.uuid4().hex[:6]
    settings = ContactsSettings(
        waflow_topic_prefix=f"bench{run}.",
        waflow_db_prefix=f"bench{run}_",
        waflow_secrets_key=generate_key(),
        log_level="WARNING",
    )
    big = "bench-big"
    others = [f"bench-other-{i}" for i in range(args.other_tenants)]
    await ensure_topics(settings)
    await put_tenants(settings, [big, *others])
    mongo = make_mongo_client(settings)
    repository = ContactRepository(mongo[settings.database("waflow_contacts")])
    lists = [ContactListRef(list_id=f"l_bench{i}", name=f"Campaign {i}") for i in range(5)]
    await repository.ensure_indexes()
    for lst in lists:
        await repository.insert_list(big, lst.list_id, lst.name, lst.name.casefold(), datetime.now(UTC))
    try:
        t = time.perf_counter()
        await seed(repository, big, args.contacts, lists)
        for tenant_id in others:
            await seed(repository, tenant_id, args.other_size, [])
        total = args.contacts + args.other_size * len(others)
        seeded = time.perf_counter() - t
        print(
            f"seeded {args.contacts} contacts in one tenant + {len(others)} tenants x {args.other_size} "
            f"({total} in all) in {seeded:.1f} s ({total / seeded:.0f} contacts/s, bulk insert)"
        )
        app = create_app(settings)
        t = time.perf_counter()
        async with app.router.lifespan_context(app):
            started = time.perf_counter() - t
            print(f"app start-up with {total} stored contacts: {started:.2f} s")
            figure(f"contacts start-up, {total} stored contacts", started, unit="s")
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer key-{big}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://contacts", headers=headers) as client:
                await measure_queries(client, lists[0].list_id, args.queries)
            await measure_point_reads(repository, big, args.contacts, 200)
            await measure_inbound(settings, big, args.inbound)
    finally:
        await mongo.drop_database(settings.database("waflow_contacts"))
        await mongo.close()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=100_000, help="contacts in the large tenant")
    parser.add_argument("--other-tenants", type=int, default=10)
    parser.add_argument("--other-size", type=int, default=1000, help="contacts in each other tenant")
    parser.add_argument("--queries", type=int, default=300, help="requests per query kind")
    parser.add_argument("--inbound", type=int, default=2000, help="message.received events for the events/s figure")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
