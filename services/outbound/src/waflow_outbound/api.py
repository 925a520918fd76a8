"""Outbound's REST routes: the tenant's templates, search, favourites and previews."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from waflow_common.customers import is_bsuid
from waflow_common.events.envelope import Clock
from waflow_common.http import ERROR_RESPONSES, ApiError, NotFound, error_body, tenant_dependency
from waflow_common.tenants import Tenant, TenantRegistry

from waflow_outbound.catalog import TemplateCatalog, components_of
from waflow_outbound.domain import WINDOW, window_open
from waflow_outbound.domain_templates import TemplateParamsError, bind
from waflow_outbound.repository import Document, OutboundRepository


@dataclass(frozen=True)
class OutboundContext:
    registry: TenantRegistry
    repository: OutboundRepository
    catalog: TemplateCatalog
    clock: Clock


def _context(request: Request) -> OutboundContext:
    ctx: OutboundContext = request.app.state.outbound
    return ctx


def _registry(request: Request) -> TenantRegistry:
    return _context(request).registry


CurrentTenant = Annotated[Tenant, Depends(tenant_dependency(_registry))]
Context = Annotated[OutboundContext, Depends(_context)]
TemplateId = Annotated[
    str, Path(min_length=1, max_length=200, description="the template's id", examples=["1189302485011"])
]


class TemplateParamsInvalid(ApiError):
    status_code = 422
    code = "template_params"


class TemplateOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "template_id": "104882910347561.open_template.en",
                    "waba_id": "104882910347561",
                    "name": "open_template",
                    "language": "en",
                    "category": "UTILITY",
                    "status": "APPROVED",
                    "parameter_format": "POSITIONAL",
                    "content": "Goodbye %%SENTENCE%%. See you soon!",
                    "placeholders": ["SENTENCE"],
                    "favourite": True,
                    "components": [{"type": "BODY", "text": "Goodbye {{1}}. See you soon!"}],
                }
            ]
        }
    )

    template_id: str
    waba_id: str
    name: str
    language: str
    category: str
    status: str
    parameter_format: str
    content: str = Field(description="the body as agents write it, placeholders as %%NAME%%")
    placeholders: list[str] = Field(description="the parameter names a send or preview must give")
    favourite: bool
    components: list[dict[str, Any]] = Field(description="Meta's components, as listed by the WhatsApp API")


class TemplateList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"templates": [TemplateOut.model_json_schema()["examples"][0]]}]}
    )
    templates: list[TemplateOut]


class PreviewRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"parameters": {"SENTENCE": "and thank you for your order"}}]}
    )
    parameters: dict[str, str] | list[str] = Field(
        default_factory=dict, description="by placeholder name (SENTENCE or %%SENTENCE%%), or in order"
    )


class Preview(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "template_id": "104882910347561.open_template.en",
                    "header": None,
                    "body": "Goodbye and thank you for your order. See you soon!",
                    "footer": None,
                    "buttons": [],
                }
            ]
        }
    )
    template_id: str
    header: str | None
    body: str
    footer: str | None
    buttons: list[str]


class SyncResult(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"templates": 6, "synced_at": "2026-01-01T10:32:05Z"}]})
    templates: int
    synced_at: datetime


router = APIRouter(prefix="/v1/templates", tags=["templates"], responses={401: ERROR_RESPONSES[401]})


def _out(document: Document, favourites: set[str]) -> TemplateOut:
    return TemplateOut(
        template_id=document["template_id"],
        waba_id=document["waba_id"],
        name=document["name"],
        language=document["language"],
        category=document["category"],
        status=document["status"],
        parameter_format=document["parameter_format"],
        content=document["content"],
        placeholders=document["placeholders"],
        favourite=document["template_id"] in favourites,
        components=components_of(document),
    )


async def _template(ctx: OutboundContext, tenant: Tenant, template_id: str) -> Document:
    for document in await ctx.catalog.for_tenant(tenant):
        if document["template_id"] == template_id:
            return document
    raise NotFound("template not found")


@router.get(
    "",
    summary="The tenant's templates: search, filters, favourites first",
    response_model=TemplateList,
    responses={422: ERROR_RESPONSES[422]},
)
async def list_templates(
    tenant: CurrentTenant,
    ctx: Context,
    q: Annotated[str | None, Query(max_length=200, description="searches names and content")] = None,
    language: Annotated[str | None, Query(max_length=20, examples=["en"])] = None,
    category: Annotated[str | None, Query(max_length=40, examples=["UTILITY"])] = None,
    status: Annotated[str | None, Query(max_length=40, examples=["APPROVED"])] = None,
) -> TemplateList:
    favourites = await ctx.repository.favourites(tenant.tenant_id)
    needle = q.casefold() if q else None
    found = [
        d
        for d in await ctx.catalog.for_tenant(tenant)
        if (needle is None or needle in d["name"].casefold() or needle in d["content"].casefold())
        and (language is None or d["language"] == language)
        and (category is None or d["category"] == category.upper())
        and (status is None or d["status"] == status.upper())
    ]
    found.sort(key=lambda d: (d["template_id"] not in favourites, d["name"], d["language"]))
    return TemplateList(templates=[_out(d, favourites) for d in found])


@router.get(
    "/{template_id}",
    summary="One template",
    response_model=TemplateOut,
    responses={404: ERROR_RESPONSES[404]},
)
async def get_template(tenant: CurrentTenant, ctx: Context, template_id: TemplateId) -> TemplateOut:
    document = await _template(ctx, tenant, template_id)
    return _out(document, await ctx.repository.favourites(tenant.tenant_id))


@router.put(
    "/{template_id}/favourite",
    summary="Mark a template as a favourite (listed first)",
    response_model=TemplateOut,
    responses={404: ERROR_RESPONSES[404]},
)
async def add_favourite(tenant: CurrentTenant, ctx: Context, template_id: TemplateId) -> TemplateOut:
    document = await _template(ctx, tenant, template_id)
    await ctx.repository.add_favourite(tenant.tenant_id, template_id, ctx.clock())
    return _out(document, await ctx.repository.favourites(tenant.tenant_id))


@router.delete(
    "/{template_id}/favourite",
    summary="Remove a template from the favourites",
    response_model=TemplateOut,
    responses={404: ERROR_RESPONSES[404]},
)
async def remove_favourite(tenant: CurrentTenant, ctx: Context, template_id: TemplateId) -> TemplateOut:
    document = await _template(ctx, tenant, template_id)
    await ctx.repository.remove_favourite(tenant.tenant_id, template_id)
    return _out(document, await ctx.repository.favourites(tenant.tenant_id))


@router.post(
    "/{template_id}/preview",
    summary="Render a template with the given parameters, checked like a send",
    response_model=Preview,
    responses={
        404: ERROR_RESPONSES[404],
        422: {
            "description": "parameters do not fit the placeholders",
            "content": {
                "application/json": {
                    "example": error_body("template_params", "open_template takes ['SENTENCE']; missing ['SENTENCE']")
                }
            },
        },
    },
)
async def preview(tenant: CurrentTenant, ctx: Context, template_id: TemplateId, body: PreviewRequest) -> Preview:
    document = await _template(ctx, tenant, template_id)
    shape = ctx.catalog.shape(document)
    try:
        values = bind(shape, body.parameters)
    except TemplateParamsError as exc:
        raise TemplateParamsInvalid(str(exc)) from exc
    return Preview(template_id=template_id, **shape.render(values))


class RecipientState(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "phone_number_id": "118273645501928",
                    "wa_id": "15557654321",
                    "blacklisted": False,
                    "window_open": True,
                    "window_expires_at": "2026-01-02T10:32:05Z",
                }
            ]
        }
    )
    phone_number_id: str
    wa_id: str
    blacklisted: bool
    window_open: bool
    window_expires_at: datetime | None


recipients = APIRouter(prefix="/v1/recipients", tags=["recipients"], responses={401: ERROR_RESPONSES[401]})


@recipients.get(
    "/{phone_number_id}/{wa_id}",
    summary="What outbound knows of a customer: blacklisted, and whether free-form text may be sent now",
    response_model=RecipientState,
    responses={404: ERROR_RESPONSES[404]},
)
async def recipient_state(
    tenant: CurrentTenant,
    ctx: Context,
    phone_number_id: Annotated[str, Path(max_length=40, examples=["118273645501928"])],
    wa_id: Annotated[
        str,
        Path(
            pattern=r"^(\d{1,20}|[A-Z]{2}\.[A-Za-z0-9]{1,128})$",
            description="the customer's wa_id, or their business-scoped user id when they show no number",
            examples=["15557654321"],
        ),
    ],
) -> RecipientState:
    if phone_number_id not in tenant.phone_number_ids:
        raise NotFound("phone number not found")
    number, user_id = ("", wa_id) if is_bsuid(wa_id) else (wa_id, None)
    last = await ctx.repository.last_inbound_at(tenant.tenant_id, phone_number_id, number, user_id)
    return RecipientState(
        phone_number_id=phone_number_id,
        wa_id=wa_id,
        blacklisted=await ctx.repository.blacklisted(tenant.tenant_id, number, user_id),
        window_open=window_open(last, ctx.clock()),
        window_expires_at=last + WINDOW if last is not None else None,
    )


@router.post("/sync", summary="Sync the tenant's templates from WhatsApp now", response_model=SyncResult)
async def sync(tenant: CurrentTenant, ctx: Context) -> SyncResult:
    count = await ctx.catalog.sync_tenant(tenant)
    return SyncResult(templates=count, synced_at=ctx.clock())
