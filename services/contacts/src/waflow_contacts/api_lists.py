"""The static lists routes: lists of a tenant's contacts, their members, and each contact's lists."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from waflow_common.http import error_body

from waflow_contacts.api import (
    RESPONSES,
    Book,
    ContactId,
    CurrentTenant,
    ListId,
    ListsOf,
    RequestCause,
    contact_page,
)
from waflow_contacts.errors import ContactNotFound
from waflow_contacts.lists import ContactList
from waflow_contacts.schemas import (
    BulkResult,
    Contact,
    ContactPage,
    ListIn,
    ListOut,
    Lists,
    MembersIn,
    contact_out,
)
from waflow_contacts.search import ContactQuery

lists_router = APIRouter(prefix="/v1", responses=RESPONSES)


# --- lists ---------------------------------------------------------------------------------------------------

LIST_NAME_TAKEN: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "Another list has this name",
        "content": {"application/json": {"example": error_body("list_name_taken", "a list named 'VIP' exists")}},
    }
}


def _list_out(view: ContactList) -> ListOut:
    return ListOut(list_id=view.list_id, name=view.name, members=view.members, created_at=view.created_at)


@lists_router.get(
    "/lists", tags=["lists"], summary="The tenant's static lists with member counts", response_model=Lists
)
async def all_lists(tenant: CurrentTenant, lists: ListsOf) -> Lists:
    return Lists(items=[_list_out(v) for v in await lists.all(tenant.tenant_id)])


@lists_router.post(
    "/lists",
    tags=["lists"],
    summary="Create a static list",
    response_model=ListOut,
    status_code=201,
    responses=LIST_NAME_TAKEN,
)
async def create_list(body: ListIn, tenant: CurrentTenant, lists: ListsOf) -> ListOut:
    return _list_out(await lists.create(tenant.tenant_id, body.name))


@lists_router.get("/lists/{list_id}", tags=["lists"], summary="Read a list", response_model=ListOut)
async def get_list(list_id: ListId, tenant: CurrentTenant, lists: ListsOf) -> ListOut:
    return _list_out(await lists.get(tenant.tenant_id, list_id))


@lists_router.patch(
    "/lists/{list_id}", tags=["lists"], summary="Rename a list", response_model=ListOut, responses=LIST_NAME_TAKEN
)
async def rename_list(
    list_id: ListId, body: ListIn, tenant: CurrentTenant, lists: ListsOf, cause: RequestCause
) -> ListOut:
    return _list_out(await lists.rename(tenant.tenant_id, list_id, body.name, cause))


@lists_router.delete(
    "/lists/{list_id}",
    tags=["lists"],
    summary="Delete a list (its members leave it; the contacts stay)",
    status_code=204,
    response_class=Response,
)
async def delete_list(list_id: ListId, tenant: CurrentTenant, lists: ListsOf, cause: RequestCause) -> Response:
    await lists.delete(tenant.tenant_id, list_id, cause)
    return Response(status_code=204)


@lists_router.get(
    "/lists/{list_id}/members",
    tags=["lists"],
    summary="A list's members (same order, cursor and `deleted` filter as the contact listing)",
    response_model=ContactPage,
)
async def list_members(
    list_id: ListId,
    tenant: CurrentTenant,
    book: Book,
    lists: ListsOf,
    deleted: Annotated[bool, Query(description="true: only deleted (blacklisted) members")] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    await lists.get(tenant.tenant_id, list_id)
    query = ContactQuery(list_id=list_id, deleted=deleted)
    return contact_page(*await book.search(tenant.tenant_id, query, limit=limit, cursor=cursor))


@lists_router.put(
    "/lists/{list_id}/members/{contact_id}",
    tags=["lists"],
    summary="Add one contact to a list (idempotent)",
    response_model=Contact,
)
async def add_member(
    list_id: ListId, contact_id: ContactId, tenant: CurrentTenant, book: Book, lists: ListsOf, cause: RequestCause
) -> Contact:
    outcome = await lists.set_membership(tenant.tenant_id, list_id, [contact_id], member=True, cause=cause)
    if outcome.not_found:
        raise ContactNotFound("contact not found")
    return contact_out(await book.get(tenant.tenant_id, contact_id))


@lists_router.delete(
    "/lists/{list_id}/members/{contact_id}",
    tags=["lists"],
    summary="Remove one contact from a list (idempotent)",
    response_model=Contact,
)
async def remove_member(
    list_id: ListId, contact_id: ContactId, tenant: CurrentTenant, book: Book, lists: ListsOf, cause: RequestCause
) -> Contact:
    outcome = await lists.set_membership(tenant.tenant_id, list_id, [contact_id], member=False, cause=cause)
    if outcome.not_found:
        raise ContactNotFound("contact not found")
    return contact_out(await book.get(tenant.tenant_id, contact_id))


@lists_router.post(
    "/lists/{list_id}/members",
    tags=["lists"],
    summary="Add up to 1,000 contacts to a list at once",
    response_model=BulkResult,
)
async def add_members(
    list_id: ListId, body: MembersIn, tenant: CurrentTenant, lists: ListsOf, cause: RequestCause
) -> BulkResult:
    outcome = await lists.set_membership(tenant.tenant_id, list_id, body.contact_ids, member=True, cause=cause)
    return BulkResult(changed=outcome.changed, unchanged=outcome.unchanged, not_found=outcome.not_found)


@lists_router.post(
    "/lists/{list_id}/members/remove",
    tags=["lists"],
    summary="Remove up to 1,000 contacts from a list at once",
    response_model=BulkResult,
)
async def remove_members(
    list_id: ListId, body: MembersIn, tenant: CurrentTenant, lists: ListsOf, cause: RequestCause
) -> BulkResult:
    outcome = await lists.set_membership(tenant.tenant_id, list_id, body.contact_ids, member=False, cause=cause)
    return BulkResult(changed=outcome.changed, unchanged=outcome.unchanged, not_found=outcome.not_found)
