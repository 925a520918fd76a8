"""Contacts: builds settings, MongoDB, the contact book, the outbox relay, Kafka, and the FastAPI app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from faststream.kafka import KafkaBroker
from pydantic import Field
from pymongo import AsyncMongoClient
from waflow_common.events.envelope import Clock, utcnow
from waflow_common.http import health_router, install_correlation, install_error_handlers
from waflow_common.kafka import Consumer, EventPublisher, kafka_reachable, make_broker
from waflow_common.metrics import LagMonitor
from waflow_common.mongo import make_mongo_client, mongo_reachable, service_database
from waflow_common.outbox import OutboxRelay
from waflow_common.runtime import serve_api
from waflow_common.secrets import SecretBox
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry

from waflow_contacts import handlers
from waflow_contacts.api import ContactsContext, install_rule_errors, router
from waflow_contacts.api_lists import lists_router
from waflow_contacts.book import ContactBook
from waflow_contacts.lists import StaticLists
from waflow_contacts.repository import CONTACTS, ContactRepository


class ContactsSettings(CommonSettings):
    contacts_host: str = "127.0.0.1"
    contacts_port: int = 8003
    # Off only to prove that parked events survive a process that dies before relaying them (tests).
    contacts_relay_enabled: bool = True
    contacts_consume: bool = True
    # Records of different customers applied side by side (one customer's records always in order).
    contacts_consumer_concurrency: int = Field(default=16, ge=1, le=256)
    # Events parked longer than this by an instance that died are published by whichever instance rescans.
    contacts_outbox_orphan_seconds: float = Field(default=10.0, gt=0)
    contacts_outbox_rescan_seconds: float = Field(default=5.0, gt=0)


@dataclass(frozen=True)
class ContactsCore:
    """What every contacts process is made of, whatever serves it (the app here; the race test's workers)."""

    mongo: AsyncMongoClient[dict[str, Any]]
    repository: ContactRepository
    broker: KafkaBroker
    relay: OutboxRelay
    book: ContactBook
    lists: StaticLists


def build_core(
    settings: ContactsSettings, *, clock: Clock = utcnow, client_id: str = "waflow-contacts"
) -> ContactsCore:
    broker = make_broker(settings, client_id=client_id)
    mongo = make_mongo_client(settings)
    repository = ContactRepository(service_database(mongo, settings, "waflow_contacts"))
    relay = OutboxRelay(
        {CONTACTS: repository.contacts},
        EventPublisher(broker, settings),
        repository.leases,
        name="contacts-outbox",
        rescan_seconds=settings.contacts_outbox_rescan_seconds,
        orphan_seconds=settings.contacts_outbox_orphan_seconds,
    )
    book = ContactBook(repository, relay.notify, clock)
    return ContactsCore(mongo, repository, broker, relay, book, StaticLists(repository, book))


def create_app(settings: ContactsSettings | None = None, *, clock: Clock = utcnow) -> FastAPI:
    settings = settings or ContactsSettings()
    registry = TenantRegistry(settings, SecretBox(settings.waflow_secrets_key.get_secret_value()))
    core = build_core(settings, clock=clock)
    lag = LagMonitor(core.broker, settings)
    if settings.contacts_consume:
        handlers.subscribe(
            Consumer(core.broker, settings, group_id=handlers.GROUP_ID),
            Consumer(core.broker, settings, group_id=handlers.CONVERSATION_GROUP_ID),
            core.book,
            concurrency=settings.contacts_consumer_concurrency,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await core.repository.ensure_indexes()
        await registry.start()
        await core.broker.start()
        if settings.contacts_relay_enabled:
            core.relay.start()
        sweeps = asyncio.create_task(core.lists.run_sweeps(), name="contacts-list-sweep")
        lag.start()
        try:
            yield
        finally:
            await lag.stop()
            sweeps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeps
            await core.relay.stop()
            await core.broker.stop()
            await registry.stop()
            await core.mongo.close()

    async def ready(_: Request) -> dict[str, bool]:
        return {"kafka": await kafka_reachable(settings), "mongodb": await mongo_reachable(core.mongo)}

    app = FastAPI(
        title="waflow contacts",
        version="1",
        description=(
            "Contacts of a tenant's WhatsApp customers: master data, dynamic fields, tags, static lists, search, "
            "and delete-to-blacklist. Every change is announced as contact.changed (full snapshot) on contacts.v1. "
            "Every call carries `Authorization: Bearer <tenant API key>`."
        ),
        lifespan=lifespan,
    )
    app.state.contacts = ContactsContext(registry=registry, book=core.book, lists=core.lists)
    install_error_handlers(app)
    install_rule_errors(app)
    install_correlation(app)
    app.include_router(router)
    app.include_router(lists_router)
    app.include_router(health_router(ready))
    return app


def run() -> None:
    settings = ContactsSettings()
    serve_api(
        lambda: create_app(settings),
        host=settings.contacts_host,
        port=settings.contacts_port,
        log_level=settings.log_level,
    )
