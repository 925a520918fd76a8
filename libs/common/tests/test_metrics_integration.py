"""The shared metrics on a real Kafka: consumer lag is above 0 exactly while records wait uncommitted and back at 0
once they are applied, every assigned partition has its series, two instances of a group report disjoint
partitions that together are the topic's; the consumed, handler, published and dead-letter families move."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from waflow_common import topics
from waflow_common.events.conversation import ConversationEvent, conversation_adapter
from waflow_common.kafka import Consumer, EventPublisher, ensure_topics, make_broker
from waflow_common.metrics import LagMonitor
from waflow_common.settings import CommonSettings
from waflow_testing.fixtures import eventually, note_event

pytestmark = pytest.mark.integration

Labels = frozenset[tuple[str, str]]


def scrape() -> dict[tuple[str, Labels], float]:
    """This process's /metrics as the services serve it, parsed: (sample name, labels) -> value."""
    text = generate_latest(REGISTRY).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def lag_by_partition(group: str, topic: str) -> dict[str, float]:
    return {
        dict(have)["partition"]: v
        for (n, have), v in scrape().items()
        if n == "waflow_consumer_lag" and ("group", group) in have and ("topic", topic) in have
    }


async def test_lag_counts_the_records_waiting_uncommitted_and_the_families_move(settings: CommonSettings) -> None:
    settings = settings.model_copy(update={"waflow_topic_prefix": f"lag{uuid.uuid4().hex[:6]}."})
    await ensure_topics(settings, [s for s in topics.all_topics() if s.name.startswith(topics.CONVERSATION)])
    group = f"lag-{uuid.uuid4().hex[:6]}"
    release = asyncio.Event()
    applied: list[str] = []

    async def handle(event: ConversationEvent) -> None:
        await release.wait()  # busy: what it was handed stays uncommitted
        applied.append(str(event.event_id))

    broker = make_broker(settings, client_id="lag-test")
    Consumer(broker, settings, group_id=group, retry_delay_seconds=0.01).subscribe_batched(
        topics.CONVERSATION, conversation_adapter, handle, concurrency=4
    )
    monitor = LagMonitor(broker, settings, every_seconds=0.2)
    before = scrape()
    await broker.start()
    monitor.start()
    try:
        partitions = {str(p) for p in range(topics.CHAT_PARTITIONS)}
        # Every partition assigned to the one instance has its series, at 0 on an empty topic.
        await eventually(
            lambda: lag_by_partition(group, topics.CONVERSATION) == dict.fromkeys(partitions, 0.0),
            timeout=30,
            what="a lag series at 0 for every partition",
        )
        publisher = EventPublisher(broker, settings)
        notes = [note_event(f"waiting {i}") for i in range(5)]
        await publisher.publish_many(notes)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic(topics.CONVERSATION), b"poison {", key=b"poison")
        finally:
            await producer.stop()

        # The handler holds its batch: the five notes and the poison (dead-lettered, but its batch has not ended)
        # are not committed, so they are the group's lag, on the partitions their keys chose.
        await eventually(
            lambda: sum(lag_by_partition(group, topics.CONVERSATION).values()) == 6,
            timeout=15,
            what="a lag of 6 while the handler is busy",
        )
        await asyncio.sleep(0.5)  # a few refreshes later, still there: nothing was committed
        waiting = lag_by_partition(group, topics.CONVERSATION)
        assert sum(waiting.values()) == 6
        assert set(waiting) == partitions
        assert applied == []

        release.set()
        await eventually(lambda: len(applied) == 5, what="the notes applied")
        await eventually(
            lambda: lag_by_partition(group, topics.CONVERSATION) == dict.fromkeys(partitions, 0.0),
            timeout=15,
            what="the lag back at 0 once the batch committed",
        )
    finally:
        await monitor.stop()
        await broker.stop()
    assert lag_by_partition(group, topics.CONVERSATION) == {}, "a stopped monitor reports nothing"

    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ours = {"group": group, "topic": topics.CONVERSATION, "event_type": "note.added"}
    assert delta("waflow_events_consumed_total", **ours) == 5
    assert delta("waflow_handler_seconds_count", **ours) == 5
    assert delta("waflow_handler_seconds_bucket", le="+Inf", **ours) == 5
    assert delta("waflow_events_published_total", topic=topics.CONVERSATION, event_type="note.added") >= 5
    assert delta("waflow_dead_letters_total", topic=topics.CONVERSATION, reason="ValidationError") >= 1


async def test_two_instances_of_a_group_report_disjoint_partitions_that_cover_the_topic(
    settings: CommonSettings,
) -> None:
    settings = settings.model_copy(update={"waflow_topic_prefix": f"lag2{uuid.uuid4().hex[:6]}."})
    await ensure_topics(settings, [s for s in topics.all_topics() if s.name.startswith(topics.CONVERSATION)])
    group = f"lag2-{uuid.uuid4().hex[:6]}"

    async def handle(event: ConversationEvent) -> None:
        return None

    instances: list[tuple[KafkaBroker, LagMonitor]] = []
    try:
        for i in range(2):
            broker = make_broker(settings, client_id=f"lag-instance-{i}")
            Consumer(broker, settings, group_id=group).subscribe_batched(
                topics.CONVERSATION, conversation_adapter, handle, concurrency=2
            )
            monitor = LagMonitor(broker, settings, every_seconds=0.2)
            await broker.start()
            monitor.start()
            instances.append((broker, monitor))
        everything = {(group, topics.CONVERSATION, p) for p in range(topics.CHAT_PARTITIONS)}

        def split_between_them() -> bool:
            first, second = (set(m.lags) for _, m in instances)
            return bool(first and second and not first & second and first | second == everything)

        await eventually(split_between_them, timeout=60, what="the partitions split between the two instances")
        # The process's scrape (both instances here) has each partition once.
        assert set(lag_by_partition(group, topics.CONVERSATION)) == {str(p) for p in range(topics.CHAT_PARTITIONS)}
    finally:
        for broker, monitor in instances:
            await monitor.stop()
            await broker.stop()
