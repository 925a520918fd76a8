"""whatsapp.webhooks.v1: every webhook delivery, byte for byte, for audit and replay."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AwareDatetime, Field

from waflow_common import topics
from waflow_common.events.envelope import Envelope, Payload


class WebhookReceived(Payload):
    app_id: str
    body: str = Field(description="the raw request body exactly as received (Meta sends ASCII-escaped JSON)")
    signature: str = Field(description="the X-Hub-Signature-256 header it carried")
    received_at: AwareDatetime
    phone_number_ids: list[str]
    tenant_ids: list[str]
    unrouted_phone_number_ids: list[str] = Field(
        default_factory=list,
        description="numbers in the body that no tenant owns: archived here, routed nowhere",
    )
    foreign_phone_number_ids: list[str] = Field(
        default_factory=list,
        description="numbers (or `waba:<id>`) in the body registered to a tenant of another Meta app than the one "
        "that signed it: archived here, routed nowhere",
    )


class WebhookReceivedEvent(Envelope[WebhookReceived]):
    topic: ClassVar[str] = topics.WEBHOOKS
    event_type: Literal["webhook.received"] = "webhook.received"
    schema_version: Literal[1] = 1

    def key(self) -> str:
        return self.payload.app_id

    def headers(self) -> dict[str, str]:
        # Lets a per-tenant replay filter records without parsing the body.
        return super().headers() | {
            "tenant_ids": ",".join(self.payload.tenant_ids),
            "phone_number_ids": ",".join(self.payload.phone_number_ids),
        }
