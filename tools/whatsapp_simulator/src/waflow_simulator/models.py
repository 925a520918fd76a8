"""Control-plane request and response bodies, shared by the routes and the client."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

StatusFlow = Literal["read", "delivered", "sent", "none"]
DeliveryKind = Literal["message", "status", "raw"]


class AppConfig(BaseModel):
    app_secret: str = Field(min_length=1)
    webhook_url: str = Field(min_length=1)


class App(AppConfig):
    app_id: str


class NumberConfig(BaseModel):
    display_phone_number: str = Field(pattern=r"^\d{1,20}$")
    waba_id: str
    app_id: str
    access_token: str = Field(min_length=1)
    rate_per_second: int = Field(default=80, ge=1)
    status_flow: StatusFlow = "read"
    shuffle_statuses: bool = False


class Number(NumberConfig):
    phone_number_id: str


class TemplateDef(BaseModel):
    """A template in the shape `GET /{waba_id}/message_templates` lists it."""

    name: str = Field(min_length=1)
    language: str = Field(min_length=1)
    status: str = "APPROVED"
    category: str = "UTILITY"
    components: list[dict[str, Any]]
    parameter_format: Literal["POSITIONAL", "NAMED"] = "POSITIONAL"
    id: str | None = None


class CustomerMessage(BaseModel):
    """One message a customer writes; `content` is the object Meta nests under the message's `type`."""

    model_config = ConfigDict(populate_by_name=True)

    phone_number_id: str
    from_: str = Field(alias="from", pattern=r"^\d{1,20}$")
    name: str = ""
    type: str = Field(min_length=1)
    content: dict[str, Any] | list[Any]
    context: dict[str, Any] | None = None
    referral: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None
    timestamp: int | None = None
    wamid: str | None = None


class CustomerMessageRequest(CustomerMessage):
    duplicates: int = Field(default=0, ge=0)
    wait: bool = True


class CustomerBatchRequest(BaseModel):
    messages: list[CustomerMessage] = Field(min_length=1)
    shuffle: bool = False
    duplicates: int = Field(default=0, ge=0)
    wait: bool = True


class RawWebhookRequest(BaseModel):
    app_id: str
    body: dict[str, Any]
    duplicates: int = Field(default=0, ge=0)
    wait: bool = True


class WindowRef(BaseModel):
    phone_number_id: str
    wa_id: str


class FaultRequest(BaseModel):
    phone_number_id: str
    code: int | None = None
    http_status: int | None = Field(default=None, ge=400, le=599)
    count: int = Field(default=1, ge=1)
    delay_seconds: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _has_an_effect(self) -> FaultRequest:
        if self.code is None and self.http_status is None and self.delay_seconds == 0:
            raise ValueError("a fault needs a code, an http_status or a delay_seconds")
        return self


class UndeliverableRequest(BaseModel):
    wa_id: str


class DeliveryResult(BaseModel):
    """Outcome of a webhook POST and its duplicates: all delivered, total attempts, last HTTP status."""

    delivered: bool
    attempts: int
    status_code: int | None


class CustomerMessageResult(DeliveryResult):
    wamid: str


class BatchResult(DeliveryResult):
    wamids: list[str]


class SentMessage(BaseModel):
    """One call the business side made to `/messages`, successful or not."""

    phone_number_id: str
    to: str | None
    type: str | None
    body: Any
    wamid: str | None
    error_code: int | None
    received_at: float


class DeliveryRecord(BaseModel):
    """One webhook POST (with its retries) the simulator made to an app."""

    app_id: str
    kind: DeliveryKind
    ids: list[str]
    status_code: int | None
    attempts: int
    delivered: bool
    error: str | None
    at: float


class Health(BaseModel):
    status: Literal["ok"] = "ok"
