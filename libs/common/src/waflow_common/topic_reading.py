"""Reading a topic outside a consumer group's subscription (operators' tools: tail, dead letters, replay)."""

from __future__ import annotations

from collections.abc import AsyncIterator

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


async def records_to(
    consumer: AIOKafkaConsumer, partition: TopicPartition, end: int
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """The partition's records from the consumer's position up to offset `end` (exclusive), then stops."""
    while await consumer.position(partition) < end:
        batch = (await consumer.getmany(partition, timeout_ms=1000)).get(partition, [])
        if not batch:
            return
        for record in batch:
            if record.offset >= end:
                return
            yield record
