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


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False


# Chat-keyed topics get 6 partitions so consumers can scale out; the registry topic is small and compacted.
TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(WEBHOOKS, 6),
    TopicSpec(INBOUND, 6),
    TopicSpec(CONTACTS, 6, compacted=True),
    TopicSpec(OUTBOUND_COMMANDS, 6),
    TopicSpec(OUTBOUND_RESULTS, 6),
    TopicSpec(CONVERSATION, 6),
    TopicSpec(TENANTS, 1, compacted=True),
)

# Every topic some service consumes has a dead-letter topic beside it.
CONSUMED = (INBOUND, CONTACTS, OUTBOUND_COMMANDS, OUTBOUND_RESULTS, CONVERSATION, TENANTS)


def all_topics() -> tuple[TopicSpec, ...]:
    dlqs = tuple(TopicSpec(name + DLQ_SUFFIX, 6 if name != TENANTS else 1) for name in CONSUMED)
    return TOPICS + dlqs


def dlq(topic: str) -> str:
    return topic + DLQ_SUFFIX
