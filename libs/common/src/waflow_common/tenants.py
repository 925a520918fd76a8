"""The apps and tenants registry: every process reads the compacted tenants.v1 into memory and follows it live."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from waflow_common import topics
from waflow_common.events.reading import UnknownEvent, read_event, skipped
from waflow_common.events.tenants import (
    AppUpsertedEvent,
    TenantRecord,
    TenantUpsertedEvent,
    tenants_adapter,
)
from waflow_common.secrets import SecretBox, hash_api_key
from waflow_common.settings import CommonSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class App:
    app_id: str
    name: str
    app_secret: str
    verify_token: str

    def __repr__(self) -> str:  # secrets never reach a log line
        return f"App(app_id={self.app_id!r}, name={self.name!r})"


@dataclass(frozen=True)
class Tenant:
    record: TenantRecord
    access_token: str

    @property
    def tenant_id(self) -> str:
        return self.record.tenant_id

    @property
    def phone_number_ids(self) -> list[str]:
        return [n.phone_number_id for n in self.record.phone_numbers]

    def __repr__(self) -> str:
        return f"Tenant(tenant_id={self.tenant_id!r}, name={self.record.name!r})"


def app_secret_context(app_id: str, field: str) -> str:
    return f"app:{app_id}:{field}"


def tenant_secret_context(tenant_id: str, field: str) -> str:
    return f"tenant:{tenant_id}:{field}"


class TenantRegistry:
    """In-memory view of tenants.v1. `start()` returns once everything published before it has been read."""

    def __init__(self, settings: CommonSettings, box: SecretBox) -> None:
        self._settings = settings
        self._box = box
        self._apps: dict[str, App] = {}
        self._tenants: dict[str, Tenant] = {}
        self._by_number: dict[str, Tenant] = {}
        self._by_waba: dict[str, Tenant] = {}
        self._by_key_hash: dict[str, Tenant] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[Tenant], None]] = []
        self.invalid_records = 0

    # --- lookups -------------------------------------------------------------------------------------------
    def app(self, app_id: str) -> App | None:
        return self._apps.get(app_id)

    def apps(self) -> list[App]:
        return list(self._apps.values())

    def tenant(self, tenant_id: str) -> Tenant | None:
        return self._tenants.get(tenant_id)

    def tenants(self) -> list[Tenant]:
        return list(self._tenants.values())

    def tenant_for_number(self, phone_number_id: str) -> Tenant | None:
        return self._by_number.get(phone_number_id)

    def tenant_for_waba(self, waba_id: str) -> Tenant | None:
        return self._by_waba.get(waba_id)

    def tenant_for_api_key(self, api_key: str) -> Tenant | None:
        return self._by_key_hash.get(hash_api_key(api_key))

    def on_tenant_change(self, listener: Callable[[Tenant], None]) -> None:
        self._listeners.append(listener)

    # --- applying records ----------------------------------------------------------------------------------
    def apply(self, key: str | None, value: bytes | None) -> None:
        """Applies one record of tenants.v1: an upsert, or a tombstone (None value) that removes the key."""
        if value is None:
            if key and key.startswith("app:"):
                self._apps.pop(key[4:], None)
            elif key and key.startswith("tenant:"):
                self._tenants.pop(key[7:], None)
                self._reindex()
            return
        try:
            event = read_event(tenants_adapter, value)
            if isinstance(event, AppUpsertedEvent):
                self._apply_app(event)
            elif isinstance(event, TenantUpsertedEvent):
                self._apply_tenant(event)
        except UnknownEvent as unknown:
            skipped(topics.TENANTS, unknown)
        except (ValidationError, ValueError) as exc:
            # Records are validated by waflow-admin before they are written; one that still fails is counted and
            # skipped (re-reading the compacted topic at every start must not flood a dead-letter topic).
            self.invalid_records += 1
            log.error("skipped an invalid tenants.v1 record", extra={"key": key, "error": str(exc)[:500]})

    def _apply_app(self, event: AppUpsertedEvent) -> None:
        p = event.payload
        self._apps[p.app_id] = App(
            app_id=p.app_id,
            name=p.name,
            app_secret=self._box.open(p.app_secret, context=app_secret_context(p.app_id, "app_secret")),
            verify_token=self._box.open(p.verify_token, context=app_secret_context(p.app_id, "verify_token")),
        )

    def _apply_tenant(self, event: TenantUpsertedEvent) -> None:
        p = event.payload
        tenant = Tenant(
            record=p,
            access_token=self._box.open(p.access_token, context=tenant_secret_context(p.tenant_id, "access_token")),
        )
        self._tenants[p.tenant_id] = tenant
        self._reindex()
        for listener in self._listeners:
            listener(tenant)

    def _reindex(self) -> None:
        self._by_number = {n: t for t in self._tenants.values() for n in t.phone_number_ids}
        self._by_waba = {w: t for t in self._tenants.values() for w in t.record.waba_ids}
        self._by_key_hash = {k.sha256: t for t in self._tenants.values() for k in t.record.api_keys}

    # --- following the topic -------------------------------------------------------------------------------
    async def start(self, *, timeout: float = 30.0) -> None:
        topic = self._settings.topic(topics.TENANTS)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
        )
        await consumer.start()
        self._consumer = consumer
        # A consumer without a subscription has no metadata cache of its own; ask the cluster directly.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            await self.stop()
            raise RuntimeError(f"topic {topic} does not exist: run `waflow-admin topics create`")
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        end = await consumer.end_offsets(assigned)
        caught_up = asyncio.Event()

        async def follow() -> None:
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=500)
                except KafkaError as exc:
                    # The registry must outlive a broker restart: keep serving what is known and read on later.
                    log.warning("tenants.v1 unreadable; retrying", extra={"error": repr(exc)})
                    await asyncio.sleep(1.0)
                    continue
                for records in batches.values():
                    for record in records:
                        key = record.key.decode() if record.key is not None else None
                        self.apply(key, record.value)
                if not caught_up.is_set() and all(
                    await asyncio.gather(*(self._position_reached(tp, off) for tp, off in end.items()))
                ):
                    caught_up.set()

        self._task = asyncio.create_task(follow(), name="tenants-registry")
        waiter = asyncio.create_task(caught_up.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            self._task.result()
        if waiter not in done:
            waiter.cancel()
            raise TimeoutError("tenants.v1 was not read to its end in time")

    async def _position_reached(self, tp: TopicPartition, end_offset: int) -> bool:
        assert self._consumer is not None
        return bool(await self._consumer.position(tp) >= end_offset)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
