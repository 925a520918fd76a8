"""Faults, from outside: processes SIGKILLed mid-stream, Kafka and the database server stopped under load, poison
records on every consumed topic. Every test drives the stack only through the simulator, the services' HTTP APIs
and Kafka, and checks the end state exactly: each message once in its chat's timeline, one chat and one contact
per customer, each agent's send once at WhatsApp (the simulator), nothing good dead-lettered.

Each test has a short form (`make test`, a few hundred messages) and a long form (`make soak`: WAFLOW_SOAK=1,
10,000 messages).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from waflow_common import topics
from waflow_common.admin import Admin
from waflow_testing.fixtures import Infra, local_infra
from waflow_testing.stack import Stack, StackTenant

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


# What the simulator reports for a send once its whole status flow arrived (numbers are set to "read").
FINAL = "read"


@dataclass(frozen=True)
class Customer:
    tenant: StackTenant
    phone_number_id: str
    wa_id: str


@dataclass
class Traffic:
    """A run of customers writing in and agents answering, and what each of them should end up with."""

    stack: Stack
    http: httpx.AsyncClient
    customers: list[Customer]
    label: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    inbound: dict[str, list[str]] = field(default_factory=dict)  # wa_id -> texts the customer wrote
    outbound: dict[str, list[str]] = field(default_factory=dict)  # wa_id -> texts agents sent
    chat_ids: dict[str, str] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)  # 5xx answers other than 503 (retry later)

    @classmethod
    def of(cls, stack: Stack, http: httpx.AsyncClient, count: int, first: int) -> Traffic:
        """`count` customers (Spanish mobile numbers from `first` on) spread over every business number."""
        numbers = [(t, n.phone_number_id) for t in stack.tenants for n in t.numbers]
        customers = [
            Customer(numbers[i % len(numbers)][0], numbers[i % len(numbers)][1], str(34_600_000_000 + first + i))
            for i in range(count)
        ]
        return cls(stack, http, customers)

    def by_wa_id(self) -> dict[str, Customer]:
        return {c.wa_id: c for c in self.customers}

    # --- making traffic ------------------------------------------------------------------------------------

    async def write_in(self, customer: Customer, text: str) -> None:
        """The customer writes; the simulator delivers in the background and retries like Meta does."""
        self.inbound.setdefault(customer.wa_id, []).append(text)
        # Our own wamid, so that a control call retried after a dropped connection is the same message (then
        # delivered twice, as Meta's duplicates are, which the stack must absorb).
        wamid = wamid_for(customer.wa_id)
        for attempt in range(20):
            try:
                await self.stack.sim.customer_message(
                    customer.phone_number_id,
                    customer.wa_id,
                    text=text,
                    name=f"Customer {customer.wa_id}",
                    wamid=wamid,
                    wait=False,
                )
                return
            except httpx.TransportError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)

    async def open_chats(self) -> None:
        """Each customer writes first (opening the 24-hour window); returns once every chat shows."""
        for customer in self.customers:
            await self.write_in(customer, f"{self.label} hello from {customer.wa_id}")
        wanted = {c.wa_id for c in self.customers}

        async def all_chats() -> bool:
            for tenant in self.stack.tenants:
                for chat in await self.chats(tenant):
                    if chat["wa_id"] in wanted and chat["last_message"]:
                        self.chat_ids[chat["wa_id"]] = chat["chat_id"]
            return wanted <= set(self.chat_ids)

        await until(all_chats, 180, "every customer's chat")

    async def send(self, customer: Customer, text: str) -> None:
        """An agent answers through the conversation API; a failed call is retried with the same key, as a
        client would (a retried POST with the same Idempotency-Key sends nothing more)."""
        self.outbound.setdefault(customer.wa_id, []).append(text)
        url = f"{self.stack.url('conversation')}/v1/chats/{self.chat_ids[customer.wa_id]}/messages"
        headers = customer.tenant.auth | {"Idempotency-Key": f"{self.label}-{text}"}
        while True:
            try:
                answer = await self.http.post(url, json={"type": "text", "body": text}, headers=headers)
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if answer.status_code < 500:
                assert answer.status_code == 202, answer.text
                return
            if answer.status_code != 503:
                self.server_errors.append(f"{answer.status_code} {answer.text[:200]}")
            await asyncio.sleep(0.2)

    async def stream(
        self, inbound: int, outbound: int, fault: Callable[[], Coroutine[Any, Any, None]] | None = None, at: float = 0.4
    ) -> None:
        """`inbound` customer messages and `outbound` agent sends, interleaved at random; `fault` runs once when
        `at` of them have been issued, while the stream goes on."""
        rng = random.Random(self.label)
        operations = [("in", i, rng.choice(self.customers)) for i in range(inbound)]
        operations += [("out", i, rng.choice(self.customers)) for i in range(outbound)]
        rng.shuffle(operations)
        fault_at = int(len(operations) * at)
        fault_task: asyncio.Task[None] | None = None
        queue: asyncio.Queue[tuple[str, int, Customer]] = asyncio.Queue()
        for operation in operations:
            queue.put_nowait(operation)
        issued = 0

        async def worker() -> None:
            nonlocal issued, fault_task
            while not queue.empty():
                direction, i, customer = queue.get_nowait()
                issued += 1
                if fault is not None and fault_task is None and issued >= fault_at:
                    fault_task = asyncio.create_task(fault())
                if direction == "in":
                    await self.write_in(customer, f"{self.label} in {i} from {customer.wa_id}")
                else:
                    await self.send(customer, f"{self.label} out {i} to {customer.wa_id}")

        await asyncio.gather(*(worker() for _ in range(8)))
        if fault_task is not None:
            await fault_task

    # --- reading the end state -----------------------------------------------------------------------------

    async def chats(self, tenant: StackTenant) -> list[dict[str, Any]]:
        return await self.pages(f"{self.stack.url('conversation')}/v1/chats", tenant)

    async def pages(self, url: str, tenant: StackTenant) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200} | ({"cursor": cursor} if cursor else {})
            page = await self.get(url, params, tenant)
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    async def get(self, url: str, params: dict[str, Any], tenant: StackTenant) -> Any:
        """A read, retried as any client would while the server restarts (or drops a kept-alive connection)."""
        for _ in range(100):
            try:
                answer = await self.http.get(url, params=params, headers=tenant.auth)
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if answer.status_code != 503:
                answer.raise_for_status()
                return answer.json()
            await asyncio.sleep(0.2)
        raise AssertionError(f"GET {url} kept failing")

    async def problems(self, *, unknown_outcomes: bool = False) -> list[str]:
        """Every difference between what the stack shows and what was sent; empty when the end state is exact.

        `unknown_outcomes`: a send whose process was killed during its call to WhatsApp is reported failed with
        `outcome_unknown` (outbound never calls twice: Meta's /messages has no idempotency key); such a send may
        have reached WhatsApp once or not at all."""
        found: list[str] = []
        ours = self.by_wa_id()
        for tenant in self.stack.tenants:
            shown = Counter(c["wa_id"] for c in await self.chats(tenant) if c["wa_id"] in ours)
            contacts = await self.pages(f"{self.stack.url('contacts')}/v1/contacts", tenant)
            known = Counter(c["wa_id"] for c in contacts if c["wa_id"] in ours)
            for customer in (c for c in self.customers if c.tenant == tenant):
                if shown[customer.wa_id] != 1:
                    found.append(f"{customer.wa_id}: {shown[customer.wa_id]} chats")
                if known[customer.wa_id] != 1:
                    found.append(f"{customer.wa_id}: {known[customer.wa_id]} contacts")
        sent_at_whatsapp = Counter(
            (m.to, m.body["text"]["body"])
            for m in await self.stack.sim.sent()
            if m.type == "text" and m.error_code is None and isinstance(m.body, dict)
        )
        for (to, text), times in sent_at_whatsapp.items():
            if to in ours and text not in self.outbound.get(to, []):
                found.append(f"{to}: {text!r} reached WhatsApp {times}x but no agent sent it")
        timelines = await asyncio.gather(*(self.timeline(c) for c in self.customers))
        for customer, timeline in zip(self.customers, timelines, strict=True):
            wa_id = customer.wa_id
            written = Counter(m["content"].get("body") for m in timeline if m["direction"] == "in")
            if written != Counter(self.inbound.get(wa_id, [])):
                found.append(f"{wa_id}: timeline in {diff(written, Counter(self.inbound.get(wa_id, [])))}")
            answered = [m for m in timeline if m["direction"] == "out"]
            texts = Counter(m["content"].get("body") for m in answered)
            if texts != Counter(self.outbound.get(wa_id, [])):
                found.append(f"{wa_id}: timeline out {diff(texts, Counter(self.outbound.get(wa_id, [])))}")
            for message in answered:
                text = message["content"].get("body")
                at_whatsapp = sent_at_whatsapp[(wa_id, text)]
                unknown = (message.get("failure") or {}).get("reason") == "outcome_unknown"
                if unknown and unknown_outcomes and at_whatsapp <= 1:
                    continue
                if at_whatsapp != 1 or message["status"] != FINAL:
                    found.append(f"{wa_id}: {text!r} sent {at_whatsapp}x, status {message['status']}")
        return found

    async def timeline(self, customer: Customer) -> list[dict[str, Any]]:
        url = f"{self.stack.url('conversation')}/v1/chats/{self.chat_ids[customer.wa_id]}/messages"
        return [m for m in await self.pages(url, customer.tenant) if m["kind"] == "message"]

    async def settle(self, timeout: float, *, unknown_outcomes: bool = False) -> None:
        """Waits for the exact end state, then checks it once more a little later: a duplicate applied late
        (a redelivered webhook, a replayed record) would show up then."""
        assert await self.stack.sim.drain(timeout), "the simulator still has webhook deliveries in flight"
        failed = [d for d in await self.stack.sim.deliveries() if not d.delivered]
        assert not failed, f"webhooks the simulator gave up on: {failed[:5]}"
        last: list[str] = []

        async def exact() -> bool:
            nonlocal last
            last = await self.problems(unknown_outcomes=unknown_outcomes)
            return not last

        await until(exact, timeout, "the exact end state", lambda: last[:20])
        assert not self.server_errors, f"answers other than 202 or 503 (retry): {self.server_errors[:5]}"
        await asyncio.sleep(3)
        again = await self.problems(unknown_outcomes=unknown_outcomes)
        assert not again, again[:20]


def diff(shown: Counter[Any], expected: Counter[Any]) -> str:
    missing, extra = expected - shown, shown - expected
    return f"missing {sorted(missing.elements())[:3]} ({missing.total()}), extra {sorted(extra.elements())[:3]}"


async def until(
    probe: Callable[[], Awaitable[bool]], timeout: float, what: str, last: Callable[[], Any] | None = None
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; last: {last() if last else None}")
        await asyncio.sleep(1.0)


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


def wamid_for(wa_id: str) -> str:
    """A new message id shaped like Meta's."""
    return "wamid." + base64.b64encode(f"{wa_id}:{uuid.uuid4().hex}".encode()).decode()


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
    """Not JSON, JSON of the wrong shape, and a well-formed envelope of an event type nobody knows."""
    unknown = {
        "event_id": str(uuid.uuid4()),
        "event_type": "something.new",
        "schema_version": 1,
        "tenant_id": "tenant-a",
        "occurred_at": "2026-01-01T00:00:00Z",
        "produced_at": "2026-01-01T00:00:00Z",
        "correlation_id": label,
        "causation_id": None,
        "payload": {"poison": label},
    }
    return [f"{label} not json {{".encode(), json.dumps({"poison": label}).encode(), json.dumps(unknown).encode()]


async def test_poison_records_go_to_their_dlq_and_the_consumers_go_on(stack: Stack, http: httpx.AsyncClient) -> None:
    label = f"poison-{uuid.uuid4().hex[:6]}"
    records = poisons(label)
    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for topic in CONSUMERS_OF:
            name = stack.settings.topic(topic)
            for partition in sorted(await producer.partitions_for(name)):
                for value in records:
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

    async def applied() -> bool:
        found = await http.get(f"{contacts}/v1/contacts/by-phone/{other}", headers=tenant.auth)
        chat = await http.get(f"{conversation}/v1/chats/{traffic.chat_ids[customer.wa_id]}", headers=tenant.auth)
        return found.status_code == 200 and chat.json()["display_name"] == f"{label} renamed"

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
        for i, value in enumerate(poisons(label)):
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


async def dead_letters(stack: Stack) -> list[dict[str, Any]]:
    """Every record on the stack's dead-letter topics, read from the beginning to their current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.settings.kafka_bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [
            TopicPartition(name, p)
            for name in (stack.settings.topic(topics.dlq(t)) for t in topics.CONSUMED)
            for p in cluster.partitions_for_topic(name) or ()
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        letters: list[dict[str, Any]] = []
        while True:
            behind = [tp for tp, end in ends.items() if await consumer.position(tp) < end]
            if not behind:
                return letters
            for records in (await consumer.getmany(*behind, timeout_ms=500)).values():
                letters += [json.loads(r.value) for r in records]
    finally:
        await consumer.stop()


async def backlog(stack: Stack) -> dict[str, int]:
    """Records each of the stack's consumer groups has yet to commit, by group (Kafka's view of their lag)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.settings.kafka_bootstrap_servers, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        prefix = stack.settings.group("")
        groups = [g[0] for g in await admin.list_consumer_groups() if g[0].startswith(prefix)]
        lag: dict[str, int] = {}
        for group in groups:
            committed = await admin.list_consumer_group_offsets(group)
            ends = await consumer.end_offsets(list(committed))
            lag[group.removeprefix(prefix)] = sum(ends[tp] - max(0, o.offset) for tp, o in committed.items())
        return lag
    finally:
        await consumer.stop()
        await admin.close()


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


async def busy(stack: Stack, service: str, timeout: float = 10.0) -> None:
    """Waits (a little) until the service has records to work through, so that the kill lands mid-work; the
    groups of a service are named after it (they are visible in Kafka and on its dead letters)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        lag = await backlog(stack)
        if any(n for group, n in lag.items() if group == service or service in group.split("-")[:2]):
            return
        await asyncio.sleep(0.05)
