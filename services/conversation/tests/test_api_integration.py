"""The chat screen's API: list and filters, new chats, read state, delete for me, notes, windows, tenancy."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from waflow_common import topics
from waflow_common.mongo import make_mongo_client, service_database
from waflow_conversation.main import DATABASE
from waflow_conversation.repository import ChatFilter, ChatRepository, Collections
from waflow_testing.fixtures import TopicReader

from .conftest import Stack, eventually, new_wa_id

pytestmark = pytest.mark.integration


async def _chat_with(stack: Stack, wa_id: str, *bodies: str) -> dict[str, Any]:
    base = stack.clock.now
    await stack.publish(*(stack.text(wa_id, b, at=base + timedelta(seconds=i)) for i, b in enumerate(bodies)))
    return await eventually(lambda: _unread(stack, wa_id, len(bodies)))


async def _timeline_with(stack: Stack, chat_id: str, messages: int) -> list[dict[str, Any]] | None:
    items = await stack.timeline(chat_id)
    return items if sum(i["kind"] == "message" for i in items) >= messages else None


async def _unread(stack: Stack, wa_id: str, count: int) -> dict[str, Any] | None:
    chat = await stack.chat_for(wa_id)
    return chat if chat["unread_count"] == count else None


async def test_chat_list_shows_contact_master_data_and_filters(stack: Stack) -> None:
    vip, other = new_wa_id(), new_wa_id()
    await _chat_with(stack, vip, "hi")
    await _chat_with(stack, other, "hello")
    await stack.publish(
        stack.contact(vip, name="Giulia Rossi", tags=["vip"], lists=[("l_news", "Newsletter")]),
        stack.contact(vip, name="stale name", version=1),  # an older snapshot arriving late changes nothing
    )
    chat = await eventually(lambda: _named(stack, vip, "Giulia Rossi"))
    assert chat["contact"]["tags"] == ["vip"]
    assert chat["contact"]["lists"] == [{"list_id": "l_news", "name": "Newsletter"}]
    assert chat["contact"]["fields"] == {"city": "Milan"}

    by_tag = (await stack.get("/v1/chats", tag="vip")).json()["items"]
    assert vip in [c["wa_id"] for c in by_tag]
    assert other not in [c["wa_id"] for c in by_tag]
    by_list = (await stack.get("/v1/chats", list_id="l_news", search="giulia")).json()["items"]
    assert [c["wa_id"] for c in by_list] == [vip]
    by_phone = (await stack.get("/v1/chats", search=other[-6:])).json()["items"]
    assert [c["wa_id"] for c in by_phone] == [other]


async def _named(stack: Stack, wa_id: str, name: str) -> dict[str, Any] | None:
    chat = await stack.chat_for(wa_id)
    return chat if chat["display_name"] == name else None


async def test_chat_list_is_most_recent_first_with_cursor_pages(stack: Stack) -> None:
    wa_ids = [new_wa_id() for _ in range(5)]
    for i, wa_id in enumerate(wa_ids):
        stack.clock.advance(timedelta(seconds=1))
        await _chat_with(stack, wa_id, f"m{i}")
    seen: list[str] = []
    cursor: str | None = None
    while len(seen) < 5:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await stack.get("/v1/chats", **params)).json()
        seen += [c["wa_id"] for c in page["items"]]
        cursor = page["next_cursor"]
        assert cursor is not None
    assert seen[:5] == list(reversed(wa_ids))
    bad = await stack.get("/v1/chats", cursor="not-a-cursor")
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "invalid_cursor"


async def test_read_state_counts_and_events(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _chat_with(stack, wa_id, "one", "two")
    chat_id = chat["chat_id"]
    newest = (await stack.timeline(chat_id))[0]
    async with TopicReader(stack.settings, topics.CONVERSATION) as conversation:
        r = await stack.post(f"/v1/chats/{chat_id}/read", {"by": "agent:giulia"})
        assert r.status_code == 200, r.text
        assert r.json()["unread_count"] == 0
        read = await conversation.read(1)
        r = await stack.post(f"/v1/chats/{chat_id}/messages/{newest['message_id']}/unread")
        assert r.json()["unread_count"] == 1
        unread = await conversation.read(1)
    assert read[0]["event_type"] == "chat.read"
    assert read[0]["payload"]["last_inbound_wamid"] == newest["wamid"]
    assert read[0]["payload"]["read_by"] == "agent:giulia"
    assert unread[0]["event_type"] == "chat.unread"
    assert unread[0]["payload"]["unread_count"] == 1
    assert (await stack.timeline(chat_id))[0]["unread"] is True
    assert chat_id in [c["chat_id"] for c in (await stack.get("/v1/chats", unread="true")).json()["items"]]

    # A customer message counted while the agent reads: never lost, never counted twice.
    more = stack.text(wa_id, "three", at=stack.clock.now + timedelta(seconds=10))
    await asyncio.gather(stack.publish(more, more), stack.post(f"/v1/chats/{chat_id}/read"))
    await eventually(lambda: stack.preview_is(wa_id, "three"))
    chat = await stack.chat_for(wa_id)
    assert chat["unread_count"] in (0, 1)
    r = await stack.post("/v1/chats/mark-all-read")
    assert r.status_code == 200
    assert (await stack.chat_for(wa_id))["unread_count"] == 0
    assert (await stack.post("/v1/chats/mark-all-read")).json() == {"chats_marked_read": 0}
    assert (await stack.timeline(chat_id))[1]["unread"] is False


async def test_delete_for_me_hides_one_message_idempotently(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _chat_with(stack, wa_id, "keep", "hide me")
    # Both messages may not have come in one batch: wait until the timeline has both.
    items = await eventually(lambda: _timeline_with(stack, chat["chat_id"], 2))
    hidden = next(i for i in items if i["content"]["body"] == "hide me")
    path = f"/v1/chats/{chat['chat_id']}/messages/{hidden['message_id']}"
    assert (await stack.http.delete(path, headers=stack.a.auth)).status_code == 204
    assert (await stack.http.delete(path, headers=stack.a.auth)).status_code == 204
    assert [i["content"]["body"] for i in await stack.timeline(chat["chat_id"])] == ["keep"]
    assert (await stack.get(path)).status_code == 404


async def test_delete_for_me_also_leaves_the_chat_list(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _chat_with(stack, wa_id, "keep", "hide me")
    chat_id = chat["chat_id"]
    items = await eventually(lambda: _timeline_with(stack, chat_id, 2))
    by_body = {i["content"]["body"]: i["message_id"] for i in items}
    assert (
        await stack.post(f"/v1/chats/{chat_id}/notes", {"author": "agent:giulia", "text": "a note"})
    ).status_code == 201
    assert chat["last_message"]["preview"] == "hide me"

    path = f"/v1/chats/{chat_id}/messages/"
    assert (await stack.http.delete(path + by_body["hide me"], headers=stack.a.auth)).status_code == 204
    last = (await stack.chat_for(wa_id))["last_message"]
    # The newest message still shown (a note is not a message), with its own time.
    assert (last["preview"], last["message_id"]) == ("keep", by_body["keep"])
    assert last["at"] == (await stack.timeline(chat_id))[1]["at"]

    assert (await stack.http.delete(path + by_body["keep"], headers=stack.a.auth)).status_code == 204
    assert (await stack.chat_for(wa_id))["last_message"] is None
    # A message arriving late, older than the hidden ones, is the last message now.
    await stack.publish(stack.text(wa_id, "late", at=stack.clock.now - timedelta(minutes=1)))
    assert await eventually(lambda: stack.preview_is(wa_id, "late"))


async def test_notes_are_append_only_filtered_and_in_the_timeline(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _chat_with(stack, wa_id, "hi")
    notes_path = f"/v1/chats/{chat['chat_id']}/notes"
    async with TopicReader(stack.settings, topics.CONVERSATION) as conversation:
        r = await stack.post(notes_path, {"author": "agent:giulia", "text": "Prefers calls after 6pm"})
        assert r.status_code == 201, r.text
        announced = await conversation.read(1)
    note = r.json()
    assert announced[0]["event_type"] == "note.added"
    assert announced[0]["payload"]["note_id"] == note["note_id"]
    stack.clock.advance(timedelta(minutes=1))
    await stack.post(notes_path, {"author": "agent:marco", "text": "Called, no answer"})

    assert [n["text"] for n in (await stack.get(notes_path, author="agent:marco")).json()["items"]] == [
        "Called, no answer"
    ]
    assert [n["author"] for n in (await stack.get(notes_path, text="6PM")).json()["items"]] == ["agent:giulia"]
    since = (stack.clock.now - timedelta(seconds=30)).isoformat()
    assert len((await stack.get(notes_path, since=since)).json()["items"]) == 1
    assert (await stack.get(notes_path, since="2026-01-01T00:00:00")).status_code == 422

    item = f"{notes_path}/{note['note_id']}"
    for method in ("PUT", "PATCH", "DELETE"):
        r = await stack.http.request(method, item, json={"text": "edited"}, headers=stack.a.auth)
        assert r.status_code == 405
        assert r.json()["error"]["code"] == "notes_append_only"
    assert (await stack.get(item)).json()["text"] == "Prefers calls after 6pm"
    kinds = [i["kind"] for i in await stack.timeline(chat["chat_id"])]
    assert kinds.count("note") == 2
    assert kinds.count("message") == 1
    assert (await stack.post(notes_path, {"author": "", "text": "x"})).status_code == 422


async def test_new_chat_by_phone(stack: Stack) -> None:
    wa_id = "3461" + str(uuid.uuid4().int)[:7]  # a valid Spanish mobile: typed numbers must be valid
    async with TopicReader(stack.settings, topics.CONVERSATION) as conversation:
        r = await stack.post("/v1/chats", {"phone": f"+{wa_id[:4]} {wa_id[4:]}", "opened_by": "agent:giulia"})
        announced = await conversation.read(1)
    assert r.status_code == 201, r.text
    chat = r.json()
    assert (chat["wa_id"], chat["window"]["open"], chat["unread_count"]) == (wa_id, False, 0)
    assert announced[0]["event_type"] == "chat.opened"
    assert announced[0]["payload"]["phone_e164"] == "+" + wa_id
    again = await stack.post("/v1/chats", {"phone": "+" + wa_id})
    assert again.status_code == 200
    assert again.json()["chat_id"] == chat["chat_id"]
    for bad in ("12345", "+12ab45678", "+0123456789"):
        r = await stack.post("/v1/chats", {"phone": bad})
        assert r.status_code == 422, bad
        assert r.json()["error"]["code"] == "invalid_phone"
    r = await stack.post("/v1/chats", {"phone": "+34612345678", "phone_number_id": stack.b.phone_number_id})
    assert r.status_code == 404
    # A customer who then writes lands in the same chat.
    await stack.publish(stack.text(wa_id, "hi, you wrote me?"))
    assert (await eventually(lambda: _unread(stack, wa_id, 1)))["chat_id"] == chat["chat_id"]


async def test_another_tenants_ids_are_not_found(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _chat_with(stack, wa_id, "secret")
    message = (await stack.timeline(chat["chat_id"]))[0]
    chat_path = f"/v1/chats/{chat['chat_id']}"
    message_path = f"{chat_path}/messages/{message['message_id']}"
    b = stack.b
    answers = [
        await stack.get(chat_path, b),
        await stack.get(f"{chat_path}/messages", b),
        await stack.get(message_path, b),
        await stack.get(f"{chat_path}/notes", b),
        await stack.post(f"{chat_path}/read", None, b),
        await stack.post(f"{message_path}/unread", None, b),
        await stack.post(f"{chat_path}/notes", {"author": "x", "text": "y"}, b),
        await stack.post(f"{chat_path}/messages", {"type": "text", "body": "y"}, b),
        await stack.http.delete(message_path, headers=b.auth),
    ]
    assert [r.status_code for r in answers] == [404] * len(answers)
    assert {r.json()["error"]["code"] for r in answers} == {"not_found"}
    assert (await stack.get("/v1/chats/ch_missing")).json() == (await stack.get(chat_path, b)).json()
    assert wa_id not in [c["wa_id"] for c in (await stack.get("/v1/chats", b, limit=200)).json()["items"]]
    assert (await stack.http.get("/v1/chats")).status_code == 401
    assert (await stack.http.get("/v1/chats", headers={"Authorization": "Bearer nope"})).status_code == 401
    # The message itself is intact for its own tenant.
    assert (await stack.get(message_path)).status_code == 200


async def test_bad_input_is_a_clear_422(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _chat_with(stack, wa_id, "hi")
    path = f"/v1/chats/{chat['chat_id']}/messages"
    for body in ({"type": "text"}, {"type": "text", "body": ""}, {"type": "sms", "body": "x"}, {"body": "x"}):
        r = await stack.post(path, body)
        assert r.status_code == 422, body
        assert r.json()["error"]["code"] == "invalid_request"
    assert (await stack.get("/v1/chats", limit=0)).status_code == 422


async def test_window_sweep_announces_closing_then_closed(stack: Stack) -> None:
    wa_id = new_wa_id()
    chat = await _chat_with(stack, wa_id, "hi")
    expires = chat["window"]["expires_at"]
    async with TopicReader(stack.settings, topics.CONVERSATION) as conversation:
        stack.clock.advance(timedelta(hours=23, minutes=1))  # tenant A announces 60 minutes ahead
        await stack.context.sweeper.sweep_once()
        await stack.context.sweeper.sweep_once()  # nothing new the second time
        closing = await conversation.read(1000, timeout=3)
        stack.clock.advance(timedelta(hours=1))
        await stack.context.sweeper.sweep_once()
        closed = await conversation.read(1000, timeout=3)
    mine = [e for e in closing if e["payload"]["chat_id"] == chat["chat_id"]]
    assert [e["event_type"] for e in mine] == ["window.closing"]
    assert mine[0]["payload"]["expires_at"].replace("Z", "+00:00")[:19] == expires[:19]
    mine = [e for e in closed if e["payload"]["chat_id"] == chat["chat_id"]]
    assert [e["event_type"] for e in mine] == ["window.closed"]
    assert (await stack.chat_for(wa_id))["window"]["open"] is False
    # The customer writes again: a new window, announced.
    async with TopicReader(stack.settings, topics.CONVERSATION) as conversation:
        await stack.publish(stack.text(wa_id, "back"))
        reopened = await conversation.read(1)
    assert reopened[0]["event_type"] == "window.opened"
    assert (await stack.chat_for(wa_id))["window"]["open"] is True


async def test_openapi_describes_every_route_with_examples(stack: Stack) -> None:
    spec = (await stack.http.get("/openapi.json")).json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
    schemas = spec["components"]["schemas"]
    for name in ("ChatOut", "MessageOut", "NoteOut", "NewChat", "NewNote", "SendAcceptedOut"):
        assert schemas[name].get("examples"), name
    send = spec["paths"]["/v1/chats/{chat_id}/messages"]["post"]
    assert set(send["requestBody"]["content"]["application/json"]["examples"]) == {"text", "template"}
    assert "window_closed" in send["responses"]["409"]["content"]["application/json"]["examples"]


async def test_a_restarted_service_lists_exactly_what_the_database_holds(stack: Stack) -> None:
    """Every instance lists from the database: a second one, started now, lists exactly what the first does."""
    read, tagged, plain = new_wa_id(), new_wa_id(), new_wa_id()
    read_chat = await _chat_with(stack, read, "one", "two")
    await _chat_with(stack, tagged, "hello")
    await _chat_with(stack, plain, "hi")
    await stack.publish(stack.contact(tagged, name="Anna Bianchi", tags=["vip"]))
    await eventually(lambda: _named(stack, tagged, "Anna Bianchi"))
    assert (await stack.post(f"/v1/chats/{read_chat['chat_id']}/read")).status_code == 200

    tenant_id = stack.a.tenant_id
    ours = {(await stack.chat_for(w))["chat_id"] for w in (read, tagged, plain)}
    async with _restarted(stack) as restarted:
        for filters in (ChatFilter(), ChatFilter(unread=True), ChatFilter(tag="vip"), ChatFilter(search="anna")):
            running = (await stack.context.chats.page(tenant_id, filters, None, 10_000)).items
            loaded = (await restarted.page(tenant_id, filters, None, 10_000)).items
            assert [c for c in loaded if c["chat_id"] in ours] == [c for c in running if c["chat_id"] in ours]
        assert {c["chat_id"] for c in (await restarted.page(tenant_id, ChatFilter(), None, 10_000)).items} >= ours


@contextlib.asynccontextmanager
async def _restarted(stack: Stack) -> AsyncIterator[ChatRepository]:
    """A second ChatRepository over the service's database, with a client of its own (another instance)."""
    mongo = make_mongo_client(stack.settings)
    try:
        chats = ChatRepository(
            Collections(service_database(mongo, stack.settings, DATABASE)),
            stack.clock,
            lambda _collection, _key: None,
            lambda _tenant: [stack.a.phone_number_id],
        )
        yield chats
    finally:
        await mongo.close()
