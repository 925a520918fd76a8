"""Routes that play Meta's Graph API: `/messages` sends and the message template list."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from waflow_simulator.clock import Clock
from waflow_simulator.errors import expired_token_error, meta_error, unknown_object_error, unknown_path_error
from waflow_simulator.sending import Sender
from waflow_simulator.state import SimState
from waflow_simulator.templates import decode_cursor, encode_cursor, matching

_VERSION = re.compile(r"^v(\d{1,3})\.\d{1,3}$")
_DEFAULT_LIMIT = 25
_MAX_LIMIT = 1000


def _api_major(version: str, path: str) -> int:
    match = _VERSION.fullmatch(version)
    if match is None:
        raise unknown_path_error(path)
    return int(match.group(1))


def _token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    # Graph also accepts the token as a query parameter; paging links from other tools rely on it.
    return request.query_params.get("access_token")


def _limit(raw: str | None) -> int:
    if raw is None:
        return _DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise meta_error(100, f"Param limit must be an integer between 1 and {_MAX_LIMIT} - got {raw!r}.")
    return int(raw)


def _cursor(raw: str) -> int:
    index = decode_cursor(raw)
    if index is None:
        raise meta_error(100, f"Invalid paging cursor {raw!r}.")
    return index


def graph_router(state: SimState, sender: Sender, clock: Clock) -> APIRouter:
    router = APIRouter(tags=["graph"])

    @router.post("/{version}/{phone_number_id}/messages")
    async def send_message(version: str, phone_number_id: str, request: Request) -> JSONResponse:
        major = _api_major(version, f"{version}/{phone_number_id}/messages")
        status, body = await sender.send(
            major, phone_number_id, request.headers.get("authorization"), await request.body()
        )
        return JSONResponse(body, status_code=status)

    @router.get("/{version}/{waba_id}/message_templates")
    async def list_templates(version: str, waba_id: str, request: Request) -> dict[str, Any]:
        _api_major(version, f"{version}/{waba_id}/message_templates")
        tokens = {n.access_token for n in state.numbers.values() if n.waba_id == waba_id}
        if not tokens:
            raise unknown_object_error(waba_id, "get")
        if _token(request) not in tokens:
            raise expired_token_error(clock.now())
        query = request.query_params
        limit = _limit(query.get("limit"))
        found = matching(
            state.templates.all(waba_id),
            status=query.get("status"),
            name=query.get("name"),
            category=query.get("category"),
            language=query.get("language"),
        )
        if (after := query.get("after")) is not None:
            start = _cursor(after) + 1
        elif (before := query.get("before")) is not None:
            start = max(0, _cursor(before) - limit)
        else:
            start = 0
        page = found[start : start + limit]
        fields = {f.strip() for f in query["fields"].split(",")} | {"id"} if "fields" in query else None
        data = [t.listing if fields is None else {k: v for k, v in t.listing.items() if k in fields} for t in page]
        if not page:
            return {"data": data}
        first, last = start, start + len(page) - 1
        paging: dict[str, Any] = {"cursors": {"before": encode_cursor(first), "after": encode_cursor(last)}}
        base = request.url.remove_query_params(["after", "before"])
        if last + 1 < len(found):
            paging["next"] = str(base.include_query_params(limit=limit, after=encode_cursor(last)))
        if first > 0:
            paging["previous"] = str(base.include_query_params(limit=limit, before=encode_cursor(first)))
        return {"data": data, "paging": paging}

    return router
