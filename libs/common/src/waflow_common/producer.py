"""A Kafka producer for a request path that must be cheap per record: many callers, one batch per partition.

FastStream's publish, and even aiokafka's own `send`, cost several times more per record than the record batch
itself (a coroutine, a partition lookup and a future each). `RecordProducer` collects the records of every caller
waiting at the same moment, appends them to one batch per topic and partition, and hands each batch to aiokafka
whole. The guarantees are those of `make_broker`'s producer: all in-sync replicas acknowledge, idempotent, no
linger; records of one key keep the order in which callers handed them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from waflow_common import metrics, topics
from waflow_common.events.envelope import Envelope
from waflow_common.kafka import PublishError
from waflow_common.settings import CommonSettings

log = logging.getLogger(__name__)

BATCH_BYTES = 512 * 1024


class Record(NamedTuple):
    """One Kafka record as it goes on the wire (topic already prefixed)."""

    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]


def event_record(event: Envelope[Any], settings: CommonSettings) -> Record:
    return Record(
        topic=settings.topic(type(event).topic),
        value=event.to_json(),
        key=event.key().encode(),
        headers=[(name, value.encode()) for name, value in event.headers().items()],
    )


class KeyHashPartitioner:
    """Kafka's default partitioning (murmur2 of the key, as the Java client does), with the hash of recent keys
    kept: aiokafka computes murmur2 in pure Python, a measurable share of a record's cost, and keys (tenant and
    customer) repeat. Records without a key go to a random available partition, as with the default."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._hashes: dict[bytes, int] = {}
        self._max_keys = max_keys

    def __call__(self, key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
        if key is None:
            return random.choice(available or all_partitions)
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]


@dataclass(eq=False)
class _Waiter:
    """One caller of send_all: done once every batch holding one of its records is acknowledged."""

    done: asyncio.Future[None]
    batches: int = 0


@dataclass(eq=False)
class _Batch:
    topic: str
    partition: int
    builder: BatchBuilder
    waiters: list[_Waiter] = field(default_factory=list)


# Errors after which the producer's idempotence state is unusable: only a new producer id sends again.
PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)


class RecordProducer:
    """`send_all` returns once Kafka acknowledged every record given; callers waiting together share batches."""

    def __init__(self, settings: CommonSettings, *, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        self._timeout = settings.kafka_publish_timeout_seconds
        self._producer: AIOKafkaProducer | None = None
        self._partitioner = KeyHashPartitioner()
        self._queue: list[tuple[Sequence[Record], _Waiter]] = []
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._broken = False

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            request_timeout_ms=int(self._timeout * 1000),
            max_batch_size=BATCH_BYTES,
            max_request_size=topics.MAX_MESSAGE_BYTES,
        )

    async def start(self) -> None:
        # aiokafka binds its producer to the running loop, so it is made here rather than in __init__.
        self._producer = self._new_producer()
        await self._producer.start()
        self._broken = False
        self._wakeup = asyncio.Event()
        self._flusher = asyncio.create_task(self._flush_forever(), name="record-producer")

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        self._fail(self._queue, PublishError("the producer stopped"))
        self._queue = []
        if self._producer is not None:
            await self._producer.stop()  # sends what was handed to it already
            self._producer = None

    async def send_all(self, records: Sequence[Record]) -> None:
        """Returns once Kafka acknowledged every record; raises PublishError otherwise."""
        if self._flusher is None or self._flusher.done():
            raise PublishError("the producer is not running")
        if not records:
            return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future())
        self._queue.append((records, waiter))
        self._wakeup.set()
        # A timer on the future rather than asyncio.timeout(): the same effect at a fraction of the cost.
        timer = loop.call_later(self._timeout, _expire, waiter.done)
        try:
            await waiter.done
        except (TimeoutError, KafkaError) as exc:
            raise PublishError(f"Kafka did not acknowledge {len(records)} record(s): {exc!r}") from exc
        finally:
            timer.cancel()
        prefix = self._settings.waflow_topic_prefix
        for record in records:
            metrics.published_headers(record.topic.removeprefix(prefix), record.headers)

    async def _flush_forever(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            queue, self._queue = self._queue, []
            try:
                if self._broken:
                    await self._renew()
                assert self._producer is not None
                await self._flush(self._producer, queue)
            except Exception as exc:  # metadata unavailable, producer failed: these callers get a 503
                log.warning("records not handed to Kafka", extra={"error": repr(exc)})
                self._fail(queue, PublishError(f"records not handed to Kafka: {exc!r}"))

    async def _flush(self, producer: AIOKafkaProducer, queue: list[tuple[Sequence[Record], _Waiter]]) -> None:
        partitions: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], _Batch] = {}
        full: list[_Batch] = []
        for records, waiter in queue:
            if waiter.done.done():  # its caller gave up (timeout): Meta retries the delivery
                continue
            for record in records:
                topic = record.topic
                known = partitions.get(topic)
                if known is None:
                    known = partitions[topic] = sorted(await producer.partitions_for(topic))
                partition = self._partitioner(record.key, known, known)
                batch = open_batches.get((topic, partition))
                if batch is None:
                    batch = open_batches[topic, partition] = _Batch(topic, partition, producer.create_batch())
                if not batch.builder.append(timestamp=None, key=record.key, value=record.value, headers=record.headers):
                    # full: it goes as it is, and a new one takes the record
                    full.append(batch)
                    batch = open_batches[topic, partition] = _Batch(topic, partition, producer.create_batch())
                    batch.builder.append(timestamp=None, key=record.key, value=record.value, headers=record.headers)
                if not batch.waiters or batch.waiters[-1] is not waiter:
                    batch.waiters.append(waiter)
                    waiter.batches += 1
        for batch in [*full, *open_batches.values()]:
            batch.builder.close()
            delivered = await producer.send_batch(batch.builder, batch.topic, partition=batch.partition)
            delivered.add_done_callback(lambda f, waiters=batch.waiters: self._delivered(f, waiters))

    async def _renew(self) -> None:
        """A new idempotent producer (a new producer id) in place of one whose sequence numbers the broker refuses.

        After a broker restart an idempotent producer can get OutOfOrderSequenceNumber for every batch it sends
        from then on (seen in the fault suite: a stopped Kafka left ingest answering 503 forever). The broker takes
        a new producer id's batches from sequence 0, so a fresh producer sends again; at-least-once callers retry
        what failed, and their consumers are idempotent.
        """
        old, self._producer = self._producer, self._new_producer()
        await self._producer.start()
        self._broken = False
        log.warning("Kafka refused the producer's sequence numbers; a new producer took its place")
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), timeout=self._timeout)

    def _delivered(self, future: asyncio.Future[Any], waiters: list[_Waiter]) -> None:
        error = future.exception() if not future.cancelled() else None
        if isinstance(error, PRODUCER_STATE_ERRORS):
            self._broken = True
            self._wakeup.set()
        _delivered(future, waiters)

    @staticmethod
    def _fail(queue: list[tuple[Sequence[Record], _Waiter]], exc: BaseException) -> None:
        for _, waiter in queue:
            if not waiter.done.done():
                waiter.done.set_exception(exc)


def _expire(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_exception(TimeoutError("no acknowledgement in time"))


def _delivered(future: asyncio.Future[Any], waiters: list[_Waiter]) -> None:
    error = future.exception() if not future.cancelled() else KafkaError("batch cancelled")
    for waiter in waiters:
        if waiter.done.done():
            continue
        if error is not None:
            waiter.done.set_exception(error)
            continue
        waiter.batches -= 1
        if waiter.batches == 0:
            waiter.done.set_result(None)
