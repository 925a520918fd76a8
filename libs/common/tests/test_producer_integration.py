"""RecordProducer on the real Kafka: callers waiting together share batches, yet each key keeps its order, every
caller learns of its own records only, and a record as large as Meta's biggest webhook goes through."""

from __future__ import annotations

import asyncio
import json

import pytest
from waflow_common import topics
from waflow_common.kafka import PublishError
from waflow_common.producer import Record, RecordProducer
from waflow_common.settings import CommonSettings
from waflow_testing.fixtures import TopicReader

pytestmark = pytest.mark.integration


def record(settings: CommonSettings, topic: str, key: str, n: int, pad: int = 0) -> Record:
    value = json.dumps({"key": key, "n": n, "pad": "x" * pad}).encode()
    return Record(settings.topic(topic), value, key.encode(), [("n", str(n).encode())])


async def test_concurrent_callers_share_batches_and_each_key_keeps_its_order(topics_ready: CommonSettings) -> None:
    producer = RecordProducer(topics_ready, client_id="test-record-producer")
    keys = [f"order-{i}" for i in range(12)]
    async with TopicReader(topics_ready, topics.INBOUND) as inbound, TopicReader(topics_ready, topics.WEBHOOKS) as raw:
        await producer.start()
        try:

            async def caller(key: str) -> None:
                for n in range(25):  # each call: one record on each topic, as ingest does
                    await producer.send_all(
                        [record(topics_ready, topics.WEBHOOKS, key, n), record(topics_ready, topics.INBOUND, key, n)]
                    )

            await asyncio.gather(*(caller(k) for k in keys))
            # Every send_all returned, so everything is acknowledged and readable now.
            got = await inbound.read(len(keys) * 25, where=lambda v: v.get("key") in keys)
            archived = await raw.read(len(keys) * 25, where=lambda v: v.get("key") in keys)
        finally:
            await producer.stop()
    for values in (got, archived):
        assert len(values) == len(keys) * 25
        for key in keys:
            assert [v["n"] for v in values if v["key"] == key] == list(range(25))


async def test_a_record_of_meta_s_largest_webhook_size_is_accepted(topics_ready: CommonSettings) -> None:
    producer = RecordProducer(topics_ready, client_id="test-record-producer-large")
    async with TopicReader(topics_ready, topics.WEBHOOKS) as raw:
        await producer.start()
        try:
            small, large = (
                record(topics_ready, topics.WEBHOOKS, "large", 1),
                record(topics_ready, topics.WEBHOOKS, "large", 2, pad=3_500_000),
            )
            await asyncio.gather(producer.send_all([small]), producer.send_all([large]))
            values = await raw.read(2, timeout=20, where=lambda v: v.get("key") == "large")
        finally:
            await producer.stop()
    assert [(v["n"], len(v["pad"])) for v in values] == [(1, 0), (2, 3_500_000)]


async def test_a_stopped_producer_refuses_with_publish_error(topics_ready: CommonSettings) -> None:
    producer = RecordProducer(topics_ready, client_id="test-record-producer-stopped")
    with pytest.raises(PublishError):
        await producer.send_all([record(topics_ready, topics.INBOUND, "k", 1)])
    await producer.start()
    await producer.stop()
    with pytest.raises(PublishError):
        await producer.send_all([record(topics_ready, topics.INBOUND, "k", 1)])
