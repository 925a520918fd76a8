"""Kafka wiring on FastStream: the producer, consumers that commit after their effect, dead letters, topics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from pydantic import TypeAdapter, ValidationError
from pymongo.errors import ConnectionFailure

from waflow_common import metrics, topics
from waflow_common.events.dead_letter import DeadLetter
from waflow_common.events.envelope import Envelope
from waflow_common.events.reading import UnknownEvent, read_event, skipped
from waflow_common.logs import log_context
from waflow_common.settings import CommonSettings

log = logging.getLogger(__name__)

E = TypeVar("E")

# Failures of the infrastructure itself: the record is fine, so it is retried (never dead-lettered) until the
# infrastructure answers again. Anything else is the record's or the code's fault and is dead-lettered.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionFailure,
    KafkaError,
    asyncio.TimeoutError,
    ConnectionError,
)


class PublishError(RuntimeError):
    """Kafka did not acknowledge a record in time."""


def make_broker(settings: CommonSettings, *, client_id: str) -> KafkaBroker:
    """A broker whose producer waits for all in-sync replicas and never writes a record twice."""
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks="all",
        # Not idempotent, unlike RecordProducer: after a broker restart aiokafka's idempotent producer can be
        # refused with OutOfOrderSequenceNumber for every later batch (the fault suite's Kafka stop left the
        # outbox relays failing forever), and FastStream offers no way to renew its producer. aiokafka keeps one
        # request in flight per partition, so order holds; a retried send may be stored twice, which every
        # consumer absorbs (event_id de-duplication and idempotent effects, as for at-least-once delivery).
        enable_idempotence=False,
        linger_ms=0,  # measured: any linger adds its full delay to every acknowledged send at our rates
        max_request_size=topics.MAX_MESSAGE_BYTES,  # dead letters can carry a large record
        request_timeout_ms=int(settings.kafka_publish_timeout_seconds * 1000),
        logger=None,
    )


# How long a batch waits for the records produced while it sat in the consumer's prefetch buffer.
TOP_UP_WAIT_MS = 10


async def _topped_up(message: KafkaMessage, max_records: int) -> tuple[ConsumerRecord[bytes, bytes], ...]:
    """The batch FastStream handed over, plus what Kafka has had since.

    aiokafka fetches the next records while a batch is applied, and hands them over at the next poll: by then
    they are as old as that whole batch took, and what arrived meanwhile waits one batch more. Draining the
    prefetched batch made aiokafka fetch again at once, so a short second poll collects the newer records too:
    a record then waits for at most one batch before its own, not two.
    """
    records: tuple[ConsumerRecord[bytes, bytes], ...] = message.raw_message
    room = max_records - len(records)
    consumer = message.consumer
    if room <= 0 or not isinstance(consumer, AIOKafkaConsumer):  # FastStream's in-memory test broker has none
        return records
    fresh = await consumer.getmany(timeout_ms=TOP_UP_WAIT_MS, max_records=room)
    return records + tuple(r for batch in fresh.values() for r in batch)


def _rewind(consumer: AIOKafkaConsumer, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
    """A batch that did not end: every partition it read goes back to its first record (not committed)."""
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        earliest[tp] = min(earliest.get(tp, record.offset), record.offset)
    for tp, offset in earliest.items():
        consumer.seek(tp, offset)


class EventPublisher:
    """Publishes envelopes to their topics (with the topic prefix of this deployment)."""

    def __init__(self, broker: KafkaBroker, settings: CommonSettings) -> None:
        self._broker = broker
        self._settings = settings

    async def publish(self, event: Envelope[Any]) -> None:
        await self.publish_many([event])

    async def publish_many(self, events: Sequence[Envelope[Any]]) -> None:
        """Returns once Kafka acknowledged every record; raises PublishError otherwise."""
        if not events:
            return
        sends = [
            self._broker.publish(
                event.to_json(),
                self._settings.topic(type(event).topic),
                key=event.key().encode(),
                headers=event.headers(),
                correlation_id=event.correlation_id,
            )
            for event in events
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*sends), timeout=self._settings.kafka_publish_timeout_seconds)
        except (TimeoutError, KafkaError) as exc:
            raise PublishError(f"Kafka did not acknowledge {len(events)} record(s): {exc!r}") from exc
        for event in events:
            metrics.published(type(event).topic, event.event_type)

    async def tombstone(self, topic: str, key: str) -> None:
        """A null value: on a compacted topic it removes the key once the log is cleaned."""
        try:
            await asyncio.wait_for(
                self._broker.publish(None, self._settings.topic(topic), key=key.encode()),
                timeout=self._settings.kafka_publish_timeout_seconds,
            )
        except (TimeoutError, KafkaError) as exc:
            raise PublishError(f"Kafka did not acknowledge a tombstone for {topic}: {exc!r}") from exc
        metrics.published(topic, "tombstone")

    async def publish_raw(self, topic: str, value: bytes, *, key: bytes | None, headers: dict[str, str]) -> None:
        try:
            await asyncio.wait_for(
                self._broker.publish(value, self._settings.topic(topic), key=key, headers=headers),
                timeout=self._settings.kafka_publish_timeout_seconds,
            )
        except (TimeoutError, KafkaError) as exc:
            raise PublishError(f"Kafka did not acknowledge a record for {topic}: {exc!r}") from exc
        metrics.published(topic, headers.get("event_type"), headers.get("dlq_error_type"))


class Consumer:
    """Registers subscribers that parse with a pydantic adapter, run a handler, and commit only afterwards.

    - a record that does not parse goes to `<topic>.dlq` at once, with the validation errors;
    - a handler that fails for an infrastructure reason (MongoDB or Kafka unreachable) is retried until it
      succeeds, so nothing is dead-lettered because a server restarted;
    - a handler that fails otherwise is retried `attempts` times, then dead-lettered with the error;
    and the consumer goes on with the next record. Offsets move only after one of these outcomes is stored.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        settings: CommonSettings,
        *,
        group_id: str,
        attempts: int = 3,
        retry_delay_seconds: float = 0.2,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._publisher = EventPublisher(broker, settings)
        self.group_id = group_id
        self._metrics = metrics.HandledMetrics(group_id)
        self._attempts = attempts
        self._retry_delay = retry_delay_seconds

    def subscribe(
        self,
        topic: str,
        adapter: TypeAdapter[E],
        handler: Callable[[E], Awaitable[None]],
        **subscriber_options: Any,
    ) -> None:
        """One record at a time (`max_workers` > 1: that many consumers, each owning whole partitions)."""

        async def consume(message: KafkaMessage) -> None:
            await self._consume(topic, message.raw_message, adapter, handler)

        self._register(topic, consume, **subscriber_options)

    def subscribe_batched(
        self,
        topic: str,
        adapter: TypeAdapter[E],
        handler: Callable[[E], Awaitable[None]],
        *,
        concurrency: int,
        max_records: int = 500,
        apply_many: Callable[[list[E]], Awaitable[None]] | None = None,
    ) -> None:
        """Takes what the topic has (up to `max_records`), applies it, then commits once.

        Records of one key (one partition, one key) are applied in their order; different keys are applied
        side by side, `concurrency` at a time. Each record still has the outcomes of `subscribe` (applied,
        retried, or dead-lettered), so a batch always ends and commits; one commit per batch instead of one per
        record is what lets a consumer keep up with hundreds of records a second.

        With `apply_many`, the batch's valid events are first offered to it as a whole (in record order), so
        that it can write them together; if it fails, each record goes through `handler` as above, which finds
        the one at fault. Both must be idempotent: a batch may be applied partly, then again record by record.
        """

        async def consume(message: KafkaMessage) -> None:
            batch = records = await _topped_up(message, max_records)
            try:
                if apply_many is not None:
                    records = await self._apply_many(topic, records, adapter, apply_many)
                await self._consume_batch(topic, records, adapter, handler, concurrency)
            except BaseException:
                # FastStream rewinds what it handed over; the records of the top-up go back too.
                if isinstance(message.consumer, AIOKafkaConsumer):
                    _rewind(message.consumer, batch)
                raise

        self._register(topic, consume, batch=True, max_records=max_records, batch_timeout_ms=100)

    def _register(self, topic: str, consume: Callable[[KafkaMessage], Awaitable[None]], **options: Any) -> None:
        consume.__name__ = f"{self.group_id}_{topic.replace('.', '_')}"
        self._broker.subscriber(
            self._settings.topic(topic),
            group_id=self._settings.group(self.group_id),
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            **options,
        )(consume)

    async def _apply_many(
        self,
        topic: str,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        adapter: TypeAdapter[E],
        apply_many: Callable[[list[E]], Awaitable[None]],
    ) -> tuple[ConsumerRecord[bytes, bytes], ...]:
        """Applies the batch's events together (the invalid dead-lettered, the unknown skipped); returns what is
        left to apply record by record."""
        valid: list[tuple[ConsumerRecord[bytes, bytes], E]] = []
        for record in records:
            event = await self._read(topic, record, adapter)
            if event is not None:
                valid.append((record, event))
        started = time.perf_counter()
        try:
            await apply_many([event for _, event in valid])
        except Exception as exc:
            log.warning("batch not applied as a whole; record by record", extra={"topic": topic, "error": repr(exc)})
            return tuple(record for record, _ in valid)
        seconds = time.perf_counter() - started
        for _, event in valid:
            self._metrics.handled(topic, event, seconds)
        return ()

    async def _consume_batch(
        self,
        topic: str,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        adapter: TypeAdapter[E],
        handler: Callable[[E], Awaitable[None]],
        concurrency: int,
    ) -> None:
        by_key: dict[tuple[int, bytes | None], list[ConsumerRecord[bytes, bytes]]] = {}
        for record in records:
            by_key.setdefault((record.partition, record.key), []).append(record)
        slots = asyncio.Semaphore(concurrency)

        async def in_order(group: list[ConsumerRecord[bytes, bytes]]) -> None:
            async with slots:
                for record in group:
                    await self._consume(topic, record, adapter, handler)

        await asyncio.gather(*(in_order(group) for group in by_key.values()))

    async def _consume(
        self,
        topic: str,
        record: ConsumerRecord[bytes, bytes],
        adapter: TypeAdapter[E],
        handler: Callable[[E], Awaitable[None]],
    ) -> None:
        event = await self._read(topic, record, adapter)
        if event is None:
            return
        tenant_id = getattr(event, "tenant_id", None)
        correlation_id = getattr(event, "correlation_id", None)
        with log_context(tenant_id=tenant_id, correlation_id=correlation_id):
            failures = 0
            started = time.perf_counter()
            while True:
                try:
                    await handler(event)
                    self._metrics.handled(topic, event, time.perf_counter() - started)
                    return
                except TRANSIENT_ERRORS as exc:
                    log.warning("transient failure, retrying", extra={"topic": topic, "error": repr(exc)})
                    await asyncio.sleep(min(5.0, self._retry_delay * 2 ** min(failures, 5)))
                except Exception as exc:
                    failures += 1
                    log.warning("handler failed", extra={"topic": topic, "attempt": failures, "error": repr(exc)})
                    if failures >= self._attempts:
                        await self._dead_letter(topic, record, repr(exc), type(exc).__name__, failures)
                        return
                    await asyncio.sleep(self._retry_delay)

    async def _read(self, topic: str, record: ConsumerRecord[bytes, bytes], adapter: TypeAdapter[E]) -> E | None:
        """The record's event (`events.reading`: a tolerant reader); None when it was skipped as an unknown type
        or version, or dead-lettered as invalid."""
        try:
            return read_event(adapter, record.value or b"")
        except UnknownEvent as unknown:
            skipped(topic, unknown)
        except ValidationError as exc:
            await self._dead_letter(topic, record, f"invalid event: {exc}", type(exc).__name__, attempts=1)
        return None

    async def _dead_letter(
        self, topic: str, record: ConsumerRecord[bytes, bytes], error: str, error_type: str, attempts: int
    ) -> None:
        headers = {k: v.decode("utf-8", "replace") for k, v in (record.headers or ())}
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        letter = DeadLetter(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=key,
            value=(record.value or b"").decode("utf-8", "replace"),
            headers=headers,
            error=error[:8000],
            error_type=error_type,
            consumer=self.group_id,
            attempts=attempts,
            failed_at=datetime.now(UTC),
        )
        log.error(
            "dead-lettered a record",
            extra={
                "topic": topic,
                "offset": record.offset,
                "partition": record.partition,
                "error": error[:500],
            },
        )
        await self._publisher.publish_raw(
            topics.dlq(topic),
            letter.model_dump_json().encode(),
            key=record.key,
            headers=headers | {"dlq_error_type": error_type, "dlq_consumer": self.group_id},
        )


def _durability(replicas: int) -> dict[str, str]:
    """With 3 replicas or more, a write acknowledged by all in-sync replicas is on at least 2 of them."""
    return {"min.insync.replicas": "2"} if replicas >= 3 else {}


async def ensure_topics(settings: CommonSettings, specs: Sequence[topics.TopicSpec] | None = None) -> list[str]:
    """Creates the contract's topics (and their .dlq topics) if missing; returns the names it created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                name=settings.topic(spec.name),
                num_partitions=spec.partitions,
                replication_factor=settings.waflow_topic_replication_factor,
                topic_configs=spec.configs() | _durability(settings.waflow_topic_replication_factor),
            )
            for spec in (specs or topics.all_topics())
            if settings.topic(spec.name) not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
            created = [t.name for t in new]
            await _wait_for_leaders(settings, created)
    finally:
        await admin.close()
    return created


async def _wait_for_leaders(settings: CommonSettings, names: list[str], timeout: float = 15.0) -> None:
    """A new topic takes a moment to elect its partition leaders; until then clients log errors and retry."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            cluster = await consumer._client.fetch_all_metadata()
            if all(
                cluster.partitions_for_topic(name)
                and all(
                    cluster.leader_for_partition(TopicPartition(name, p)) not in (None, -1)
                    for p in cluster.partitions_for_topic(name) or ()
                )
                for name in names
            ):
                return
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()


async def kafka_reachable(settings: CommonSettings, timeout: float = 2.0) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=2000)
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
    except Exception:
        return False
    else:
        return True
    finally:
        await admin.close()
