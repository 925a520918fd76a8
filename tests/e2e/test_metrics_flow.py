"""Every service's /metrics through one end-to-end flow, on the stack as processes (waflow_testing.stack), with two
instances of conversation: a customer writes through the simulator, an agent answers, statuses come back until
read, a send WhatsApp refuses (Meta's 131026), an unreadable webhook and a poison record on wa.inbound.v1. Each
family an operator watches moves in the service that owns it, and the consumer lag of every group has a series
for every partition of its topics, reported by exactly one instance, back at 0 once the flow is consumed.

(That lag is above 0 while records wait uncommitted is proven on a real Kafka in
libs/common/tests/test_metrics_integration.py: a process cannot answer a scrape while it is held.)
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from waflow_common import topics
from waflow_testing.fixtures import REPO, Infra, eventually
from waflow_testing.stack import CONSUMERS, Stack
from waflow_testing.traffic import until

pytestmark = pytest.mark.e2e

WAIT = 60.0
Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]

# Each consumer service's groups and the topics each reads (README's diagram; handlers.py of each service).
GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "conversation": {"conversation": (topics.INBOUND, topics.CONTACTS, topics.OUTBOUND_RESULTS)},
    "contacts": {"contacts": (topics.INBOUND,), "contacts-conversation": (topics.CONVERSATION,)},
    "outbound": {
        "waflow-outbound-commands": (topics.OUTBOUND_COMMANDS,),
        "waflow-outbound-inbound": (topics.INBOUND,),
        "waflow-outbound-contacts": (topics.CONTACTS,),
        "waflow-outbound-conversation": (topics.CONVERSATION,),
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(infra: Infra) -> AsyncIterator[Stack]:
    workdir = REPO / ".data" / "e2e" / f"metrics-{uuid.uuid4().hex[:6]}"
    async with Stack(
        kafka_bootstrap=infra.kafka_bootstrap,
        mongodb_uri=infra.mongodb_uri,
        workdir=workdir,
        label="metrics",
        instances={"conversation": 2, "contacts": 1, "outbound": 1},
    ) as stack:
        await stack.numbers_behave(status_flow="read")
        yield stack
    shutil.rmtree(workdir, ignore_errors=True)


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(stack: Stack, http: httpx.AsyncClient) -> dict[str, list[Samples]]:
    """Every instance's /metrics, by service."""
    found: dict[str, list[Samples]] = {}
    for service in ("ingest", *CONSUMERS):
        for url in stack.urls(service):
            answer = await http.get(f"{url}/metrics")
            assert answer.status_code == 200
            found.setdefault(service, []).append(parse(answer.text))
    return found


def total(instances: list[Samples], name: str, **labels: str) -> float:
    """The sum over a service's instances of every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for samples in instances for (n, have), v in samples.items() if n == name and wanted <= have)


# (service, sample, labels): each must have grown over the flow.
MOVING: list[tuple[str, str, dict[str, str]]] = [
    ("ingest", "waflow_ingest_webhooks_total", {"outcome": "accepted"}),
    ("ingest", "waflow_events_published_total", {"topic": topics.WEBHOOKS, "event_type": "webhook.received"}),
    ("ingest", "waflow_events_published_total", {"topic": topics.INBOUND, "event_type": "message.received"}),
    ("ingest", "waflow_events_published_total", {"topic": topics.INBOUND, "event_type": "message.status"}),
    ("ingest", "waflow_dead_letters_total", {"topic": topics.INBOUND, "reason": "InvalidWebhook"}),
    ("conversation", "waflow_http_requests_total", {"method": "POST", "route": "/v1/chats/{chat_id}/messages"}),
    ("conversation", "waflow_http_request_seconds_count", {"route": "/v1/chats/{chat_id}/messages"}),
    ("conversation", "waflow_events_published_total", {"topic": topics.OUTBOUND_COMMANDS}),
    ("conversation", "waflow_events_published_total", {"topic": topics.CONVERSATION, "event_type": "window.opened"}),
    ("conversation", "waflow_dead_letters_total", {"topic": topics.INBOUND, "reason": "ValidationError"}),
    ("contacts", "waflow_events_published_total", {"topic": topics.CONTACTS, "event_type": "contact.changed"}),
    ("contacts", "waflow_dead_letters_total", {"topic": topics.INBOUND, "reason": "ValidationError"}),
    ("outbound", "waflow_events_published_total", {"topic": topics.OUTBOUND_RESULTS, "event_type": "send.accepted"}),
    ("outbound", "waflow_events_published_total", {"topic": topics.OUTBOUND_RESULTS, "event_type": "send.rejected"}),
    ("outbound", "waflow_dead_letters_total", {"topic": topics.INBOUND, "reason": "ValidationError"}),
    ("outbound", "waflow_outbound_results_total", {"outcome": "accepted", "code": "none"}),
    ("outbound", "waflow_outbound_results_total", {"outcome": "undeliverable", "code": "131026"}),
    ("outbound", "waflow_outbound_calls_total", {"answer": "accepted"}),
    ("outbound", "waflow_outbound_calls_total", {"answer": "131026"}),
    ("outbound", "waflow_outbound_permit_wait_seconds_count", {"outcome": "start"}),
]
# (service, group, topic, event_type) each consumer applied: consumed and timed.
CONSUMED: list[tuple[str, str, str, str]] = [
    ("conversation", "conversation", topics.INBOUND, "message.received"),
    ("conversation", "conversation", topics.INBOUND, "message.status"),
    ("conversation", "conversation", topics.OUTBOUND_RESULTS, "send.accepted"),
    ("conversation", "conversation", topics.OUTBOUND_RESULTS, "send.rejected"),
    ("contacts", "contacts", topics.INBOUND, "message.received"),
    ("contacts", "contacts-conversation", topics.CONVERSATION, "window.opened"),
    ("outbound", "waflow-outbound-conversation", topics.CONVERSATION, "window.opened"),
    ("outbound", "waflow-outbound-commands", topics.OUTBOUND_COMMANDS, "send.requested"),
    ("outbound", "waflow-outbound-inbound", topics.INBOUND, "message.received"),
    ("outbound", "waflow-outbound-contacts", topics.CONTACTS, "contact.changed"),
]
for _service, _group, _topic, _type in CONSUMED:
    for _name in ("waflow_events_consumed_total", "waflow_handler_seconds_count"):
        MOVING.append((_service, _name, {"group": _group, "topic": _topic, "event_type": _type}))


def not_moved(before: dict[str, list[Samples]], after: dict[str, list[Samples]]) -> list[str]:
    return [
        f"{service} {name}{labels}"
        for service, name, labels in MOVING
        if total(after[service], name, **labels) <= total(before[service], name, **labels)
    ]


def lag_problems(scraped: dict[str, list[Samples]], partitions: dict[str, int]) -> list[str]:
    """Whatever keeps the lag series from being exactly one per partition of each group's topics (over the
    instances), all at 0."""
    problems: list[str] = []
    for service, groups in GROUPS.items():
        for group, read in groups.items():
            for topic in read:
                seen: dict[str, int] = {}
                for samples in scraped[service]:
                    for (name, have), lag in samples.items():
                        labels = dict(have)
                        if name == "waflow_consumer_lag" and labels["group"] == group and labels["topic"] == topic:
                            seen[labels["partition"]] = seen.get(labels["partition"], 0) + 1
                            if lag != 0:
                                problems.append(f"{group} {topic}[{labels['partition']}] lag {lag}")
                wanted = {str(p) for p in range(partitions[topic])}
                if set(seen) != wanted:
                    problems.append(f"{group} {topic}: series for {len(seen)} of {len(wanted)} partitions")
                problems += [f"{group} {topic}[{p}] reported {n} times" for p, n in seen.items() if n > 1]
    return problems


async def test_every_family_moves_through_a_flow_and_the_lag_of_every_partition_returns_to_0(stack: Stack) -> None:
    tenant = stack.tenant_a
    number = tenant.phone_number_id
    wa_id = "1555" + str(uuid.uuid4().int)[:7]
    async with httpx.AsyncClient(timeout=30) as http:
        before = await scrape(stack, http)

        # A customer writes; the chat shows in conversation.
        written = await stack.sim.customer_message(number, wa_id, text="Is my order shipped?", name="Ana")
        assert written.delivered

        async def chat() -> str | None:
            listed = await http.get(
                f"{stack.url('conversation')}/v1/chats", params={"search": wa_id}, headers=tenant.auth
            )
            found = [c["chat_id"] for c in listed.json()["items"] if c["wa_id"] == wa_id and c["last_message"]]
            return str(found[0]) if found else None

        chat_id: str = await eventually(chat, timeout=WAIT, what="the customer's chat")
        messages = f"/v1/chats/{chat_id}/messages"

        # The agent answers; WhatsApp accepts, and its statuses come back until read.
        answer = await http.post(
            f"{stack.url('conversation')}{messages}",
            json={"type": "text", "body": "It ships today."},
            headers=tenant.auth,
        )
        assert answer.status_code == 202, answer.text
        message_id = answer.json()["message"]["message_id"]

        async def read() -> bool:
            got = await http.get(f"{stack.url('conversation')}{messages}/{message_id}", headers=tenant.auth)
            return bool(got.json()["status"] == "read")

        await until(read, WAIT, "the answer read")

        # The next send is refused by WhatsApp with Meta's code 131026 (undeliverable).
        await stack.sim.inject_fault(number, code=131026, count=1)
        refused = await http.post(
            f"{stack.url('conversation')}{messages}", json={"type": "text", "body": "Hello?"}, headers=tenant.auth
        )
        assert refused.status_code == 202, refused.text

        # An authentic webhook that is no WhatsApp webhook (ingest archives and dead-letters it), and a poison
        # record that each consumer of wa.inbound.v1 dead-letters.
        unreadable = {"object": "whatsapp_business_account", "entry": "not a list"}
        assert (await stack.sim.raw_webhook(tenant.app.app_id, unreadable)).delivered
        producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(stack.settings.topic(topics.INBOUND), b"not json {", key=b"metrics-poison")
            partitions = {t: len(await producer.partitions_for(stack.settings.topic(t))) for t in topics.CONSUMED}
        finally:
            await producer.stop()

        last: list[str] = []

        async def all_moved() -> bool:
            nonlocal last
            last = not_moved(before, await scrape(stack, http))
            return not last

        await until(all_moved, WAIT, "every family moving", lambda: last)

        async def lag_settled() -> bool:
            nonlocal last
            last = lag_problems(await scrape(stack, http), partitions)
            return not last

        await until(lag_settled, WAIT, "a lag series at 0 for every partition of every group", lambda: last[:20])

        # Never a series per tenant or customer.
        personal = {"tenant_id", "tenant", "wa_id", "user_id", "customer", "phone_number_id"}
        for service, instances in (await scrape(stack, http)).items():
            for samples in instances:
                for name, labels in samples:
                    assert not (name.startswith("waflow_") and personal & {k for k, _ in labels}), (service, name)
