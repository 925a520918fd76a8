"""Conversation's REST routes under /v1: the agent's chat screen (chats, messages, read state, notes, sending)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from waflow_common.events.envelope import Clock
from waflow_common.events.outbound import OutgoingMessage, TemplateMessage, TextMessage
from waflow_common.http import ERROR_RESPONSES, error_body, tenant_dependency
from waflow_common.outbox import OutboxRelay
from waflow_common.tenants import Tenant, TenantRegistry

from waflow_conversation import domain
from waflow_conversation.handlers import WindowSweeper
from waflow_conversation.repository import ChatFilter, ChatNotFound, ChatRepository, MessageNotFound, new_request_id
from waflow_conversation.repository_messages import MessageRepository
from waflow_conversation.repository_notes import NoteRepository
from waflow_conversation.schemas import ChatOut, ChatPage, MarkedAllRead, NewChat, ReadBy
from waflow_conversation.schemas_messages import (
    SEND_EXAMPLES,
    MessageOut,
    NoteOut,
    SendAcceptedOut,
    SendMessage,
    SendText,
    TimelinePage,
)


@dataclass(frozen=True)
class ConversationContext:
    registry: TenantRegistry
    chats: ChatRepository
    messages: MessageRepository
    notes: NoteRepository
    relay: OutboxRelay
    sweeper: WindowSweeper
    clock: Clock


def _context(request: Request) -> ConversationContext:
    ctx: ConversationContext = request.app.state.conversation
    return ctx


def _registry(request: Request) -> TenantRegistry:
    return _context(request).registry


CurrentTenant = Annotated[Tenant, Depends(tenant_dependency(_registry))]
Context = Annotated[ConversationContext, Depends(_context)]
ChatId = Annotated[str, Path(max_length=100, description="a chat id of this tenant", examples=["ch_5f1c0e6e0d7a4c2b"])]
MessageId = Annotated[str, Path(max_length=100, examples=["msg_0e1d2c3b4a5f60718293a4b5"])]
NoteId = Annotated[str, Path(max_length=100, examples=["note_7d3c0a9e2b4f4e61a8c5"])]
Cursor = Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page")]
Limit = Annotated[int, Query(ge=1, le=200)]

# Each domain refusal leaves with one status and its code (the body is the shared error body).
STATUS_BY_CODE = {
    domain.WindowClosed.code: 409,
    domain.ContactBlacklisted.code: 409,
    domain.IdempotencyKeyReused.code: 409,
    domain.InvalidPhoneNumber.code: 422,
    domain.InvalidCursor.code: 422,
    domain.InvalidQuery.code: 422,
}


def _example(code: str, message: str) -> dict[str, Any]:
    return {"content": {"application/json": {"example": error_body(code, message)}}}


def install_domain_errors(app: FastAPI) -> None:
    @app.exception_handler(domain.ConversationError)
    async def on_refusal(_: Request, exc: domain.ConversationError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=STATUS_BY_CODE.get(exc.code, 400))

    @app.exception_handler(ChatNotFound)
    async def on_missing_chat(_: Request, exc: ChatNotFound) -> JSONResponse:
        return JSONResponse(error_body("not_found", "chat not found"), status_code=404)

    @app.exception_handler(MessageNotFound)
    async def on_missing_message(_: Request, exc: MessageNotFound) -> JSONResponse:
        return JSONResponse(error_body("not_found", "message not found"), status_code=404)


router = APIRouter(prefix="/v1", responses={401: ERROR_RESPONSES[401]})


# --- chats ---------------------------------------------------------------------------------------------------------


@router.get(
    "/chats",
    summary="List chats, most recent activity first",
    tags=["chats"],
    response_model=ChatPage,
    responses={422: ERROR_RESPONSES[422]},
)
async def list_chats(
    tenant: CurrentTenant,
    ctx: Context,
    unread: Annotated[bool, Query(description="only chats with unread messages")] = False,
    tag: Annotated[str | None, Query(max_length=200, description="the contact has this tag")] = None,
    list_id: Annotated[str | None, Query(max_length=200, description="the contact is on this list")] = None,
    search: Annotated[str | None, Query(min_length=1, max_length=100, description="part of name or phone")] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> ChatPage:
    page = await ctx.chats.page(
        tenant.tenant_id, ChatFilter(unread=unread, tag=tag, list_id=list_id, search=search), cursor, limit
    )
    now = ctx.clock()
    return ChatPage(items=[ChatOut.from_doc(d, now) for d in page.items], next_cursor=page.next_cursor)


@router.post(
    "/chats",
    summary="Open a chat with a phone number (returns the existing one if there is one)",
    tags=["chats"],
    status_code=201,
    response_model=ChatOut,
    responses={
        200: {"description": "the chat already existed", "model": ChatOut},
        201: {"description": "a new chat; chat.opened is announced so contacts creates the contact"},
        404: _example("not_found", "phone_number_id is not one of this tenant's numbers"),
        409: _example("blacklisted", "this contact is blacklisted and is never messaged"),
        422: _example("invalid_phone", "give the number in international form, e.g. +15551234567"),
    },
)
async def open_chat(tenant: CurrentTenant, ctx: Context, body: NewChat, response: Response) -> ChatOut:
    phone = domain.normalise_phone(body.phone)
    numbers = tenant.phone_number_ids
    phone_number_id = body.phone_number_id or numbers[0]
    if phone_number_id not in numbers:
        raise ChatNotFound(phone_number_id)
    customer = await ctx.chats.customer_for_phone(tenant.tenant_id, phone)  # any form of a known number
    contact = await ctx.chats.contact(tenant.tenant_id, customer)
    if contact is not None and contact["view"].get("blacklisted"):
        raise domain.ContactBlacklisted("this contact is blacklisted (deleted) and is never messaged")
    chat, created = await ctx.chats.open_by_phone(tenant.tenant_id, phone_number_id, customer, phone, body.opened_by)
    if not created:
        response.status_code = 200
    return ChatOut.from_doc(chat, ctx.clock())


@router.post(
    "/chats/mark-all-read",
    summary="Mark every chat of the tenant read",
    tags=["read state"],
    response_model=MarkedAllRead,
)
async def mark_all_read(
    tenant: CurrentTenant, ctx: Context, body: Annotated[ReadBy | None, Body()] = None
) -> MarkedAllRead:
    by = body.by if body else "api"
    marked = 0
    for chat_id in await ctx.chats.unread_chat_ids(tenant.tenant_id):
        await ctx.chats.mark_read(tenant.tenant_id, chat_id, by)
        marked += 1
    return MarkedAllRead(chats_marked_read=marked)


@router.get(
    "/chats/{chat_id}",
    summary="One chat",
    tags=["chats"],
    response_model=ChatOut,
    responses={404: ERROR_RESPONSES[404]},
)
async def get_chat(tenant: CurrentTenant, ctx: Context, chat_id: ChatId) -> ChatOut:
    return ChatOut.from_doc(await ctx.chats.get(tenant.tenant_id, chat_id), ctx.clock())


@router.post(
    "/chats/{chat_id}/read",
    summary="Mark a chat read (announces chat.read; outbound sends the read receipt)",
    tags=["read state"],
    response_model=ChatOut,
    responses={404: ERROR_RESPONSES[404]},
)
async def mark_read(
    tenant: CurrentTenant, ctx: Context, chat_id: ChatId, body: Annotated[ReadBy | None, Body()] = None
) -> ChatOut:
    chat = await ctx.chats.mark_read(tenant.tenant_id, chat_id, body.by if body else "api")
    return ChatOut.from_doc(chat, ctx.clock())


# --- messages --------------------------------------------------------------------------------------------------


@router.get(
    "/chats/{chat_id}/messages",
    summary="The chat's timeline: messages and notes, newest first",
    tags=["messages"],
    response_model=TimelinePage,
    responses={404: ERROR_RESPONSES[404], 422: ERROR_RESPONSES[422]},
)
async def timeline(
    tenant: CurrentTenant, ctx: Context, chat_id: ChatId, cursor: Cursor = None, limit: Limit = 50
) -> TimelinePage:
    await ctx.chats.get(tenant.tenant_id, chat_id)
    page = await ctx.messages.timeline(tenant.tenant_id, chat_id, cursor, limit)
    items = [MessageOut.from_doc(d) if d["kind"] == "message" else NoteOut.from_doc(d) for d in page.items]
    return TimelinePage(items=items, next_cursor=page.next_cursor)


@router.get(
    "/chats/{chat_id}/messages/{message_id}",
    summary="One message",
    tags=["messages"],
    response_model=MessageOut,
    responses={404: ERROR_RESPONSES[404]},
)
async def get_message(tenant: CurrentTenant, ctx: Context, chat_id: ChatId, message_id: MessageId) -> MessageOut:
    return MessageOut.from_doc(await ctx.messages.get(tenant.tenant_id, chat_id, message_id))


@router.post(
    "/chats/{chat_id}/messages",
    summary="Send a free-form text or a template",
    description=(
        "Refuses at once what is certain to fail: free-form text outside the 24-hour window (`window_closed`) and "
        "a blacklisted contact (`blacklisted`). Otherwise stores the message as pending, publishes send.requested "
        "and answers 202; outbound's results and Meta's statuses then move it. A retried POST with the same "
        "`Idempotency-Key` returns the first answer and sends nothing more."
    ),
    tags=["messages"],
    status_code=202,
    response_model=SendAcceptedOut,
    responses={
        404: ERROR_RESPONSES[404],
        409: {
            "description": "refused",
            "content": {
                "application/json": {
                    "examples": {
                        "window_closed": {
                            "value": error_body("window_closed", "the 24-hour window is closed: send a template")
                        },
                        "blacklisted": {"value": error_body("blacklisted", "this contact is blacklisted")},
                        "idempotency_key_reused": {
                            "value": error_body(
                                "idempotency_key_reused",
                                "this Idempotency-Key was already used for a different message",
                            )
                        },
                    }
                }
            },
        },
        422: ERROR_RESPONSES[422],
    },
)
async def send_message(
    request: Request,
    tenant: CurrentTenant,
    ctx: Context,
    chat_id: ChatId,
    body: Annotated[SendMessage, Body(openapi_examples=SEND_EXAMPLES)],
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=200, description="a retried POST with the same key is a no-op")
    ] = None,
) -> SendAcceptedOut:
    tenant_id = tenant.tenant_id
    chat = await ctx.chats.get(tenant_id, chat_id)
    message: OutgoingMessage
    if isinstance(body, SendText):
        message = TextMessage(body=body.body, preview_url=body.preview_url)
    else:
        message = TemplateMessage(name=body.name, language=body.language, parameters=body.parameters)
    request_id = domain.request_id_for(tenant_id, chat_id, idempotency_key) if idempotency_key else new_request_id()
    existing = await ctx.messages.find_request(tenant_id, request_id)
    reply_to = await ctx.messages.resolve_reply(tenant_id, chat_id, body.reply_to) if body.reply_to else None
    if existing is not None:
        if not ctx.messages.same_request(existing, message, reply_to):
            raise domain.IdempotencyKeyReused("this Idempotency-Key was already used for a different message")
        stored = existing
    else:
        contact = chat.get("contact") or await _contact_view(
            ctx, tenant_id, await ctx.chats.customer_of(tenant_id, chat["wa_id"], chat.get("user_id"))
        )
        if contact and contact.get("blacklisted"):
            raise domain.ContactBlacklisted("this contact is blacklisted (deleted) and is never messaged")
        if isinstance(message, TextMessage) and not domain.window_open(chat.get("window_expires_at"), ctx.clock()):
            raise domain.WindowClosed("the 24-hour window is closed: only an approved template can be sent")
        stored = await ctx.messages.store_send(
            chat,
            request_id=request_id,
            message=message,
            reply_to_wamid=reply_to,
            requested_by=body.requested_by,
            correlation_id=getattr(request.state, "correlation_id", None),
        )
    view = await ctx.messages.get(tenant_id, chat_id, stored["message_id"])
    return SendAcceptedOut(request_id=request_id, message=MessageOut.from_doc(view))


async def _contact_view(ctx: ConversationContext, tenant_id: str, customer: str) -> dict[str, Any] | None:
    contact = await ctx.chats.contact(tenant_id, customer)
    return contact["view"] if contact else None


@router.delete(
    "/chats/{chat_id}/messages/{message_id}",
    summary="Delete a message for me (hide it from this tenant's timeline; the customer's copy stays)",
    tags=["messages"],
    status_code=204,
    response_class=Response,
    responses={404: ERROR_RESPONSES[404]},
)
async def hide_message(tenant: CurrentTenant, ctx: Context, chat_id: ChatId, message_id: MessageId) -> Response:
    await ctx.messages.hide(tenant.tenant_id, chat_id, message_id)
    return Response(status_code=204)


@router.post(
    "/chats/{chat_id}/messages/{message_id}/unread",
    summary="Mark one message unread (the chat stays unread until read again)",
    tags=["read state"],
    response_model=ChatOut,
    responses={404: ERROR_RESPONSES[404]},
)
async def mark_message_unread(
    tenant: CurrentTenant,
    ctx: Context,
    chat_id: ChatId,
    message_id: MessageId,
    body: Annotated[ReadBy | None, Body()] = None,
) -> ChatOut:
    await ctx.chats.get(tenant.tenant_id, chat_id)
    await ctx.messages.mark_unread(tenant.tenant_id, chat_id, message_id)
    chat = await ctx.chats.mark_unread(tenant.tenant_id, chat_id, message_id, body.by if body else "api")
    return ChatOut.from_doc(chat, ctx.clock())
