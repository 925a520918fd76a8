"""The metrics every service exports on /metrics, defined once, so each family means the same in every process.

Labels stay small and bounded: a consumer group, a topic (without the deployment's prefix), an event type, a
reason, a route template. Never a tenant or a customer: those are in the logs, and a label per tenant would make
the number of series grow with the business. Values that come from outside the code (an error type, an event
type in a header) go through `BoundedLabel`, which keeps the first ones seen and folds the rest into `other`.

- `waflow_events_consumed_total` / `waflow_handler_seconds`: counted by `kafka.Consumer` when a handler applied an
  event (skipped events are `waflow_events_skipped_total`, dead-lettered ones `waflow_dead_letters_total`);
- `waflow_events_published_total` and `waflow_dead_letters_total`: counted once Kafka acknowledged the record, in
  the two producers every record goes through (`kafka.EventPublisher`, also the outbox relay's, and
  `producer.RecordProducer`); a record for a `.dlq` topic is a dead letter, not an event;
- `waflow_consumer_lag`: records each of this process's assigned partitions has yet to commit (`LagMonitor`);
- `waflow_http_requests_total` / `waflow_http_request_seconds`: every REST call (`http.CorrelationMiddleware`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import Scope

from waflow_common.settings import CommonSettings
from waflow_common.topics import DLQ_SUFFIX

log = logging.getLogger(__name__)

# From a millisecond (one document written) to half a minute (a handler retrying while a server restarts).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BoundedLabel:
    """A label's values as they come, up to `limit` distinct ones; any value first seen after that is `other`,
    so a label fed from outside (an error type, a code from a remote API) can never grow the series without
    bound."""

    def __init__(self, limit: int = 50, *, other: str = "other", max_length: int = 80) -> None:
        self._limit = limit
        self._other = other
        self._max_length = max_length
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        value = value[: self._max_length]
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) >= self._limit:
                return self._other
            self._seen.add(value)
        return value


EVENTS_CONSUMED = Counter(
    "waflow_events_consumed_total",
    "Events a consumer applied (its handler returned), by consumer group, topic and event type",
    ["group", "topic", "event_type"],
)
HANDLER_SECONDS = Histogram(
    "waflow_handler_seconds",
    "Time from a handler's first attempt at an event until the event was applied (retries included; an event "
    "applied in a batch counts the batch's time)",
    ["group", "topic", "event_type"],
    buckets=LATENCY_BUCKETS,
)
EVENTS_PUBLISHED = Counter(
    "waflow_events_published_total",
    "Records Kafka acknowledged, by topic and event type (dead letters are waflow_dead_letters_total)",
    ["topic", "event_type"],
)
DEAD_LETTERS = Counter(
    "waflow_dead_letters_total",
    "Records sent to <topic>.dlq (Kafka acknowledged), by the topic they could not be applied from and why "
    "(the error type)",
    ["topic", "reason"],
)
HTTP_REQUESTS = Counter(
    "waflow_http_requests_total",
    "REST calls answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "waflow_http_request_seconds",
    "Time to answer a REST call, by method and route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)

_event_types = BoundedLabel(200)
_reasons = BoundedLabel(50)
_methods = BoundedLabel(20)


class HandledMetrics:
    """The consumed counter and handler histogram of one consumer group, their children kept per (topic, type):
    a consumer applies hundreds of events a second, and `labels()` costs more than the increment."""

    def __init__(self, group: str) -> None:
        self._group = group
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def handled(self, topic: str, event: object, seconds: float) -> None:
        event_type = getattr(event, "event_type", None)
        key = (topic, event_type if isinstance(event_type, str) else "unknown")
        children = self._children.get(key)
        if children is None:
            label = _event_types(key[1])
            children = self._children[key] = (
                EVENTS_CONSUMED.labels(self._group, topic, label),
                HANDLER_SECONDS.labels(self._group, topic, label),
            )
        children[0].inc()
        children[1].observe(seconds)


_published_children: dict[tuple[str, str], Any] = {}


def published(topic: str, event_type: str | None, error_type: str | None = None) -> None:
    """Counts one record Kafka acknowledged for `topic` (without the deployment's prefix): a dead letter when the
    topic is a `.dlq` one (its reason the `dlq_error_type` header), an event otherwise."""
    if topic.endswith(DLQ_SUFFIX):
        DEAD_LETTERS.labels(topic.removesuffix(DLQ_SUFFIX), _reasons(error_type or "unknown")).inc()
        return
    key = (topic, event_type or "none")
    child = _published_children.get(key)
    if child is None:
        child = _published_children[key] = EVENTS_PUBLISHED.labels(topic, _event_types(key[1]))
    child.inc()


def published_headers(topic: str, headers: Iterable[tuple[str, bytes]]) -> None:
    """`published` for a record as it goes on the wire (headers as bytes)."""
    event_type = error_type = None
    for name, value in headers:
        if name == "event_type":
            event_type = value.decode("utf-8", "replace")
        elif name == "dlq_error_type":
            error_type = value.decode("utf-8", "replace")
    published(topic, event_type, error_type)


# --- consumer lag ---------------------------------------------------------------------------------------------

LAG_NAME = "waflow_consumer_lag"
LAG_HELP = (
    "Records of a partition assigned to this process that its consumer group has not committed yet "
    "(the partition's end offset minus the group's committed offset); summed over instances, a group's lag"
)
Partition = tuple[str, str, int]  # group, topic, partition (group and topic without the deployment's prefix)


class _LagCollector(Collector):
    """`waflow_consumer_lag` as the running monitors of this process last measured it. A collector, not a Gauge:
    a partition that moved to another instance at a rebalance disappears from here at the next refresh, so a sum
    over instances counts every partition once."""

    def __init__(self) -> None:
        self.monitors: set[LagMonitor] = set()

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(LAG_NAME, LAG_HELP, labels=["group", "topic", "partition"])]

    def collect(self) -> Iterable[Metric]:
        totals: dict[Partition, int] = {}
        for monitor in list(self.monitors):
            for key, lag in monitor.lags.items():
                totals[key] = totals.get(key, 0) + lag
        family = GaugeMetricFamily(LAG_NAME, LAG_HELP, labels=["group", "topic", "partition"])
        for (group, topic, partition), lag in sorted(totals.items()):
            family.add_metric([group, topic, str(partition)], lag)
        return [family]


CONSUMER_LAG = _LagCollector()
REGISTRY.register(CONSUMER_LAG)


class LagMonitor:
    """Measures, every few seconds, the lag of each partition this process's consumers are assigned.

    Lag is Kafka's view (as `kafka-consumer-groups.sh` shows it): the partition's end offset minus the group's
    committed offset, so records fetched but not yet applied count, as they would be read again after a crash.
    A group that never committed on a partition starts at its beginning (auto_offset_reset=earliest), so its lag
    is everything there. Each instance reports only its own partitions: a sum over instances is the group's lag.

    Two read-only requests per consumer and refresh (end offsets through the consumer; the committed offsets of
    its group through one small admin client per process); nothing else is done, so every instance runs its own
    without duplicating any work that has effects. A failed refresh drops that consumer's series until the next
    one: no value is better than a stale one.
    """

    def __init__(
        self, broker: KafkaBroker, settings: CommonSettings, *, every_seconds: float = 5.0, timeout: float = 5.0
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._prefix = settings.waflow_topic_prefix
        self._every = every_seconds
        self._timeout = timeout
        self._admin: AIOKafkaAdminClient | None = None
        self._task: asyncio.Task[None] | None = None
        self.lags: dict[Partition, int] = {}

    def consumers(self) -> Iterator[tuple[str, AIOKafkaConsumer]]:
        """(full group id, consumer) of every running subscriber of the broker (a concurrent one has several)."""
        for subscriber in self._broker.subscribers:
            group = getattr(subscriber, "group_id", None)
            consumers = getattr(subscriber, "consumer_subgroup", None) or [getattr(subscriber, "consumer", None)]
            for consumer in consumers:
                if group and isinstance(consumer, AIOKafkaConsumer):
                    yield group, consumer

    async def refresh(self) -> dict[Partition, int]:
        # A concurrent subscriber has several consumers in one group: one measurement per group, not per consumer.
        by_group: dict[str, tuple[AIOKafkaConsumer, list[TopicPartition]]] = {}
        for group, consumer in list(self.consumers()):
            assigned = sorted(consumer.assignment())
            if assigned:
                by_group.setdefault(group, (consumer, []))[1].extend(assigned)
        lags: dict[Partition, int] = {}
        for group, (consumer, partitions) in by_group.items():
            try:
                measured = await asyncio.wait_for(self._measure(group, consumer, partitions), self._timeout)
            except Exception as exc:  # Kafka unreachable, a rebalance under way: try again at the next refresh
                log.debug("consumer lag not measured", extra={"group": group, "error": repr(exc)})
                continue
            group_label = group.removeprefix(self._prefix)
            for tp, lag in measured.items():
                lags[(group_label, tp.topic.removeprefix(self._prefix), tp.partition)] = lag
        self.lags = lags
        return lags

    async def _measure(
        self, group: str, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """The lag of the group's `partitions` (any of this process's consumers can ask for any partition's
        offsets): one request for the end offsets, one for the group's commits."""
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        committed = await (await self._admin_client()).list_consumer_group_offsets(group, partitions=partitions)
        done = {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
        never = [tp for tp in partitions if tp not in done]
        if never:
            done |= await consumer.beginning_offsets(never)
        return {tp: max(0, ends[tp] - done[tp]) for tp in partitions if tp in ends and tp in done}

    async def _admin_client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._settings.kafka_bootstrap_servers,
                client_id="waflow-lag",
                request_timeout_ms=int(self._timeout * 1000),
            )
            try:
                await admin.start()
            except BaseException:
                await admin.close()
                raise
            self._admin = admin
        return self._admin

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._every)

    def start(self) -> None:
        CONSUMER_LAG.monitors.add(self)
        self._task = asyncio.create_task(self.run(), name="consumer-lag")

    async def stop(self) -> None:
        CONSUMER_LAG.monitors.discard(self)
        self.lags = {}
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None


# --- HTTP -----------------------------------------------------------------------------------------------------


def observe_http(scope: Scope, status: int, seconds: float) -> None:
    """Counts and times one REST call by method, route template (`/v1/chats/{chat_id}`, never the path itself,
    which holds ids) and status; called by `http.CorrelationMiddleware`, which already times every call."""
    route = getattr(scope.get("route"), "path", None) or "unmatched"
    method = _methods(str(scope.get("method", "")))
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_SECONDS.labels(method, route).observe(seconds)
