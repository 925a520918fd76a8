"""The dead-letter topics (`<topic>.dlq`) for operators: what is in them, and putting records back once fixed.

- `list`: every dead-letter topic with how many letters it holds and not yet redriven, by consumer and error.
- `show`: the letters of one, as JSON lines (where each came from, why, the original value).
- `redrive`: publishes each letter not redriven yet back to its original topic, with its original key (so its
  partition, and its order among its key's records) and headers, plus `dlq_redriven_from`. Every consumer group
  of that topic reads it again: the one that gave up applies it (once fixed), the others have applied it already
  and drop the repeat by its event id, as they drop any redelivery. What has been redriven is remembered as the
  committed offsets of the consumer group `waflow-admin-redrive`, so the next run redrives only what came since.
  (Two runs at the same moment could both send a letter; the consumers drop the second by its event id.)
- `purge`: deletes a dead-letter topic's letters (Kafka's delete-records up to its end).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from pydantic import ValidationError

from waflow_common import topics
from waflow_common.events.dead_letter import DeadLetter
from waflow_common.settings import CommonSettings
from waflow_common.topic_reading import assign_all, records_to

REDRIVE_GROUP = "waflow-admin-redrive"


class DlqError(RuntimeError):
    pass


@dataclass(frozen=True)
class Letter:
    partition: int  # in the dead-letter topic
    offset: int
    letter: DeadLetter | None  # None: a record of the topic that is not a dead letter
    raw: bytes


def dlq_name(topic: str) -> str:
    """The dead-letter topic of `topic` (either name, without the deployment's prefix)."""
    base = topic.removesuffix(topics.DLQ_SUFFIX)
    if base not in {spec.name for spec in topics.TOPICS}:
        raise DlqError(f"{topic} is not a topic of the contract")
    return topics.dlq(base)


def dlq_topics() -> list[str]:
    return [topics.dlq(spec.name) for spec in topics.TOPICS]


async def _read(
    settings: CommonSettings, dlq: str, *, group: str | None = None
) -> tuple[list[Letter], AIOKafkaConsumer, dict[TopicPartition, int]]:
    """Every letter of `dlq` (after `group`'s committed offsets, if given), the consumer (started, assigned)
    and the end offset of each partition when reading began."""
    name = settings.topic(dlq)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.group(group) if group else None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        ends = await assign_all(consumer, name)
        if not ends:
            raise DlqError(f"topic {name} does not exist")
        partitions = list(ends)
        if group is None:
            await consumer.seek_to_beginning(*partitions)
        found: list[Letter] = []
        for partition in partitions:
            async for record in records_to(consumer, partition, ends[partition]):
                found.append(Letter(record.partition, record.offset, _letter(record.value), record.value or b""))
        return found, consumer, ends
    except BaseException:
        await consumer.stop()
        raise


async def _redriven_to(settings: CommonSettings, dlq: str) -> dict[int, int]:
    """Per partition of `dlq`, the offset up to which letters were redriven (the redrive group's commits)."""
    name = settings.topic(dlq)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.group(REDRIVE_GROUP))
    finally:
        await admin.close()
    return {tp.partition: at.offset for tp, at in committed.items() if tp.topic == name and at.offset >= 0}


def _letter(value: bytes | None) -> DeadLetter | None:
    try:
        return DeadLetter.model_validate_json(value or b"")
    except ValidationError:
        return None


async def summary(settings: CommonSettings) -> list[dict[str, Any]]:
    """Each dead-letter topic there is: letters held, letters not redriven yet, by consumer and by error type."""
    out = []
    for dlq in dlq_topics():
        try:
            held, consumer, _ = await _read(settings, dlq)
        except DlqError:
            continue  # a topic this deployment has not created
        await consumer.stop()
        redriven = await _redriven_to(settings, dlq)
        pending = [x for x in held if x.offset >= redriven.get(x.partition, 0)]
        out.append(
            {
                "topic": dlq,
                "letters": len(held),
                "not_redriven": len(pending),
                "by_consumer": dict(Counter(x.letter.consumer for x in pending if x.letter)),
                "by_error_type": dict(Counter(x.letter.error_type for x in pending if x.letter)),
            }
        )
    return out


async def show(settings: CommonSettings, topic: str, limit: int = 0) -> list[dict[str, Any]]:
    held, consumer, _ = await _read(settings, dlq_name(topic))
    await consumer.stop()
    lines = []
    for x in held[:limit] if limit else held:
        line: dict[str, Any] = {"dlq_partition": x.partition, "dlq_offset": x.offset}
        if x.letter is None:
            line["not_a_letter"] = x.raw.decode("utf-8", "replace")
        else:
            line |= x.letter.model_dump(mode="json")
        lines.append(line)
    return lines


async def redrive(settings: CommonSettings, topic: str, *, dry_run: bool = False) -> list[dict[str, Any]]:
    """Publishes every letter not redriven yet back to its topic (module docstring); returns what it did."""
    dlq = dlq_name(topic)
    pending, consumer, ends = await _read(settings, dlq, group=REDRIVE_GROUP)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_idempotence=True)
    done: list[dict[str, Any]] = []
    try:
        await producer.start()
        for x in pending:
            if x.letter is None:
                done.append({"dlq_partition": x.partition, "dlq_offset": x.offset, "skipped": "not a dead letter"})
                continue
            headers = [(k, v.encode()) for k, v in x.letter.headers.items() if not k.startswith("dlq_")]
            headers.append(("dlq_redriven_from", f"{x.partition}:{x.offset}".encode()))
            target = x.letter.topic
            if not dry_run:
                await producer.send_and_wait(
                    target,
                    x.letter.value.encode(),
                    key=x.letter.key.encode() if x.letter.key is not None else None,
                    headers=headers,
                )
            done.append(
                {
                    "dlq_partition": x.partition,
                    "dlq_offset": x.offset,
                    "to": target,
                    "key": x.letter.key,
                    "consumer": x.letter.consumer,
                    "error_type": x.letter.error_type,
                    "redriven": not dry_run,
                }
            )
        if not dry_run:
            await consumer.commit(ends)
    finally:
        await producer.stop()
        await consumer.stop()
    return done


async def purge(settings: CommonSettings, topic: str) -> int:
    """Deletes every letter of the topic's dead-letter topic; returns how many there were."""
    dlq = dlq_name(topic)
    held, consumer, ends = await _read(settings, dlq)
    await consumer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=end) for tp, end in ends.items()})
    finally:
        await admin.close()
    return len(held)
