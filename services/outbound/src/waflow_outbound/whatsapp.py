"""The one door to the WhatsApp Cloud API: sending, marking read and listing templates (nothing else calls it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from waflow_outbound.domain import Cleared, MetaFailure


@dataclass(frozen=True)
class Accepted:
    wamid: str
    message_status: str | None = None


class TemplateListError(RuntimeError):
    """Meta refused to list a WABA's templates."""


def _failure(response: httpx.Response) -> MetaFailure:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = error.get("code")
    data = error.get("error_data") or {}
    return MetaFailure(
        http_status=response.status_code,
        # A body without Meta's error object (a proxy's 502 page) is a transport failure: no code.
        code=code if isinstance(code, int) else None,
        title=error.get("message"),
        details=data.get("details") if isinstance(data, dict) else None,
    )


class WhatsAppClient:
    def __init__(self, base_url: str, version: str, http: httpx.AsyncClient) -> None:
        self._base = base_url.rstrip("/")
        self._version = version
        self._http = http

    def _url(self, object_id: str, edge: str) -> str:
        return f"{self._base}/{self._version}/{object_id}/{edge}"

    async def post_message(self, cleared: Cleared, token: str) -> Accepted | MetaFailure:
        """One `/messages` call, of a call the gate cleared (there is no other way to reach a customer).
        Transport errors come back as a failure without a code (temporary)."""
        call = cleared.call
        body = call.body
        try:
            response = await self._http.post(
                self._url(call.phone_number_id, "messages"), json=body, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.TransportError as exc:
            return MetaFailure(http_status=None, code=None, title=type(exc).__name__, details=str(exc)[:300])
        if response.status_code != 200:
            return _failure(response)
        data = response.json()
        if data.get("success") is True:  # a read receipt
            return Accepted(wamid=str(body.get("message_id", "")))
        message = (data.get("messages") or [{}])[0]
        return Accepted(wamid=str(message["id"]), message_status=message.get("message_status"))

    async def list_templates(self, waba_id: str, token: str) -> list[dict[str, Any]]:
        """Every template of a WABA, following Meta's paging."""
        url: str | None = self._url(waba_id, "message_templates")
        params: dict[str, Any] | None = {
            "limit": 100,
            "fields": "name,status,category,language,components,parameter_format,id",
        }
        templates: list[dict[str, Any]] = []
        pages = 0
        while url is not None and pages < 100:
            response = await self._http.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
            if response.status_code != 200:
                failure = _failure(response)
                raise TemplateListError(f"listing templates of {waba_id}: {failure.code} {failure.title}")
            page = response.json()
            templates.extend(page.get("data") or [])
            url = (page.get("paging") or {}).get("next")
            params = None  # `next` carries every parameter already
            pages += 1
        return templates
