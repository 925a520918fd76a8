"""The contacts REST API under /v1: contacts, tags, dynamic fields and lists of the caller's tenant."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from waflow_common.customers import PhoneNumber, wa_id_forms
from waflow_common.http import ERROR_RESPONSES, error_body, tenant_dependency
from waflow_common.tenants import Tenant, TenantRegistry

from waflow_contacts import domain
from waflow_contacts.book import Cause, ContactBook
from waflow_contacts.domain import ContactRuleError, FieldDefinition, InvalidPhone
from waflow_contacts.errors import ContactNotFound
from waflow_contacts.lists import StaticLists
from waflow_contacts.schemas import (
    PHONE_SCHEMA,
    TAG_SCHEMA,
    Contact,
    ContactCreate,
    ContactLists,
    ContactPage,
    ContactUpdate,
    FieldDefinitionIn,
    FieldDefinitionOut,
    FieldDefinitions,
    TagCatalogue,
    TagCount,
    TagsIn,
    contact_out,
)
from waflow_contacts.search import ContactQuery


@dataclass(frozen=True)
class ContactsContext:
    registry: TenantRegistry
    book: ContactBook
    lists: StaticLists


def _context(request: Request) -> ContactsContext:
    ctx: ContactsContext = request.app.state.contacts
    return ctx


def _registry(request: Request) -> TenantRegistry:
    return _context(request).registry


def _book(request: Request) -> ContactBook:
    return _context(request).book


def _lists(request: Request) -> StaticLists:
    return _context(request).lists


def _cause(request: Request) -> Cause:
    return Cause(getattr(request.state, "correlation_id", None) or "")


CurrentTenant = Annotated[Tenant, Depends(tenant_dependency(_registry))]
Book = Annotated[ContactBook, Depends(_book)]
ListsOf = Annotated[StaticLists, Depends(_lists)]
RequestCause = Annotated[Cause, Depends(_cause)]
ContactId = Annotated[str, Path(max_length=64, examples=["c_4f1c2a9e8b7d6c5b4a392817"])]
ListId = Annotated[str, Path(max_length=64, examples=["l_9a8b7c6d5e4f3a2b"])]

INVALID_RULE = {
    "description": "Invalid input; `details.field` names what was wrong",
    "content": {
        "application/json": {
            "example": error_body(
                "invalid_field",
                "fields.orders: expected a number",
                {"field": "fields.orders", "reason": "expected a number"},
            )
        }
    },
}
RESPONSES: dict[int | str, dict[str, Any]] = {**ERROR_RESPONSES, 422: INVALID_RULE}


def install_rule_errors(app: FastAPI) -> None:
    """A refused rule (bad phone, tag, field value) is a 422 that names the field and the reason."""

    @app.exception_handler(ContactRuleError)
    async def on_rule_error(_: Request, exc: ContactRuleError) -> JSONResponse:
        code = "invalid_phone" if isinstance(exc, InvalidPhone) else "invalid_field"
        return JSONResponse(error_body(code, str(exc), {"field": exc.field, "reason": exc.reason}), status_code=422)


router = APIRouter(prefix="/v1", responses=RESPONSES)


def contact_page(items: list[bytes], next_cursor: str | None) -> Response:
    """A ContactPage assembled from the contacts' JSON (no response-model round trip per contact)."""
    body = b'{"items":[' + b",".join(items) + b'],"next_cursor":' + json.dumps(next_cursor).encode() + b"}"
    return Response(body, media_type="application/json")


# --- contacts ------------------------------------------------------------------------------------------------


@router.post(
    "/contacts",
    tags=["contacts"],
    summary="Create a contact by phone number (an existing number returns the existing contact)",
    response_model=Contact,
    status_code=201,
    responses={200: {"description": "The number already had a contact; it is returned unchanged", "model": Contact}},
)
async def create_contact(
    body: ContactCreate, tenant: CurrentTenant, book: Book, cause: RequestCause, response: Response
) -> Contact:
    phone = domain.normalise_phone(body.phone)
    # Checked before the number is looked up: an existing number must not make invalid tags acceptable.
    domain.normalise_tags(body.tags)
    updates: dict[str, Any] = {"fields": body.fields} if body.fields else {}
    if body.name is not None:
        updates["name"] = body.name
    outcome = await book.create(tenant.tenant_id, phone, updates, body.tags, cause)
    if not outcome.created:
        response.status_code = 200
    return contact_out(outcome.contact)


@router.get(
    "/contacts",
    tags=["contacts"],
    summary="List, search and filter contacts (cursor pagination, stable order: name, then number)",
    response_model=ContactPage,
)
async def list_contacts(
    tenant: CurrentTenant,
    book: Book,
    q: Annotated[
        str | None,
        Query(
            max_length=100,
            description="name or phone substring; case- and accent-insensitive; phone in any common format",
            examples=["maria", "+34 612", "(555) 765"],
        ),
    ] = None,
    tag: Annotated[list[str], Query(max_length=10, description="contacts with every one of these tags")] = [],  # noqa: B006
    list_id: Annotated[str | None, Query(alias="list", max_length=64, description="members of this list")] = None,
    deleted: Annotated[bool, Query(description="true: only deleted (blacklisted) contacts")] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    tags = tuple(domain.normalise_tags(tag))
    query = ContactQuery(search=q or None, tags=tags, list_id=list_id, deleted=deleted)
    return contact_page(*await book.search(tenant.tenant_id, query, limit=limit, cursor=cursor))


@router.get(
    "/contacts/by-phone/{phone}",
    tags=["contacts"],
    summary="Find a contact by phone number in any common format",
    response_model=Contact,
)
async def contact_by_phone(
    tenant: CurrentTenant,
    book: Book,
    phone: Annotated[
        str,
        Path(
            max_length=40,
            json_schema_extra=PHONE_SCHEMA | {"pattern": r"^[0-9 +().\-]+$"},  # no "/" in a path segment
            examples=["+34612345678"],
        ),
    ],
) -> Contact:
    try:
        number = domain.normalise_phone(phone)
    except InvalidPhone:
        # Meta's wa_ids are looked up as they are, even where a number library doubts them (test numbers).
        digits = domain.phone_query_digits(phone)
        if not digits or not 7 <= len(digits) <= 15:
            raise
        forms = wa_id_forms(digits)
        number = PhoneNumber(e164="+" + digits, wa_id=forms[0], other_wa_ids=forms[1:])
    contact = await book.find_by_phone(tenant.tenant_id, number)
    if contact is None:
        raise ContactNotFound("contact not found")
    return contact_out(contact)


@router.get("/contacts/{contact_id}", tags=["contacts"], summary="Read a contact", response_model=Contact)
async def get_contact(contact_id: ContactId, tenant: CurrentTenant, book: Book) -> Contact:
    return contact_out(await book.get(tenant.tenant_id, contact_id))


@router.patch(
    "/contacts/{contact_id}",
    tags=["contacts"],
    summary="Update a contact's name and dynamic field values",
    response_model=Contact,
)
async def update_contact(
    contact_id: ContactId, body: ContactUpdate, tenant: CurrentTenant, book: Book, cause: RequestCause
) -> Contact:
    updates = {k: getattr(body, k) for k in body.model_fields_set}
    outcome = await book.edit(tenant.tenant_id, contact_id, updates, cause)
    return contact_out(outcome.contact)


@router.delete(
    "/contacts/{contact_id}",
    tags=["contacts"],
    summary="Delete a contact: it is kept, blacklisted (never messaged again) and hidden from the normal listing",
    response_model=Contact,
)
async def delete_contact(
    contact_id: ContactId,
    tenant: CurrentTenant,
    book: Book,
    cause: RequestCause,
    actor: Annotated[
        str, Header(alias="X-Actor", max_length=200, description="who deletes (an agent id); recorded as deleted_by")
    ] = "api",
) -> Contact:
    outcome = await book.change(tenant.tenant_id, contact_id, domain.blacklist(actor, book.now()), cause)
    return contact_out(outcome.contact)


@router.post(
    "/contacts/{contact_id}/restore",
    tags=["contacts"],
    summary="Restore a deleted contact (lifts the blacklist)",
    response_model=Contact,
)
async def restore_contact(contact_id: ContactId, tenant: CurrentTenant, book: Book, cause: RequestCause) -> Contact:
    outcome = await book.change(tenant.tenant_id, contact_id, domain.restore, cause, restoring=True)
    return contact_out(outcome.contact)


@router.post(
    "/contacts/{contact_id}/tags",
    tags=["tags"],
    summary="Add tags to a contact (normalised; adding a tag it has changes nothing)",
    response_model=Contact,
)
async def add_tags(
    contact_id: ContactId, body: TagsIn, tenant: CurrentTenant, book: Book, cause: RequestCause
) -> Contact:
    outcome = await book.change(tenant.tenant_id, contact_id, domain.add_tags(body.tags), cause)
    return contact_out(outcome.contact)


@router.delete(
    "/contacts/{contact_id}/tags/{tag}",
    tags=["tags"],
    summary="Remove a tag from a contact (removing a tag it lacks changes nothing)",
    response_model=Contact,
)
async def remove_tag(
    contact_id: ContactId,
    tag: Annotated[str, Path(max_length=100, json_schema_extra=TAG_SCHEMA, examples=["vip"])],
    tenant: CurrentTenant,
    book: Book,
    cause: RequestCause,
) -> Contact:
    outcome = await book.change(tenant.tenant_id, contact_id, domain.remove_tag(tag), cause)
    return contact_out(outcome.contact)


@router.get(
    "/contacts/{contact_id}/lists",
    tags=["lists"],
    summary="The lists a contact belongs to",
    response_model=ContactLists,
)
async def contact_lists(contact_id: ContactId, tenant: CurrentTenant, book: Book) -> ContactLists:
    contact = await book.get(tenant.tenant_id, contact_id)
    return ContactLists(items=list(contact.lists))


@router.get(
    "/tags",
    tags=["tags"],
    summary="The tenant's tag catalogue with the number of contacts per tag",
    response_model=TagCatalogue,
)
async def tag_catalogue(tenant: CurrentTenant, book: Book) -> TagCatalogue:
    counts = await book.tag_counts(tenant.tenant_id)
    return TagCatalogue(items=[TagCount(tag=t, contacts=n) for t, n in counts.items()])


# --- dynamic fields ------------------------------------------------------------------------------------------


def _definition_out(d: FieldDefinition) -> FieldDefinitionOut:
    return FieldDefinitionOut(key=d.key, label=d.label, type=d.type, options=list(d.options), retired=d.retired)


@router.get(
    "/fields",
    tags=["fields"],
    summary="The tenant's dynamic field definitions (retired ones too)",
    response_model=FieldDefinitions,
)
async def list_fields(tenant: CurrentTenant, book: Book) -> FieldDefinitions:
    return FieldDefinitions(items=[_definition_out(d) for d in await book.definitions(tenant.tenant_id)])


@router.post(
    "/fields",
    tags=["fields"],
    summary="Define a field (or re-activate a retired one of the same type; its values come back)",
    response_model=FieldDefinitionOut,
    status_code=201,
    responses={
        200: {
            "description": "The field existed with this type; label updated, re-activated",
            "model": FieldDefinitionOut,
        },
        409: {
            "description": "The key exists with another type or options",
            "content": {"application/json": {"example": error_body("field_conflict", "field 'age' exists as number")}},
        },
    },
)
async def define_field(
    body: FieldDefinitionIn, tenant: CurrentTenant, book: Book, response: Response
) -> FieldDefinitionOut:
    definition, created = await book.define_field(
        tenant.tenant_id, FieldDefinition(body.key, body.label, body.type, tuple(body.options))
    )
    if not created:
        response.status_code = 200
    return _definition_out(definition)


@router.delete(
    "/fields/{key}",
    tags=["fields"],
    summary="Retire a field: stored values are kept, new values are refused",
    response_model=FieldDefinitionOut,
)
async def retire_field(
    key: Annotated[str, Path(max_length=40, pattern=domain.FIELD_KEY.pattern, examples=["city"])],
    tenant: CurrentTenant,
    book: Book,
) -> FieldDefinitionOut:
    return _definition_out(await book.retire_field(tenant.tenant_id, key))
