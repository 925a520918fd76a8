"""The shared wiring on the real Kafka and MongoDB-protocol server: registry, consumers and dead letters, outbox."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from waflow_common import topics
from waflow_common.admin import Admin, main
from waflow_common.events.conversation import NoteAdded, NoteAddedEvent, conversation_adapter
from waflow_common.events.envelope import Envelope
from waflow_common.kafka import Consumer, EventPublisher, make_broker
from waflow_common.mongo import make_mongo_client, service_database
from waflow_common.outbox import OutboxRelay, outbox_entry
from waflow_common.secrets import SecretBox
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry
from waflow_testing.fixtures import SeededTenant, TopicReader, eventually, note_event, put_test_tenant

pytestmark = pytest.mark.integration


async def test_registry_follows_tenants_live(
    topics_ready: CommonSettings, admin: Admin, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    registry = TenantRegistry(topics_ready, SecretBox(topics_ready.waflow_secrets_key.get_secret_value()))
    await registry.start()
    try:
        tenant_a = registry.tenant_for_api_key(tenants[0].api_key)
        assert tenant_a is not None
        assert tenant_a.tenant_id == "tenant-a"
        assert tenant_a.access_token == tenants[0].access_token
        assert registry.tenant_for_number(tenants[1].phone_number_id).tenant_id == "tenant-b"  # type: ignore[union-attr]
        assert registry.tenant_for_api_key("wf_wrong") is None
        assert tenants[0].access_token not in repr(tenant_a)
        app = registry.app(tenants[0].app_id)
        assert app is not None
        assert tenants[0].app_secret not in repr(app)

        issued = await admin.add_key("tenant-b", "second key")
        for _ in range(100):
            if registry.tenant_for_api_key(issued) is not None:
                break
            await asyncio.sleep(0.05)
        assert registry.tenant_for_api_key(issued).tenant_id == "tenant-b"  # type: ignore[union-attr]
        assert registry.tenant_for_api_key(tenants[1].api_key) is not None  # the old key still works

        gone = dataclasses.replace(
            tenants[0],
            tenant_id=f"gone-{uuid.uuid4().hex[:6]}",
            api_key=f"wf_{uuid.uuid4().hex}",
            phone_number_id=str(uuid.uuid4().int)[:15],
            waba_id=str(uuid.uuid4().int)[:15],
        )
        await put_test_tenant(admin, gone)
        await eventually(lambda: registry.tenant_for_api_key(gone.api_key) is not None)
        await eventually(lambda: admin.registry.tenant(gone.tenant_id) is not None)
        await admin.delete_tenant(gone.tenant_id)  # a tombstone on the compacted topic
        await eventually(lambda: registry.tenant(gone.tenant_id) is None)
        assert registry.tenant_for_api_key(gone.api_key) is None
        assert registry.tenant_for_number(gone.phone_number_id) is None
    finally:
        await registry.stop()


async def test_admin_command_line_puts_and_lists(
    topics_ready: CommonSettings,
    settings_env: dict[str, str],
    tenants: tuple[SeededTenant, SeededTenant],
    tmp_path: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in settings_env.items():
        monkeypatch.setenv(key, value)
    spec = {
        "tenant_id": f"cli-{uuid.uuid4().hex[:6]}",
        "name": "CLI Co",
        "app_id": tenants[0].app_id,
        "phone_numbers": [{"phone_number_id": str(uuid.uuid4().int)[:15], "waba_id": "1", "display_phone_number": "1"}],
        "access_token": "cli-access-token",
    }
    path = f"{tmp_path}/tenant.json"
    with open(path, "w") as fh:
        json.dump(spec, fh)
    assert await asyncio.to_thread(main, ["tenant", "put", path]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["new_api_key"].startswith("wf_")  # shown once
    assert "cli-access-token" not in json.dumps(created)

    assert await asyncio.to_thread(main, ["tenant", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    mine = next(t for t in listed if t["tenant_id"] == spec["tenant_id"])
    assert "new_api_key" not in mine
    assert "cli-access-token" not in json.dumps(listed)

    bad = dict(spec, tenant_id="Not A Valid Id!")
    with open(path, "w") as fh:
        json.dump(bad, fh)
    assert await asyncio.to_thread(main, ["tenant", "put", path]) == 2
    assert "tenant_id" in capsys.readouterr().err

    stolen = dict(spec, tenant_id="someone-else")  # a number belongs to one tenant only
    with open(path, "w") as fh:
        json.dump(stolen, fh)
    assert await asyncio.to_thread(main, ["tenant", "put", path]) == 2
    assert f"belongs to tenant {spec['tenant_id']}" in capsys.readouterr().err


@pytest_asyncio.fixture(loop_scope="session")
async def publisher(topics_ready: CommonSettings) -> AsyncIterator[EventPublisher]:
    broker = make_broker(topics_ready, client_id="test-publisher")
    await broker.start()
    yield EventPublisher(broker, topics_ready)
    await broker.stop()


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
async def test_poison_records_are_dead_lettered_and_the_consumer_goes_on(
    topics_ready: CommonSettings, publisher: EventPublisher, batched: bool
) -> None:
    seen: list[str] = []
    marker = uuid.uuid4().hex

    async def handle(event: Envelope[NoteAdded]) -> None:
        if event.payload.text == f"explode {marker}":
            raise RuntimeError("this handler cannot cope")
        seen.append(event.payload.text)

    broker = make_broker(topics_ready, client_id="test-consumer")
    consumer = Consumer(broker, topics_ready, group_id=f"test-{marker}", retry_delay_seconds=0.01)
    if batched:
        consumer.subscribe_batched(topics.CONVERSATION, conversation_adapter, handle, concurrency=4)
    else:
        consumer.subscribe(topics.CONVERSATION, conversation_adapter, handle)
    async with TopicReader(topics_ready, topics.dlq(topics.CONVERSATION)) as dlq:
        not_json, incomplete = f"{{not json {marker}", f'{{"event_type":"note.added","marker":"{marker}"}}'
        await publisher.publish_raw(topics.CONVERSATION, not_json.encode(), key=b"k", headers={})
        await publisher.publish_raw(topics.CONVERSATION, incomplete.encode(), key=b"k", headers={})
        await publisher.publish(note_event(f"explode {marker}"))
        await publisher.publish(note_event(f"fine {marker}"))
        await broker.start()
        try:
            for _ in range(200):
                if f"fine {marker}" in seen:
                    break
                await asyncio.sleep(0.05)
            # Only this run's letters (a new group also reads what earlier runs left on the topic).
            letters = await dlq.read(3, timeout=10, where=lambda letter: marker in letter["value"])
        finally:
            await broker.stop()
    assert f"fine {marker}" in seen
    assert len(letters) == 3
    by_type = {letter["error_type"]: letter for letter in letters}
    assert by_type["ValidationError"]["consumer"] == f"test-{marker}"
    assert "invalid event" in by_type["ValidationError"]["error"]
    assert by_type["RuntimeError"]["attempts"] == 3
    assert "cannot cope" in by_type["RuntimeError"]["error"]
    assert any(letter["value"] == not_json for letter in letters)
    assert all(letter["topic"] == topics_ready.topic(topics.CONVERSATION) for letter in letters)


async def test_a_batched_consumer_keeps_each_keys_order_applies_keys_side_by_side_and_commits(
    topics_ready: CommonSettings, publisher: EventPublisher
) -> None:
    marker = uuid.uuid4().hex
    keys = [f"chat-{i}" for i in range(6)]
    sent = {key: [f"{key} {n} {marker}" for n in range(15)] for key in keys}
    for n in range(15):  # interleaved, as many chats write at once
        for key in keys:
            event = note_event(sent[key][n])
            await publisher.publish_raw(topics.CONVERSATION, event.to_json(), key=key.encode(), headers={})
    seen: dict[str, list[str]] = {key: [] for key in keys}
    in_flight = most_in_flight = 0

    async def handle(event: Envelope[NoteAdded]) -> None:
        nonlocal in_flight, most_in_flight
        key = event.payload.text.split(" ")[0]
        if not event.payload.text.endswith(marker):
            return
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await asyncio.sleep(0.002 * (hash(event.payload.text) % 5))  # uneven work
        seen[key].append(event.payload.text)
        in_flight -= 1

    async def run_consumer(until: Callable[[], bool]) -> None:
        broker = make_broker(topics_ready, client_id="test-batched")
        Consumer(broker, topics_ready, group_id=f"test-{marker}").subscribe_batched(
            topics.CONVERSATION, conversation_adapter, handle, concurrency=4
        )
        await broker.start()
        try:
            await eventually(until, timeout=20)
        finally:
            await broker.stop()

    await run_consumer(lambda: sum(map(len, seen.values())) == 90)
    assert seen == sent
    assert 1 < most_in_flight <= 4
    # Committed: the group's next consumer starts after them (a newer record proves it is running).
    last = note_event(f"chat-0 last {marker}")
    await publisher.publish_raw(topics.CONVERSATION, last.to_json(), key=b"chat-0", headers={})
    await run_consumer(lambda: seen["chat-0"][-1:] == [last.payload.text])
    assert seen["chat-0"] == [*sent["chat-0"], last.payload.text]
    assert all(seen[key] == sent[key] for key in keys[1:])


async def test_outbox_publishes_parked_events_once_and_clears_them(
    topics_ready: CommonSettings, publisher: EventPublisher
) -> None:
    client = make_mongo_client(topics_ready)
    chats = service_database(client, topics_ready, "waflow_outbox_test")["chats"]

    async def park(text: str) -> tuple[str, NoteAddedEvent]:
        event, doc_id = note_event(text), uuid.uuid4().hex
        await chats.update_one(
            {"_id": doc_id},
            {"$set": {"tenant_id": "tenant-a", "notes": 1}, "$push": {"outbox": outbox_entry(event)}},
            upsert=True,
        )
        return doc_id, event

    relay = OutboxRelay({"chats": chats}, publisher)
    notified_id, notified = await park("notified")
    orphan_id, orphan = await park("left by a process that died before notifying")
    ids = {str(notified.event_id), str(orphan.event_id)}
    async with TopicReader(topics_ready, topics.CONVERSATION) as reader:
        relay.notify("chats", notified_id)
        assert await relay.drain() == 1
        relay.notify("chats", notified_id)
        assert await relay.drain() == 0  # already cleared: nothing is published twice
        assert await relay.scan(older_than=0) == 1  # the orphan is found by the scan
        assert await relay.drain() == 1
        records = await reader.read_records(3, timeout=2.0, where=lambda v: v["event_id"] in ids)
    assert sorted(r.value["event_id"] for r in records) == sorted(ids)
    assert {r.key for r in records} == {"tenant-a:15550001111"}
    assert {r.headers["event_type"] for r in records} == {"note.added"}
    for doc_id in (notified_id, orphan_id):
        stored = await chats.find_one({"_id": doc_id})
        assert stored is not None
        assert stored["outbox"] == []
        assert stored["notes"] == 1
    await client.close()
