"""Conversation: builds settings, MongoDB, the Kafka consumer and producer, the outbox relay, the window sweep
and the FastAPI app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from pydantic import Field
from waflow_common.events.envelope import Clock, utcnow
from waflow_common.http import health_router, install_correlation, install_error_handlers
from waflow_common.kafka import Consumer, EventPublisher, kafka_reachable, make_broker
from waflow_common.leases import Leases
from waflow_common.metrics import LagMonitor
from waflow_common.mongo import make_mongo_client, mongo_reachable, service_database
from waflow_common.outbox import OutboxRelay
from waflow_common.runtime import serve_api
from waflow_common.secrets import SecretBox
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry

from waflow_conversation.api import ConversationContext, install_domain_errors, router
from waflow_conversation.api_notes import notes_router
from waflow_conversation.handlers import GROUP_ID, ConversationHandlers, WindowSweeper
from waflow_conversation.repository import ChatRepository, Collections
from waflow_conversation.repository_messages import MessageRepository
from waflow_conversation.repository_notes import NoteRepository

DATABASE = "waflow_conversation"


class ConversationSettings(CommonSettings):
    conversation_host: str = "127.0.0.1"
    conversation_port: int = 8002
    # Records of different chats applied side by side (one chat's records always in order).
    conversation_consumer_concurrency: int = Field(default=16, ge=1, le=256)
    conversation_sweep_seconds: float = Field(default=30.0, gt=0)


def tenant_numbers(registry: TenantRegistry) -> Callable[[str], list[str]]:
    def numbers(tenant_id: str) -> list[str]:
        tenant = registry.tenant(tenant_id)
        return tenant.phone_number_ids if tenant else []

    return numbers


def create_app(settings: ConversationSettings | None = None, *, clock: Clock = utcnow) -> FastAPI:
    settings = settings or ConversationSettings()
    broker = make_broker(settings, client_id="waflow-conversation")
    registry = TenantRegistry(settings, SecretBox(settings.waflow_secrets_key.get_secret_value()))
    mongo = make_mongo_client(settings)
    collections = Collections(service_database(mongo, settings, DATABASE))
    leases = Leases(collections.leases)
    relay = OutboxRelay(collections.with_outbox(), EventPublisher(broker, settings), leases, name="conversation")
    chats = ChatRepository(collections, clock, relay.notify, tenant_numbers(registry))
    messages = MessageRepository(collections, chats, clock, relay.notify)
    notes = NoteRepository(collections, clock, relay.notify)
    sweeper = WindowSweeper(chats, registry, clock, interval_seconds=settings.conversation_sweep_seconds, leases=leases)
    handlers = ConversationHandlers(chats, messages)
    lag = LagMonitor(broker, settings)
    handlers.subscribe(
        Consumer(broker, settings, group_id=GROUP_ID), concurrency=settings.conversation_consumer_concurrency
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await collections.create_indexes()  # reads no documents: start-up time does not grow with the data
        await registry.start()
        await broker.start()
        relay.start()
        sweeper.start()
        lag.start()
        try:
            yield
        finally:
            await lag.stop()
            await sweeper.stop()
            await relay.stop()
            await broker.stop()
            await registry.stop()
            await mongo.close()

    async def ready(_: Request) -> dict[str, bool]:
        return {"kafka": await kafka_reachable(settings), "mongodb": await mongo_reachable(mongo)}

    app = FastAPI(
        title="waflow conversation",
        version="1",
        description=(
            "Chats, messages, unread state, the 24-hour window, append-only notes and sending requests. "
            "Every call needs `Authorization: Bearer <api key>`; the key decides the tenant."
        ),
        lifespan=lifespan,
    )
    app.state.conversation = ConversationContext(
        registry=registry,
        chats=chats,
        messages=messages,
        notes=notes,
        relay=relay,
        sweeper=sweeper,
        clock=clock,
    )
    install_error_handlers(app)
    install_domain_errors(app)
    install_correlation(app)
    app.include_router(router)
    app.include_router(notes_router)
    app.include_router(health_router(ready))
    return app


def run() -> None:
    settings = ConversationSettings()
    serve_api(
        lambda: create_app(settings),
        host=settings.conversation_host,
        port=settings.conversation_port,
        log_level=settings.log_level,
    )
