"""Builds the simulator's FastAPI app and runs it with uvicorn."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from waflow_simulator.background import Background
from waflow_simulator.clock import Clock, SystemClock
from waflow_simulator.control_api import control_router
from waflow_simulator.customers import Customers, MixedApps
from waflow_simulator.errors import GraphError
from waflow_simulator.graph_api import graph_router
from waflow_simulator.models import Health
from waflow_simulator.sending import Sender
from waflow_simulator.settings import SimulatorSettings
from waflow_simulator.state import NotConfigured, SimState
from waflow_simulator.transport import KeepAliveTransport
from waflow_simulator.webhooks import WebhookDispatcher


async def _graph_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, GraphError)
    return JSONResponse(exc.body, status_code=exc.http_status)


async def _not_configured(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _bad_request(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


def create_app(
    settings: SimulatorSettings | None = None,
    *,
    clock: Clock | None = None,
    http_client: httpx.AsyncClient | None = None,
    rng: random.Random | None = None,
) -> FastAPI:
    """The whole simulator; `http_client` carries webhooks (the caller closes it when it passes one)."""
    settings = settings or SimulatorSettings()
    clock = clock or SystemClock()
    http = http_client or httpx.AsyncClient(transport=KeepAliveTransport(), timeout=settings.webhook_timeout_seconds)
    state = SimState(settings.max_log_entries)
    background = Background()
    dispatcher = WebhookDispatcher(
        http,
        clock,
        state.deliveries,
        retry_base_seconds=settings.retry_base_seconds,
        retry_max_attempts=settings.retry_max_attempts,
        concurrency=settings.webhook_concurrency,
    )
    sender = Sender(state, clock, dispatcher, background)
    customers = Customers(state, clock, dispatcher, background, rng or random.Random())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await background.cancel_all()
        if http_client is None:
            await http.aclose()

    app = FastAPI(title="waflow WhatsApp Cloud API simulator", lifespan=lifespan)
    app.add_exception_handler(GraphError, _graph_error)
    app.add_exception_handler(NotConfigured, _not_configured)
    app.add_exception_handler(MixedApps, _bad_request)

    @app.get("/healthz")
    async def healthz() -> Health:
        return Health()

    # Control routes first: `/_sim/customers/messages` would otherwise match `/{version}/{id}/messages`.
    app.include_router(control_router(state, customers, background))
    app.include_router(graph_router(state, sender, clock))
    return app


def run() -> None:
    settings = SimulatorSettings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=settings.access_log,
    )
