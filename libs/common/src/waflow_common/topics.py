"""The topics of the event contract: names, partitions, compaction, and their dead-letter topics."""

from __future__ import annotations

from dataclasses import dataclass

WEBHOOKS = "whatsapp.webhooks.v1"
INBOUND = "wa.inbound.v1"
CONTACTS = "contacts.v1"
OUTBOUND_COMMANDS = "outbound.commands.v1"
OUTBOUND_RESULTS = "outbound.results.v1"
CONVERSATION = "conversation.v1"
TENANTS = "tenants.v1"

DLQ_SUFFIX = ".dlq"

# Meta sends webhook bodies of up to 3 MB; the archive keeps each whole (JSON-escaped inside its event), and an
# inbound event or its dead letter can carry a large raw item. Kafka's default limit is 1 MB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    max_message_bytes: int | None = None

    def configs(self) -> dict[str, str]:
        configs = {"cleanup.policy": "compact"} if self.compacted else {}
        if self.max_message_bytes is not None:
            configs["max.message.bytes"] = str(self.max_message_bytes)
        return configs


# Chat-keyed topics get 24 partitions: a consumer group spreads partitions over its instances, so instances
# beyond the partition count sit idle ("instances per group <= partitions"). 24 divides evenly among 1, 2, 3, 4,
# 6, 8, 12 and 24 instances, and a topic's partitions can be raised later but never lowered (raising one moves
# keys to other partitions, so per-chat order is only kept if that is done while its consumers are drained).
# The registry topic is small, compacted and read whole by every instance.
CHAT_PARTITIONS = 24

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(WEBHOOKS, CHAT_PARTITIONS, max_message_bytes=MAX_MESSAGE_BYTES),
    TopicSpec(INBOUND, CHAT_PARTITIONS, max_message_bytes=MAX_MESSAGE_BYTES),
    TopicSpec(CONTACTS, CHAT_PARTITIONS, compacted=True),
    TopicSpec(OUTBOUND_COMMANDS, CHAT_PARTITIONS),
    TopicSpec(OUTBOUND_RESULTS, CHAT_PARTITIONS),
    TopicSpec(CONVERSATION, CHAT_PARTITIONS),
    TopicSpec(TENANTS, 1, compacted=True),
)

# Every topic some service consumes has a dead-letter topic beside it.
CONSUMED = (INBOUND, CONTACTS, OUTBOUND_COMMANDS, OUTBOUND_RESULTS, CONVERSATION, TENANTS)


def all_topics() -> tuple[TopicSpec, ...]:
    dlqs = tuple(
        TopicSpec(name + DLQ_SUFFIX, CHAT_PARTITIONS if name != TENANTS else 1, max_message_bytes=MAX_MESSAGE_BYTES)
        for name in CONSUMED
    )
    return TOPICS + dlqs


def dlq(topic: str) -> str:
    return topic + DLQ_SUFFIX
