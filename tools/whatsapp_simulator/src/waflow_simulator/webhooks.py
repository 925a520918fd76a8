"""Webhook signing and delivery with Meta's retry behaviour (exponential backoff, then give up)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections import deque
from typing import Any

import httpx

from waflow_simulator.clock import Clock
from waflow_simulator.envelopes import ids_in
from waflow_simulator.models import App, DeliveryKind, DeliveryRecord, DeliveryResult

SIGNATURE_HEADER = "X-Hub-Signature-256"


def encode(body: Any) -> bytes:
    """Meta's wire form: compact JSON with every non-ASCII character escaped as \\uXXXX."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def signature(app_secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookDispatcher:
    def __init__(
        self,
        http: httpx.AsyncClient,
        clock: Clock,
        log: deque[DeliveryRecord],
        *,
        retry_base_seconds: float,
        retry_max_attempts: int,
        concurrency: int,
    ) -> None:
        self._http = http
        self._clock = clock
        self._log = log
        self._retry_base = retry_base_seconds
        self._max_attempts = retry_max_attempts
        # Held only while a POST is in flight, never during backoff, so retries do not starve other apps.
        self._slots = asyncio.Semaphore(concurrency)
        # Parsing the URL is a measurable share of each POST at load-test rates; apps are few.
        self._urls: dict[str, httpx.URL] = {}

    async def post(self, app: App, body: bytes, kind: DeliveryKind, ids: list[str]) -> DeliveryRecord:
        """POST one body until a 2xx answer or the attempts run out; the outcome is logged either way."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "facebookexternalua",
            SIGNATURE_HEADER: signature(app.app_secret, body),
            # Meta still adds the legacy SHA-1 header; sending it too checks that receivers ignore it.
            "X-Hub-Signature": "sha1=" + hmac.new(app.app_secret.encode(), body, hashlib.sha1).hexdigest(),
        }
        url = self._urls.get(app.webhook_url)
        if url is None:
            url = self._urls[app.webhook_url] = httpx.URL(app.webhook_url)
        attempts = 0
        status: int | None = None
        error: str | None = None
        while True:
            attempts += 1
            try:
                async with self._slots:
                    response = await self._http.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            else:
                status, error = response.status_code, None
                if response.is_success:
                    break
            if attempts >= self._max_attempts:
                break
            await asyncio.sleep(self._retry_base * 2 ** (attempts - 1))
        record = DeliveryRecord(
            app_id=app.app_id,
            kind=kind,
            ids=ids,
            status_code=status,
            attempts=attempts,
            delivered=status is not None and 200 <= status < 300,
            error=error,
            at=self._clock.now(),
        )
        self._log.append(record)
        return record

    async def deliver(self, app: App, envelope: dict[str, Any], kind: DeliveryKind, copies: int = 1) -> DeliveryResult:
        """Deliver the same bytes `copies` times in a row, as Meta's duplicate deliveries do."""
        body, ids = encode(envelope), ids_in(envelope)
        records = [await self.post(app, body, kind, ids) for _ in range(copies)]
        return DeliveryResult(
            delivered=all(r.delivered for r in records),
            attempts=sum(r.attempts for r in records),
            status_code=records[-1].status_code,
        )
