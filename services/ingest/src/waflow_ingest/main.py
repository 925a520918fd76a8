"""Ingest: builds settings, the Kafka producer, the tenants registry and the app it serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from waflow_common.events.envelope import Clock, utcnow
from waflow_common.http import health_router, install_correlation, install_error_handlers
from waflow_common.kafka import kafka_reachable
from waflow_common.producer import RecordProducer
from waflow_common.runtime import serve_api
from waflow_common.secrets import SecretBox
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry

from waflow_ingest.api import IngestApp, IngestContext, WebhookReceiver, router
from waflow_ingest.openapi import document_webhook


class IngestSettings(CommonSettings):
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8001
    # Meta's documented maximum is 3 MB (REFERENCE §3); a little headroom for escaping.
    ingest_max_body_bytes: int = 3 * 1024 * 1024 + 64 * 1024


def create_app(settings: IngestSettings | None = None, *, clock: Clock = utcnow) -> IngestApp:
    settings = settings or IngestSettings()
    producer = RecordProducer(settings, client_id="waflow-ingest")
    registry = TenantRegistry(settings, SecretBox(settings.waflow_secrets_key.get_secret_value()))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await producer.start()
        try:
            await registry.start()
            yield
        finally:
            await registry.stop()
            await producer.stop()

    async def ready(_: Request) -> dict[str, bool]:
        return {"kafka": await kafka_reachable(settings)}

    app = FastAPI(
        title="waflow ingest",
        version="1",
        description="Receives WhatsApp Cloud API webhooks and turns them into Kafka events.",
        lifespan=lifespan,
    )
    ctx = IngestContext(
        registry=registry,
        producer=producer,
        settings=settings,
        clock=clock,
        max_body_bytes=settings.ingest_max_body_bytes,
    )
    app.state.ingest = ctx
    install_error_handlers(app)
    install_correlation(app)
    app.include_router(router)
    app.include_router(health_router(ready))
    document_webhook(app)
    return IngestApp(app, WebhookReceiver(ctx))


def run() -> None:
    settings = IngestSettings()
    serve_api(
        lambda: create_app(settings),
        host=settings.ingest_host,
        port=settings.ingest_port,
        log_level=settings.log_level,
        uvicorn_access_log=True,
    )
