"""Faults, from outside: processes SIGKILLed mid-stream, Kafka and the database server stopped under load, poison
records on every consumed topic. Every test drives the stack only through the simulator, the services' HTTP APIs
and Kafka, and checks the end state exactly: each message once in its chat's timeline, one chat and one contact
per customer, each agent's send once at WhatsApp (the simulator), nothing good dead-lettered.

Each test has a short form (`make test`, a few hundred messages) and a long form (`make soak`: WAFLOW_SOAK=1,
10,000 messages).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
import uuid
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from waflow_common import topics
from waflow_common.admin import Admin
from waflow_testing.fixtures import Infra, local_infra
from waflow_testing.stack import Stack
from waflow_testing.traffic import Customer, Traffic, busy, dead_letters, until, wamid_for

pytestmark = pytest.mark.e2e

SOAK = os.environ.get("WAFLOW_SOAK") == "1"


def sized(short: int, long: int) -> list[Any]:
    """The short form always; the long form only under `make soak`."""
    return [
        pytest.param(short, id="short"),
        pytest.param(
            long, id="long", marks=[pytest.mark.soak, pytest.mark.skipif(not SOAK, reason="long form: make soak")]
        ),
    ]


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


_first = iter(range(0, 10_000_000, 100_000))


# --- SIGKILL mid-stream ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["conversation", "contacts", "outbound", "ingest"])
@pytest.mark.parametrize("size", sized(240, 10_000))
async def test_a_process_killed_mid_stream_loses_and_duplicates_nothing(
    stack: Stack, http: httpx.AsyncClient, service: str, size: int
) -> None:
    traffic = Traffic.of(stack, http, max(30, size // 10), next(_first))
    await traffic.open_chats()

    async def kill_and_restart() -> None:
        await busy(stack, service)
        stack.kill(service)
        await asyncio.sleep(1)
        await stack.restart(service)

    outbound = size // 3
    await traffic.stream(size - len(traffic.customers) - outbound, outbound, kill_and_restart)
    await traffic.settle(120 + size / 20, unknown_outcomes=service == "outbound")
    assert await dead_letters(stack) == []


# --- Kafka and the database server stopped under load -------------------------------------------------------------


def needs_own_servers(infra: Infra) -> None:
    if infra.local_data_dir is None:
        pytest.skip(
            "stops a server: runs only when this test run started its own Kafka and database server (no "
            "WAFLOW_TEST_KAFKA_BOOTSTRAP/WAFLOW_TEST_MONGODB_URI and no Docker); shared servers are never stopped"
        )


@pytest.mark.parametrize("size", sized(240, 10_000))
async def test_kafka_stopped_for_20s_during_ingest_loses_nothing(
    stack: Stack, infra: Infra, http: httpx.AsyncClient, size: int
) -> None:
    needs_own_servers(infra)
    traffic = Traffic.of(stack, http, max(30, size // 10), next(_first))
    await traffic.open_chats()
    customer = traffic.customers[0]
    direct = f"{traffic.label} written while Kafka was down"
    body, signature = signed_message(customer, direct)
    endpoint = stack.webhook_url(customer.tenant.app.app_id)
    answers: list[int] = []

    async def kafka_outage() -> None:
        loop = asyncio.get_running_loop()
        stopped = loop.time()
        await asyncio.to_thread(local_infra, "stop", "kafka", infra)
        # What Meta sees while Kafka is down: 503 (not 200, so Meta keeps the delivery and retries it).
        answers.append((await http.post(endpoint, content=body, headers=signature)).status_code)
        await asyncio.sleep(max(0.0, 20 - (loop.time() - stopped)))
        await asyncio.to_thread(local_infra, "start", "kafka", infra)

    outbound = size // 4
    await traffic.stream(size - len(traffic.customers) - outbound - 1, outbound, kafka_outage, at=0.2)
    assert answers == [503]
    # Meta retries what was not acknowledged; ours lands once Kafka is back.
    while (await http.post(endpoint, content=body, headers=signature)).status_code != 200:
        await asyncio.sleep(1)
    traffic.inbound[customer.wa_id].append(direct)
    await traffic.settle(180 + size / 20)
    retried = [d for d in await stack.sim.deliveries() if d.attempts > 1]
    assert retried, "no webhook needed a retry: Kafka was not down while the simulator delivered"
    assert await dead_letters(stack) == []


@pytest.mark.parametrize("size", sized(240, 10_000))
async def test_database_server_stopped_under_load_skips_and_dead_letters_nothing(
    stack: Stack, infra: Infra, http: httpx.AsyncClient, size: int
) -> None:
    needs_own_servers(infra)
    traffic = Traffic.of(stack, http, max(30, size // 10), next(_first))
    await traffic.open_chats()

    async def database_outage() -> None:
        await busy(stack, "outbound")  # sends in progress when the server goes: they must neither stall nor fail
        await asyncio.to_thread(local_infra, "stop", "mongo", infra)
        await asyncio.sleep(15)
        await asyncio.to_thread(local_infra, "start", "mongo", infra)

    outbound = size // 4
    await traffic.stream(size - len(traffic.customers) - outbound, outbound, database_outage, at=0.2)
    await traffic.settle(180 + size / 20)
    assert await dead_letters(stack) == []


def signed_message(customer: Customer, text: str) -> tuple[bytes, dict[str, str]]:
    """A customer's text message as Meta posts it, signed with the app's secret."""
    number = next(n for n in customer.tenant.numbers if n.phone_number_id == customer.phone_number_id)
    wamid = wamid_for(customer.wa_id)
    envelope = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": number.waba_id,
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": number.display_phone_number,
                                "phone_number_id": number.phone_number_id,
                            },
                            "contacts": [{"profile": {"name": "Direct"}, "wa_id": customer.wa_id}],
                            "messages": [
                                {
                                    "from": customer.wa_id,
                                    "id": wamid,
                                    "timestamp": str(int(time.time())),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    body = json.dumps(envelope, separators=(",", ":")).encode()
    digest = hmac.new(customer.tenant.app.app_secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}


# --- poison records -------------------------------------------------------------------------------------------------

# Who consumes each topic (README's diagram); each of them dead-letters a poison record on its own.
CONSUMERS_OF = {
    topics.INBOUND: 3,  # conversation, contacts, outbound
    topics.CONTACTS: 2,  # conversation, outbound
    topics.CONVERSATION: 2,  # contacts, outbound
    topics.OUTBOUND_COMMANDS: 1,  # outbound
    topics.OUTBOUND_RESULTS: 1,  # conversation
}


def poisons(label: str) -> list[bytes]:
    """Not JSON, and JSON of the wrong shape."""
    return [f"{label} not json {{".encode(), json.dumps({"poison": label}).encode()]


def _envelope(label: str, event_type: str, schema_version: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "schema_version": schema_version,
        "tenant_id": "tenant-a",
        "occurred_at": "2026-01-01T00:00:00Z",
        "produced_at": "2026-01-01T00:00:00Z",
        "correlation_id": label,
        "causation_id": None,
        "payload": payload,
    }


def evolved(label: str) -> list[bytes]:
    """What a newer producer may write: an event type nobody here knows, and a known type at a schema version
    nobody here reads. Consumers skip and count them; neither is a poison."""
    return [
        json.dumps(_envelope(label, "something.new", 1, {"new": label})).encode(),
        json.dumps(_envelope(label, "message.received", 2, {"reshaped": label})).encode(),
    ]


def with_fields_added(label: str, customer: Customer) -> bytes:
    """A message.received as a newer ingest could write it: the same event with fields this version does not
    know, in the envelope and in the payload (added optional fields need no new version)."""
    number = next(n for n in customer.tenant.numbers if n.phone_number_id == customer.phone_number_id)
    payload = {
        "wamid": wamid_for(customer.wa_id),
        "phone_number_id": number.phone_number_id,
        "display_phone_number": number.display_phone_number,
        "waba_id": number.waba_id,
        "wa_id": customer.wa_id,
        "user_id": None,
        "username": None,
        "profile_name": f"{label} newer",
        "type": "text",
        "timestamp": "2026-01-01T00:00:00Z",
        "content": {"type": "text", "body": f"{label} from a newer ingest"},
        "context": None,
        "referral": None,
        "errors": [],
        "added_in_a_later_release": {"anything": [1, 2]},
    }
    envelope = _envelope(label, "message.received", 1, payload) | {"tenant_id": customer.tenant.tenant_id}
    return json.dumps(envelope | {"trace": {"span": label}}).encode()


async def skipped(stack: Stack, topic: str, event_type: str) -> float:
    """How many records of `event_type` on `topic` every instance of every service skipped, from /metrics."""
    total = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for service in ("conversation", "contacts", "outbound"):
            for url in stack.urls(service):
                text = (await http.get(f"{url}/metrics")).text
                for line in text.splitlines():
                    if (
                        line.startswith("waflow_events_skipped_total{")
                        and f'topic="{topic}"' in line
                        and f'event_type="{event_type}"' in line
                    ):
                        total += float(line.rsplit(" ", 1)[1])
    return total


async def test_poison_records_go_to_their_dlq_and_the_consumers_go_on(stack: Stack, http: httpx.AsyncClient) -> None:
    label = f"poison-{uuid.uuid4().hex[:6]}"
    records = poisons(label)
    newer = evolved(label)
    partitions_of: dict[str, int] = {}
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for topic in CONSUMERS_OF:
            name = stack.settings.topic(topic)
            partitions = sorted(await producer.partitions_for(name))
            partitions_of[topic] = len(partitions)
            for partition in partitions:
                for value in [*records, *newer]:
                    await producer.send_and_wait(name, value, key=f"{label}:{partition}".encode(), partition=partition)
    finally:
        await producer.stop()

    # Good records after the poison on every topic: a customer writes (wa.inbound.v1), an agent opens a chat
    # with a new number (conversation.v1 -> contacts makes its contact), renames the customer's contact
    # (contacts.v1 -> the chat shows the name) and answers (outbound.commands.v1 -> WhatsApp; outbound.results.v1
    # -> the message's status).
    traffic = Traffic.of(stack, http, 1, next(_first))
    await traffic.open_chats()
    customer = traffic.customers[0]
    tenant = customer.tenant
    contacts, conversation = stack.url("contacts"), stack.url("conversation")
    other = str(int(customer.wa_id) + 1)
    opened = await http.post(f"{conversation}/v1/chats", json={"phone": f"+{other}"}, headers=tenant.auth)
    assert opened.status_code in (200, 201), opened.text
    contact = (await http.get(f"{contacts}/v1/contacts/by-phone/{customer.wa_id}", headers=tenant.auth)).json()
    renamed = await http.patch(
        f"{contacts}/v1/contacts/{contact['contact_id']}", json={"name": f"{label} renamed"}, headers=tenant.auth
    )
    assert renamed.status_code == 200, renamed.text
    await traffic.send(customer, f"{label} answer")
    # A message.received with fields this version does not know, from a newer ingest: applied like any other.
    newcomer = Customer(tenant, customer.phone_number_id, str(int(customer.wa_id) + 2))
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            stack.settings.topic(topics.INBOUND),
            with_fields_added(label, newcomer),
            key=f"{tenant.tenant_id}:{newcomer.wa_id}".encode(),
        )
    finally:
        await producer.stop()

    async def applied() -> bool:
        found = await http.get(f"{contacts}/v1/contacts/by-phone/{other}", headers=tenant.auth)
        chat = await http.get(f"{conversation}/v1/chats/{traffic.chat_ids[customer.wa_id]}", headers=tenant.auth)
        newest = await http.get(f"{contacts}/v1/contacts/by-phone/{newcomer.wa_id}", headers=tenant.auth)
        listed = await traffic.chats(tenant)
        return (
            found.status_code == 200
            and chat.json()["display_name"] == f"{label} renamed"
            and newest.status_code == 200
            and newest.json()["profile_name"] == f"{label} newer"
            and any(c["wa_id"] == newcomer.wa_id for c in listed)
        )

    await until(applied, 60, "the good records after the poison")
    await traffic.settle(60)

    letters = await dead_letters(stack)
    ours = [letter for letter in letters if label in letter["value"]]
    assert [letter for letter in letters if label not in letter["value"]] == [], "a good record was dead-lettered"
    for topic, consumers in CONSUMERS_OF.items():
        name = stack.settings.topic(topic)
        partitions = len({letter["partition"] for letter in ours if letter["topic"] == name})
        for value in records:
            text = value.decode()
            on_topic = [letter for letter in ours if letter["topic"] == name and letter["value"] == text]
            assert len(on_topic) == consumers * partitions, (topic, text, len(on_topic))
            assert len({letter["consumer"] for letter in on_topic}) == consumers
            assert all(letter["error"] and letter["error_type"] for letter in on_topic)
    assert not [letter for letter in ours if letter["value"] in {v.decode() for v in newer}], (
        "an evolved event was dead-lettered"
    )
    for topic, consumers in CONSUMERS_OF.items():
        for event_type in ("something.new", "message.received"):
            wanted = consumers * partitions_of[topic]

            async def counted(topic: str = topic, event_type: str = event_type, wanted: int = wanted) -> bool:
                return await skipped(stack, topic, event_type) >= wanted

            await until(counted, 60, f"every consumer of {topic} counting its skipped {event_type}")
    # Every consumer went past its poison: it committed beyond each record it dead-lettered.
    await until(lambda: committed_past(stack, ours), 60, "every consumer committed past the poison")


async def test_a_poison_record_on_tenants_v1_is_skipped_and_the_registry_goes_on(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """tenants.v1 has no dead-letter policy: every process re-reads the compacted topic at each start, so each
    would dead-letter the same record again and again; a record that does not parse is logged and skipped. What
    must hold: every service applies the good records after it, live and after a restart."""
    label = f"poison-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for i, value in enumerate([*poisons(label), *evolved(label)]):
            await producer.send_and_wait(
                stack.settings.topic(topics.TENANTS), value, key=f"tenant:{label}-{i}".encode()
            )
    finally:
        await producer.stop()
    async with Admin(stack.settings) as admin:
        new_key = await admin.add_key(stack.tenant_b.tenant_id, label)
    auth = {"Authorization": f"Bearer {new_key}"}
    reads = {
        "conversation": "/v1/chats",
        "contacts": "/v1/contacts",
        "outbound": "/v1/templates",
    }

    async def new_key_works() -> bool:
        for service, path in reads.items():
            try:
                answer = await http.get(stack.url(service) + path, headers=auth)
            except httpx.TransportError:
                return False
            if answer.status_code != 200:
                return False
        return True

    await until(new_key_works, 60, "the key added after the poison works in every service")
    for service in reads:
        await stack.restart(service)
    await until(new_key_works, 60, "the key works after a restart that re-read the poison")


async def committed_past(stack: Stack, letters: list[dict[str, Any]]) -> bool:
    """Whether each letter's consumer group has committed an offset beyond that letter's record."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        for group in {letter["consumer"] for letter in letters}:
            committed = await admin.list_consumer_group_offsets(stack.settings.group(group))
            for letter in (letter for letter in letters if letter["consumer"] == group):
                offset = committed.get(TopicPartition(letter["topic"], letter["partition"]))
                if offset is None or offset.offset <= letter["offset"]:
                    return False
        return True
    finally:
        await admin.close()
