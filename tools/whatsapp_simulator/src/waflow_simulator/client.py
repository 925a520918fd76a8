"""Typed async client of the control plane, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

import httpx
from pydantic import TypeAdapter

from waflow_simulator.models import (
    App,
    BatchResult,
    CustomerMessage,
    CustomerMessageResult,
    DeliveryRecord,
    DeliveryResult,
    Number,
    SentMessage,
    StatusFlow,
    TemplateDef,
)

_TEMPLATES = TypeAdapter(list[TemplateDef])
_SENT = TypeAdapter(list[SentMessage])
_DELIVERIES = TypeAdapter(list[DeliveryRecord])


class BusinessNumber(Protocol):
    """A business phone number as the tenant registry describes it (waflow_common's PhoneNumber fits)."""

    @property
    def phone_number_id(self) -> str: ...
    @property
    def display_phone_number(self) -> str: ...
    @property
    def waba_id(self) -> str: ...
    @property
    def rate_per_second(self) -> int: ...


class SimulatorClient:
    """Talks to a running simulator; pass `http` to share a client (or an ASGI transport in tests)."""

    def __init__(self, base_url: str, http: httpx.AsyncClient | None = None) -> None:
        self._base = base_url.rstrip("/")
        self._owned = http is None
        self._http = http or httpx.AsyncClient(timeout=60.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, self._base + path, **kwargs)
        response.raise_for_status()
        return response

    async def health(self) -> bool:
        response = await self._http.get(self._base + "/healthz")
        return response.status_code == 200 and response.json() == {"status": "ok"}

    async def put_app(self, app_id: str, *, app_secret: str, webhook_url: str) -> App:
        body = {"app_secret": app_secret, "webhook_url": webhook_url}
        return App.model_validate((await self._call("PUT", f"/_sim/apps/{app_id}", json=body)).json())

    async def put_number(
        self,
        phone_number_id: str,
        *,
        display_phone_number: str,
        waba_id: str,
        app_id: str,
        access_token: str,
        rate_per_second: int = 80,
        status_flow: StatusFlow = "read",
        shuffle_statuses: bool = False,
    ) -> Number:
        body = {
            "display_phone_number": display_phone_number,
            "waba_id": waba_id,
            "app_id": app_id,
            "access_token": access_token,
            "rate_per_second": rate_per_second,
            "status_flow": status_flow,
            "shuffle_statuses": shuffle_statuses,
        }
        response = await self._call("PUT", f"/_sim/numbers/{phone_number_id}", json=body)
        return Number.model_validate(response.json())

    async def put_business(
        self,
        app_id: str,
        *,
        app_secret: str,
        webhook_url: str,
        access_token: str,
        numbers: Sequence[BusinessNumber],
    ) -> None:
        """One Meta app and the numbers of one business on it, as a deployment registers them."""
        await self.put_app(app_id, app_secret=app_secret, webhook_url=webhook_url)
        for number in numbers:
            await self.put_number(
                number.phone_number_id,
                display_phone_number=number.display_phone_number,
                waba_id=number.waba_id,
                app_id=app_id,
                access_token=access_token,
                rate_per_second=number.rate_per_second,
            )

    async def put_templates(
        self, waba_id: str, templates: Sequence[TemplateDef | Mapping[str, Any]]
    ) -> list[TemplateDef]:
        """Replace the WABA's custom templates; returns every template it now has, defaults included."""
        body = [t.model_dump(exclude_none=True) if isinstance(t, TemplateDef) else dict(t) for t in templates]
        response = await self._call("PUT", f"/_sim/wabas/{waba_id}/templates", json=body)
        return _TEMPLATES.validate_python(response.json())

    async def customer_message(
        self,
        phone_number_id: str,
        wa_id: str,
        *,
        text: str | None = None,
        type: str = "text",
        content: Mapping[str, Any] | Sequence[Any] | None = None,
        name: str = "",
        context: Mapping[str, Any] | None = None,
        referral: Mapping[str, Any] | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        timestamp: int | None = None,
        wamid: str | None = None,
        duplicates: int = 0,
        wait: bool = True,
    ) -> CustomerMessageResult:
        """A customer writes; `text="hi"` is shorthand for `type="text", content={"body": "hi"}`."""
        if content is None:
            if text is None:
                raise ValueError("give either text or content")
            content = {"body": text}
        message = CustomerMessage.model_validate(
            {
                "phone_number_id": phone_number_id,
                "from": wa_id,
                "name": name,
                "type": type,
                "content": content,
                "context": context,
                "referral": referral,
                "errors": errors,
                "timestamp": timestamp,
                "wamid": wamid,
            }
        )
        body = {**message.model_dump(by_alias=True, exclude_none=True), "duplicates": duplicates, "wait": wait}
        response = await self._call("POST", "/_sim/customers/messages", json=body)
        return CustomerMessageResult.model_validate(response.json())

    async def customer_batch(
        self,
        messages: Sequence[CustomerMessage],
        *,
        shuffle: bool = False,
        duplicates: int = 0,
        wait: bool = True,
    ) -> BatchResult:
        body = {
            "messages": [m.model_dump(by_alias=True, exclude_none=True) for m in messages],
            "shuffle": shuffle,
            "duplicates": duplicates,
            "wait": wait,
        }
        response = await self._call("POST", "/_sim/customers/batch", json=body)
        return BatchResult.model_validate(response.json())

    async def raw_webhook(
        self, app_id: str, body: Mapping[str, Any], *, duplicates: int = 0, wait: bool = True
    ) -> DeliveryResult:
        request = {"app_id": app_id, "body": body, "duplicates": duplicates, "wait": wait}
        response = await self._call("POST", "/_sim/webhooks/raw", json=request)
        return DeliveryResult.model_validate(response.json())

    async def close_window(self, phone_number_id: str, wa_id: str) -> None:
        await self._call("POST", "/_sim/windows/close", json={"phone_number_id": phone_number_id, "wa_id": wa_id})

    async def inject_fault(
        self,
        phone_number_id: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        count: int = 1,
        delay_seconds: float = 0.0,
    ) -> None:
        body = {
            "phone_number_id": phone_number_id,
            "code": code,
            "http_status": http_status,
            "count": count,
            "delay_seconds": delay_seconds,
        }
        await self._call("POST", "/_sim/faults", json=body)

    async def mark_undeliverable(self, wa_id: str) -> None:
        await self._call("POST", "/_sim/undeliverable", json={"wa_id": wa_id})

    async def sent(
        self, phone_number_id: str | None = None, to: str | None = None, type: str | None = None
    ) -> list[SentMessage]:
        """Every call the simulator received, optionally of one number, to one customer, of one kind."""
        given = (("phone_number_id", phone_number_id), ("to", to), ("type", type))
        params = {k: v for k, v in given if v is not None}
        return _SENT.validate_python((await self._call("GET", "/_sim/sent", params=params)).json())

    async def clear_sent(self) -> None:
        await self._call("DELETE", "/_sim/sent")

    async def deliveries(self, app_id: str | None = None) -> list[DeliveryRecord]:
        params = {"app_id": app_id} if app_id is not None else {}
        return _DELIVERIES.validate_python((await self._call("GET", "/_sim/deliveries", params=params)).json())

    async def drain(self, timeout: float = 30.0) -> bool:
        """Wait until the simulator has no webhook delivery in flight; False if `timeout` passed first."""
        response = await self._call("POST", "/_sim/drain", params={"timeout": timeout})
        idle: bool = response.json()["idle"]
        return idle

    async def reset(self) -> None:
        await self._call("POST", "/_sim/reset")
