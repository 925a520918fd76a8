"""Fixtures: a manual clock, a webhook receiver that checks signatures, and the simulator over ASGI."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from waflow_simulator.client import SimulatorClient
from waflow_simulator.clock import ManualClock
from waflow_simulator.main import create_app
from waflow_simulator.settings import SimulatorSettings

SIM_URL = "http://sim.test"


@dataclass(frozen=True)
class Ids:
    """Tenant A of the fixtures (tests/fixtures/whatsapp/README.md) and one of its customers."""

    app_id: str = "1180000000001"
    app_secret: str = "app-secret-1"
    waba_id: str = "104882910347561"
    number_id: str = "118273645501928"
    display: str = "15550001234"
    token: str = "EAAG-token-1"
    customer: str = "15557654321"
    webhook_url: str = "http://ingest.test/webhooks/whatsapp/1180000000001"

    def text(self, to: str | None = None, body: str = "Hello from the shop") -> dict[str, Any]:
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to or self.customer,
            "type": "text",
            "text": {"body": body},
        }


IDS = Ids()

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Receiver:
    """The ingest side: records every webhook POST byte for byte and checks its signature."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.signature_ok: list[bool] = []
        self.answers: deque[int] = deque()
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        chunks = []
        while True:
            event = await receive()
            chunks.append(event.get("body", b""))
            if not event.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.calls += 1
        status = self.answers.popleft() if self.answers else 200
        if status < 300:
            self.bodies.append(body)
            self.headers.append(headers)
            expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            self.signature_ok.append(hmac.compare_digest(expected, headers.get("x-hub-signature-256", "")))
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(b) for b in self.bodies]

    def statuses(self) -> list[dict[str, Any]]:
        return [
            status
            for payload in self.payloads()
            for entry in payload["entry"]
            for change in entry["changes"]
            for status in change["value"].get("statuses", [])
        ]

    def messages(self) -> list[dict[str, Any]]:
        return [
            message
            for payload in self.payloads()
            for entry in payload["entry"]
            for change in entry["changes"]
            for message in change["value"].get("messages", [])
        ]


@pytest.fixture
def ids() -> Ids:
    return IDS


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_767_258_000.0)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver(IDS.app_secret)


@pytest.fixture
def sim_settings() -> SimulatorSettings:
    return SimulatorSettings(retry_base_seconds=0.001, retry_max_attempts=4)


@pytest.fixture
async def http(
    clock: ManualClock, receiver: Receiver, sim_settings: SimulatorSettings
) -> AsyncIterator[httpx.AsyncClient]:
    """Client of the simulator app, whose webhooks go to `receiver`; neither side touches the network."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver)) as webhooks:
        app = create_app(sim_settings, clock=clock, http_client=webhooks, rng=random.Random(7))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=SIM_URL) as client:
            yield client
            # Cancels status deliveries still in flight so none outlives its test.
            await client.post("/_sim/reset")


@pytest.fixture
async def sim(http: httpx.AsyncClient) -> SimulatorClient:
    """The simulator with tenant A's app and number configured."""
    client = SimulatorClient(SIM_URL, http)
    await client.put_app(IDS.app_id, app_secret=IDS.app_secret, webhook_url=IDS.webhook_url)
    await client.put_number(
        IDS.number_id,
        display_phone_number=IDS.display,
        waba_id=IDS.waba_id,
        app_id=IDS.app_id,
        access_token=IDS.token,
    )
    return client


SendMessage = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def send(http: httpx.AsyncClient) -> SendMessage:
    """POST /{version}/{number}/messages as the outbound service would."""

    async def post(
        body: Any, *, token: str = IDS.token, number: str = IDS.number_id, version: str = "v23.0"
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        if isinstance(body, bytes):
            return await http.post(f"/{version}/{number}/messages", content=body, headers=headers)
        return await http.post(f"/{version}/{number}/messages", json=body, headers=headers)

    return post
