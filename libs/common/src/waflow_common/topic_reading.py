"""Reading a topic outside a consumer group's subscription (operators' tools: tail, dead letters, replay)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition


async def topic_partitions(consumer: AIOKafkaConsumer, name: str) -> list[TopicPartition]:
    """Every partition of topic `name` (empty when there is no such topic), for a started consumer."""
    known = consumer.partitions_for_topic(name)
    if not known:
        cluster = await consumer._client.fetch_all_metadata()
        known = cluster.partitions_for_topic(name)
    return [TopicPartition(name, p) for p in sorted(known or ())]


async def assign_all(consumer: AIOKafkaConsumer, name: str) -> dict[TopicPartition, int]:
    """Assigns every partition of topic `name` to a started consumer (no group subscription); returns each
    one's end offset at this moment (empty when there is no such topic)."""
    partitions = await topic_partitions(consumer, name)
    if not partitions:
        return {}
    consumer.assign(partitions)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
    return ends


class ReadStalled(RuntimeError):
    """A partition gave no record for too long while records were still due."""


class NoSuchTopic(LookupError):
    pass


@asynccontextmanager
async def whole_topic(
    bootstrap_servers: str, name: str
) -> AsyncIterator[tuple[AIOKafkaConsumer, dict[TopicPartition, int]]]:
    """A started consumer of no group with every partition of topic `name` assigned, and each partition's end
    offset at this moment (`NoSuchTopic` when there is no such topic); stopped on leaving."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        ends = await assign_all(consumer, name)
        if not ends:
            raise NoSuchTopic(f"topic {name} does not exist")
        yield consumer, ends
    finally:
        await consumer.stop()


async def records_to(
    consumer: AIOKafkaConsumer, partition: TopicPartition, end: int, *, patience_seconds: float = 60.0
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """The partition's records from the consumer's position up to offset `end` (exclusive), then stops.

    A fetch that brings nothing is not the end: a busy broker, or a consumer's first fetch, can answer within its
    timeout with no record while records are still due. So it fetches again, and only after `patience_seconds`
    without a record does it give up, loudly (`ReadStalled`): an operator's tool must not stop short in silence.
    """
    waiting_since = time.monotonic()
    while await consumer.position(partition) < end:
        batch = (await consumer.getmany(partition, timeout_ms=1000)).get(partition, [])
        if not batch:
            if time.monotonic() - waiting_since > patience_seconds:
                at = await consumer.position(partition)
                raise ReadStalled(f"{partition.topic}[{partition.partition}] gave no record at {at} of {end}")
            continue
        waiting_since = time.monotonic()
        for record in batch:
            if record.offset >= end:
                return
            yield record
