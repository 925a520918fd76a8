"""tenants.v1 (compacted): Meta apps and tenants. Secrets travel sealed (see waflow_common.secrets)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from waflow_common import topics
from waflow_common.events.envelope import Envelope, Payload

TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,62}$"

SealedSecret = Annotated[str, Field(pattern=r"^v1:", description="AES-GCM sealed with WAFLOW_SECRETS_KEY")]


class AppRecord(Payload):
    app_id: str
    name: str
    app_secret: SealedSecret
    verify_token: SealedSecret


class PhoneNumber(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    phone_number_id: str
    waba_id: str
    display_phone_number: str
    rate_per_second: int = Field(default=80, ge=1, le=1000, description="outbound pace for this number")


class ApiKeyRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    key_id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    label: str = ""
    created_at: AwareDatetime


class TenantRecord(Payload):
    tenant_id: str = Field(pattern=TENANT_ID_PATTERN)
    name: str
    app_id: str
    phone_numbers: list[PhoneNumber]
    access_token: SealedSecret
    api_keys: list[ApiKeyRecord] = Field(default_factory=list)
    window_closing_lead_minutes: int = Field(default=60, ge=1, le=1380)

    @property
    def waba_ids(self) -> list[str]:
        return sorted({n.waba_id for n in self.phone_numbers})


class AppUpsertedEvent(Envelope[AppRecord]):
    topic: ClassVar[str] = topics.TENANTS
    event_type: Literal["app.upserted"] = "app.upserted"
    schema_version: Literal[1] = 1

    def key(self) -> str:
        return f"app:{self.payload.app_id}"


class TenantUpsertedEvent(Envelope[TenantRecord]):
    topic: ClassVar[str] = topics.TENANTS
    event_type: Literal["tenant.upserted"] = "tenant.upserted"
    schema_version: Literal[1] = 1

    def key(self) -> str:
        return f"tenant:{self.payload.tenant_id}"


TenantsEvent = Annotated[AppUpsertedEvent | TenantUpsertedEvent, Field(discriminator="event_type")]
tenants_adapter: TypeAdapter[TenantsEvent] = TypeAdapter(TenantsEvent)
