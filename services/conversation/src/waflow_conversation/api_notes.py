"""The notes routes: append-only notes on a chat (added, listed, read; never changed or deleted)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import JSONResponse
from waflow_common.http import ERROR_RESPONSES, error_body

from waflow_conversation import domain
from waflow_conversation.api import ChatId, Context, CurrentTenant, Cursor, Limit, NoteId
from waflow_conversation.repository import MessageNotFound
from waflow_conversation.schemas import Instant
from waflow_conversation.schemas_messages import (
    NewNote,
    NoteOut,
    NotePage,
)

notes_router = APIRouter(prefix="/v1", responses={401: ERROR_RESPONSES[401]})


# --- notes ------------------------------------------------------------------------------------------------------


@notes_router.post(
    "/chats/{chat_id}/notes",
    summary="Add a note to a chat (notes are append-only)",
    tags=["notes"],
    status_code=201,
    response_model=NoteOut,
    responses={404: ERROR_RESPONSES[404], 422: ERROR_RESPONSES[422]},
)
async def add_note(request: Request, tenant: CurrentTenant, ctx: Context, chat_id: ChatId, body: NewNote) -> NoteOut:
    chat = await ctx.chats.get(tenant.tenant_id, chat_id)
    note_id = "note_" + uuid.uuid4().hex[:20]
    doc = await ctx.notes.add(chat, note_id, body.author, body.text, getattr(request.state, "correlation_id", None))
    return NoteOut.from_doc(doc)


@notes_router.get(
    "/chats/{chat_id}/notes",
    summary="List a chat's notes, newest first, filtered by text, author and time",
    tags=["notes"],
    response_model=NotePage,
    responses={404: ERROR_RESPONSES[404], 422: ERROR_RESPONSES[422]},
)
async def list_notes(
    tenant: CurrentTenant,
    ctx: Context,
    chat_id: ChatId,
    text: Annotated[str | None, Query(min_length=1, max_length=200, description="contains, any case")] = None,
    author: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    since: Annotated[Instant | None, Query(description="at or after (RFC 3339, with an offset)")] = None,
    until: Annotated[Instant | None, Query(description="before (RFC 3339, with an offset)")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> NotePage:
    for bound in (since, until):
        if bound is not None and bound.tzinfo is None:
            raise domain.InvalidQuery("since/until need a UTC offset, e.g. 2026-01-01T10:00:00Z")
    await ctx.chats.get(tenant.tenant_id, chat_id)
    page = await ctx.notes.page(
        tenant.tenant_id, chat_id, text=text, author=author, since=since, until=until, cursor=cursor, limit=limit
    )
    return NotePage(items=[NoteOut.from_doc(d) for d in page.items], next_cursor=page.next_cursor)


@notes_router.get(
    "/chats/{chat_id}/notes/{note_id}",
    summary="One note",
    description="Notes are append-only: PUT, PATCH and DELETE on a note answer 405 `notes_append_only`.",
    tags=["notes"],
    response_model=NoteOut,
    responses={404: ERROR_RESPONSES[404]},
)
async def get_note(tenant: CurrentTenant, ctx: Context, chat_id: ChatId, note_id: NoteId) -> NoteOut:
    doc = await ctx.notes.get(tenant.tenant_id, chat_id, note_id)
    if doc is None:
        raise MessageNotFound(note_id)
    return NoteOut.from_doc(doc)


APPEND_ONLY: dict[int | str, dict[str, Any]] = {
    405: {
        "description": "notes can never be edited or deleted",
        "content": {
            "application/json": {
                "example": error_body("notes_append_only", "notes are append-only: they can never be edited or deleted")
            }
        },
    }
}


async def refuse_note_change(tenant: CurrentTenant, chat_id: ChatId, note_id: NoteId) -> JSONResponse:
    return JSONResponse(
        error_body("notes_append_only", "notes are append-only: they can never be edited or deleted"),
        status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
        headers={"Allow": "GET"},
    )


# Served but left out of the document: these methods are not allowed on a note, so `Allow` (and the document)
# list GET only; the routes are there to say why.
for _method in ("PUT", "PATCH", "DELETE"):
    notes_router.add_api_route(
        "/chats/{chat_id}/notes/{note_id}",
        refuse_note_change,
        methods=[_method],
        operation_id=f"refuse_note_{_method.lower()}",
        summary=f"{_method} on a note is refused (notes are append-only)",
        tags=["notes"],
        status_code=405,
        response_class=JSONResponse,
        responses=APPEND_ONLY,
        include_in_schema=False,
    )
