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


# Chat-keyed topics get 6 partitions so consumers can scale out; the registry topic is small and compacted.
TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(WEBHOOKS, 6, max_message_bytes=MAX_MESSAGE_BYTES),
    TopicSpec(INBOUND, 6, max_message_bytes=MAX_MESSAGE_BYTES),
    TopicSpec(CONTACTS, 6, compacted=True),
    TopicSpec(OUTBOUND_COMMANDS, 6),
    TopicSpec(OUTBOUND_RESULTS, 6),
    TopicSpec(CONVERSATION, 6),
    TopicSpec(TENANTS, 1, compacted=True),
)

# Every topic some service consumes has a dead-letter topic beside it.
CONSUMED = (INBOUND, CONTACTS, OUTBOUND_COMMANDS, OUTBOUND_RESULTS, CONVERSATION, TENANTS)


def all_topics() -> tuple[TopicSpec, ...]:
    dlqs = tuple(
        TopicSpec(name + DLQ_SUFFIX, 6 if name != TENANTS else 1, max_message_bytes=MAX_MESSAGE_BYTES)
        for name in CONSUMED
    )
    return TOPICS + dlqs


def dlq(topic: str) -> str:
    return topic + DLQ_SUFFIX
