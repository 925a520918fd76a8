"""Outbound: builds settings, MongoDB, Kafka, the WhatsApp client, lanes and the FastAPI app."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
from fastapi import FastAPI, Request
from pydantic import Field
from waflow_common.events.envelope import Clock, utcnow
from waflow_common.http import health_router, install_correlation, install_error_handlers
from waflow_common.kafka import EventPublisher, kafka_reachable, make_broker
from waflow_common.leases import LEASES_COLLECTION, Leases, instance_id
from waflow_common.metrics import LagMonitor
from waflow_common.mongo import make_mongo_client, mongo_reachable, service_database
from waflow_common.runtime import serve_api
from waflow_common.secrets import SecretBox
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry

from waflow_outbound.api import OutboundContext, recipients, router
from waflow_outbound.catalog import TemplateCatalog
from waflow_outbound.handlers import OutboundHandlers
from waflow_outbound.lanes import LaneSettings
from waflow_outbound.repository import DATABASE, OutboundRepository
from waflow_outbound.repository.pacing import Buckets
from waflow_outbound.sending import Dispatcher, SendingSettings
from waflow_outbound.whatsapp import WhatsAppClient

log = logging.getLogger(__name__)


class OutboundSettings(CommonSettings):
    outbound_host: str = "127.0.0.1"
    outbound_port: int = 8004
    # Pinned so a Graph release never changes our requests under us (v24 dropped `conversation`).
    whatsapp_api_version: str = Field(default="v23.0", pattern=r"^v\d+\.\d+$")
    whatsapp_timeout_seconds: float = Field(default=15.0, gt=0)
    whatsapp_max_connections: int = Field(default=256, ge=1)
    outbound_template_sync_seconds: float = Field(default=900.0, gt=0)
    outbound_retry_base_seconds: float = Field(default=0.5, gt=0)
    outbound_retry_cap_seconds: float = Field(default=30.0, gt=0)
    outbound_retry_max_seconds: float = Field(default=300.0, gt=0)
    outbound_window_grace_seconds: float = Field(default=2.0, ge=0)
    # A killed instance's requests are taken over by another within about this time.
    outbound_claim_seconds: float = Field(default=20.0, gt=1)
    outbound_recovery_seconds: float = Field(default=2.0, gt=0)
    outbound_finished_kept_days: float = Field(default=7.0, gt=0, description="how long a request is a duplicate")
    outbound_recipient_burst: int = Field(default=20, ge=1, description="Meta allows bursts to one customer")
    outbound_recipient_interval_seconds: float = Field(default=6.0, gt=0, description="Meta's pair rate")
    # A number starts at most `rate` calls in any 1 + margin seconds: the margin covers a call starting late and
    # the jitter between our start and WhatsApp's count (so 80/s sends at about 77/s and never above 80 in a second).
    outbound_pace_margin_seconds: float = Field(default=0.04, ge=0, le=1)
    # After a 130429 the number pauses (the retry's backoff); after another within this long once that pause is
    # over, it also runs at half pace for this long, on every instance (domain.after_rate_limit).
    outbound_slow_number_seconds: float = Field(default=5.0, ge=0)


def create_app(settings: OutboundSettings | None = None, *, clock: Clock = utcnow) -> FastAPI:
    settings = settings or OutboundSettings()
    broker = make_broker(settings, client_id="waflow-outbound")
    registry = TenantRegistry(settings, SecretBox(settings.waflow_secrets_key.get_secret_value()))
    mongo = make_mongo_client(settings)
    database = service_database(mongo, settings, DATABASE)
    owner = instance_id()
    repository = OutboundRepository(
        database,
        owner,
        claim_seconds=settings.outbound_claim_seconds,
        finished_kept=timedelta(days=settings.outbound_finished_kept_days),
    )
    leases = Leases(database[LEASES_COLLECTION], owner)
    buckets = Buckets(database)
    http = httpx.AsyncClient(
        timeout=settings.whatsapp_timeout_seconds,
        limits=httpx.Limits(
            max_connections=settings.whatsapp_max_connections,
            max_keepalive_connections=settings.whatsapp_max_connections,
        ),
    )
    whatsapp = WhatsAppClient(settings.whatsapp_api_base_url, settings.whatsapp_api_version, http)
    catalog = TemplateCatalog(
        repository, whatsapp, registry, clock, leases, interval_seconds=settings.outbound_template_sync_seconds
    )
    dispatcher = Dispatcher(
        repository=repository,
        buckets=buckets,
        registry=registry,
        catalog=catalog,
        whatsapp=whatsapp,
        publisher=EventPublisher(broker, settings),
        clock=clock,
        settings=SendingSettings(
            retry_base_seconds=settings.outbound_retry_base_seconds,
            retry_cap_seconds=settings.outbound_retry_cap_seconds,
            retry_max_seconds=settings.outbound_retry_max_seconds,
            window_grace_seconds=settings.outbound_window_grace_seconds,
            recovery_seconds=settings.outbound_recovery_seconds,
            slow_number_seconds=settings.outbound_slow_number_seconds,
        ),
        lane_settings=LaneSettings(
            recipient_burst=settings.outbound_recipient_burst,
            recipient_interval_seconds=settings.outbound_recipient_interval_seconds,
            margin_seconds=settings.outbound_pace_margin_seconds,
        ),
        rng=random.Random(),
    )
    handlers = OutboundHandlers(repository, dispatcher, catalog, registry, clock)
    handlers.subscribe(broker, settings)
    lag = LagMonitor(broker, settings)

    def tenant_changed(tenant: object) -> None:
        dispatcher.tenants_changed()
        catalog.request_sync(getattr(tenant, "tenant_id", ""))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await repository.create_indexes()
            await buckets.create_indexes()
            await buckets.calibrate()
            await registry.start()
            registry.on_tenant_change(tenant_changed)
            await catalog.first_sync()
            await broker.start()
            dispatcher.start()
            catalog.start()
            lag.start()
            yield
        finally:
            await lag.stop()
            await catalog.stop()
            await dispatcher.stop()
            await broker.stop()
            await registry.stop()
            await http.aclose()
            await mongo.close()

    async def ready(_: Request) -> dict[str, bool]:
        return {"kafka": await kafka_reachable(settings), "mongodb": await mongo_reachable(mongo)}

    app = FastAPI(
        title="waflow outbound",
        version="1",
        description=(
            "The only door to the WhatsApp Cloud API: consumes send requests, enforces the blacklist, the "
            "24-hour window and templates, paces and retries calls, and publishes each request's result. "
            "Serves the tenant's templates, favourites and previews."
        ),
        lifespan=lifespan,
    )
    app.state.outbound = OutboundContext(registry=registry, repository=repository, catalog=catalog, clock=clock)
    app.state.dispatcher = dispatcher
    install_error_handlers(app)
    install_correlation(app)
    app.include_router(router)
    app.include_router(recipients)
    app.include_router(health_router(ready))
    return app


def run() -> None:
    settings = OutboundSettings()
    serve_api(
        lambda: create_app(settings),
        host=settings.outbound_host,
        port=settings.outbound_port,
        log_level=settings.log_level,
        # Young collections every 5,000 objects, not ingest's 50,000: those took 25 ms here, and a call held up
        # as long lands outside the 40 ms the number's pace leaves for jitter (bench/outbound: 130429s after each).
        young_objects=5_000,
    )


if __name__ == "__main__":
    run()
