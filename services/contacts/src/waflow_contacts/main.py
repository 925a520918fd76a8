"""Contacts: builds settings, MongoDB, the contact book and its directory, Kafka, and the FastAPI app."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from pydantic import Field
from waflow_common.events.envelope import Clock, utcnow
from waflow_common.http import health_router, install_correlation, install_error_handlers
from waflow_common.kafka import Consumer, EventPublisher, kafka_reachable, make_broker
from waflow_common.locks import KeyedLocks
from waflow_common.logs import configure_logging
from waflow_common.mongo import make_mongo_client, mongo_reachable, service_database
from waflow_common.runtime import tune_garbage_collector
from waflow_common.secrets import SecretBox
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry

from waflow_contacts import handlers
from waflow_contacts.api import ContactsContext, install_rule_errors, router
from waflow_contacts.book import ContactBook
from waflow_contacts.relay import ContactOutboxRelay
from waflow_contacts.repository import ContactRepository
from waflow_contacts.search import ContactDirectory


class ContactsSettings(CommonSettings):
    contacts_host: str = "127.0.0.1"
    contacts_port: int = 8003
    # Off only to prove that parked events survive a process that dies before relaying them (tests).
    contacts_relay_enabled: bool = True
    contacts_consume: bool = True
    # Records of different customers applied side by side (one customer's records always in order).
    contacts_consumer_concurrency: int = Field(default=16, ge=1, le=256)


def create_app(settings: ContactsSettings | None = None, *, clock: Clock = utcnow) -> FastAPI:
    settings = settings or ContactsSettings()
    broker = make_broker(settings, client_id="waflow-contacts")
    registry = TenantRegistry(settings, SecretBox(settings.waflow_secrets_key.get_secret_value()))
    mongo = make_mongo_client(settings)
    repository = ContactRepository(service_database(mongo, settings, "waflow_contacts"))
    locks = KeyedLocks()
    relay = ContactOutboxRelay(repository, EventPublisher(broker, settings), locks)
    book = ContactBook(repository, ContactDirectory(), locks, relay.notify, clock)
    if settings.contacts_consume:
        handlers.subscribe(
            Consumer(broker, settings, group_id=handlers.GROUP_ID),
            Consumer(broker, settings, group_id=handlers.CONVERSATION_GROUP_ID),
            book,
            concurrency=settings.contacts_consumer_concurrency,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await book.load()  # before consuming: the directory must know every contact a handler may change
        # The directory is ~10 objects per contact that live as long as the process: keeping them out of the
        # collector's generations avoids full collections of a million objects (100+ ms pauses at 100k contacts).
        gc.freeze()
        await registry.start()
        await broker.start()
        if settings.contacts_relay_enabled:
            relay.start()
        try:
            yield
        finally:
            await relay.stop()
            await broker.stop()
            await registry.stop()
            await mongo.close()

    async def ready(_: Request) -> dict[str, bool]:
        return {"kafka": await kafka_reachable(settings), "mongodb": await mongo_reachable(mongo)}

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
    app.state.contacts = ContactsContext(registry=registry, book=book)
    install_error_handlers(app)
    install_rule_errors(app)
    install_correlation(app)
    app.include_router(router)
    app.include_router(health_router(ready))
    return app


def run() -> None:
    settings = ContactsSettings()
    configure_logging(settings.log_level)
    tune_garbage_collector()
    uvicorn.run(create_app(settings), host=settings.contacts_host, port=settings.contacts_port, log_config=None)
