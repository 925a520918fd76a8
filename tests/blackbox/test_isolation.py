"""Isolation, black-box: tenant A's key on tenant B's ids, for every operation of every service's OpenAPI document
(read and write, valid bodies), answers exactly as a missing id does (404 wherever the operation documents one),
never shows B's data, and leaves B's objects as they were. And nobody gets a call to WhatsApp that they must not:
a deleted (blacklisted) contact gets none of any kind, a customer whose window has closed gets no free-form text.

The sweep is built from the documents at run time, so a new operation is covered as soon as it is served: an
operation whose ids the sweep cannot fill in, or whose body has no example, fails the sweep until it has a case.
"""

from __future__ import annotations

import json
import random
import re
import string
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, get_args

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from waflow_common.events.outbound import OutgoingMessage, SendRequested, SendRequestedEvent
from waflow_testing.fixtures import eventually as _eventually
from waflow_testing.stack import Stack, StackTenant

pytestmark = pytest.mark.e2e

SERVICES = ("conversation", "contacts", "outbound")
METHODS = ("get", "post", "put", "patch", "delete")
# A reason to answer other than 404 that says nothing about B: the operation refuses everyone the same way.
NOT_404_FOR_ANYONE = {405}


async def eventually(probe: Callable[[], Awaitable[Any]], *, what: str, timeout: float = 30.0) -> Any:
    """waflow_testing's poll, typed loosely: probes here return documents."""
    return await _eventually(probe, timeout=timeout, what=what)


def _digits(n: int) -> str:
    return "".join(random.choices(string.digits, k=n))


def new_customer() -> str:
    """A Spanish mobile number, unique per call."""
    return "346" + _digits(8)


def auth(tenant: StackTenant) -> dict[str, str]:
    return tenant.auth


# --- B's objects ----------------------------------------------------------------------------------------------------


@dataclass
class Objects:
    """One tenant's objects of every kind an operation can name, keyed by the names the documents use."""

    ids: dict[str, str]
    # Strings only this tenant's data holds (names, texts, labels): they must never appear in the other's answers.
    private: list[str] = field(default_factory=list)


MISSING = {
    "chat_id": "ch_000000000000000000000000",
    "message_id": "msg_000000000000000000000000",
    "note_id": "note_00000000000000000000",
    "contact_id": "c_000000000000000000000000",
    "list_id": "l_0000000000000000",
    "list": "l_0000000000000000",
    "tag": "no-such-tag",
    "key": "no_such_field",
    "template_id": "100000000000000.no_such_template.en",
    "phone_number_id": "100000000000000",
    "wa_id": "34600000000",
    "phone": "+34600000000",
    "contact_ids": "c_000000000000000000000000",
}


async def _json(answer: Awaitable[httpx.Response], status: int = 200) -> Any:
    response = await answer
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()


async def make_objects(stack: Stack, http: httpx.AsyncClient, tenant: StackTenant, label: str) -> Objects:
    """A customer writes in; the tenant notes, names, tags, lists and favourites through its own key."""
    conversation, contacts, outbound = (stack.url(s) for s in SERVICES)
    wa_id = new_customer()
    secret = f"{label}-{uuid.uuid4().hex[:8]}"
    name = f"Customer of {secret}"
    result = await stack.sim.customer_message(tenant.phone_number_id, wa_id, text=f"message of {secret}", name=name)
    assert result.delivered

    async def chat() -> dict[str, Any] | None:
        page = await _json(http.get(f"{conversation}/v1/chats", headers=auth(tenant), params={"limit": 200}))
        return next((c for c in page["items"] if c["wa_id"] == wa_id and c["last_message"]), None)

    chat_doc = await eventually(chat, what=f"{label}'s chat")
    chat_id = chat_doc["chat_id"]
    timeline = await _json(http.get(f"{conversation}/v1/chats/{chat_id}/messages", headers=auth(tenant)))
    message_id = timeline["items"][0]["message_id"]
    note = await _json(
        http.post(
            f"{conversation}/v1/chats/{chat_id}/notes",
            json={"author": f"agent of {secret}", "text": f"note of {secret}"},
            headers=auth(tenant),
        ),
        201,
    )

    async def contact() -> dict[str, Any] | None:
        answer = await http.get(f"{contacts}/v1/contacts/by-phone/+{wa_id}", headers=auth(tenant))
        return answer.json() if answer.status_code == 200 else None

    contact_id = (await eventually(contact, what=f"{label}'s contact"))["contact_id"]
    field_key = f"f_{label.lower()}_{uuid.uuid4().hex[:6]}"
    await _json(
        http.post(
            f"{contacts}/v1/fields",
            json={"key": field_key, "label": f"label of {secret}", "type": "text"},
            headers=auth(tenant),
        ),
        201,
    )
    await _json(
        http.patch(
            f"{contacts}/v1/contacts/{contact_id}",
            json={"name": f"name of {secret}", "fields": {field_key: f"value of {secret}"}},
            headers=auth(tenant),
        )
    )
    tag = f"tag-{secret}".lower()
    await _json(http.post(f"{contacts}/v1/contacts/{contact_id}/tags", json={"tags": [tag]}, headers=auth(tenant)))
    listed = await _json(
        http.post(f"{contacts}/v1/lists", json={"name": f"list of {secret}"}, headers=auth(tenant)), 201
    )
    await _json(http.put(f"{contacts}/v1/lists/{listed['list_id']}/members/{contact_id}", headers=auth(tenant)))

    async def template() -> str | None:
        found = await _json(http.get(f"{outbound}/v1/templates", headers=auth(tenant)))
        return next((t["template_id"] for t in found["templates"] if t["name"] == "open_template"), None)

    async def chat_shows_the_contact() -> bool:
        """Conversation shows the contact as contacts.v1 last said (so no later change of it lands mid-test)."""
        shown = ((await chat()) or {}).get("contact") or {}
        return (
            shown.get("name") == f"name of {secret}"
            and tag in shown.get("tags", [])
            and any(entry["list_id"] == listed["list_id"] for entry in shown.get("lists", []))
            and shown.get("fields", {}).get(field_key) == f"value of {secret}"
        )

    await eventually(chat_shows_the_contact, what=f"{label}'s chat showing its contact")
    template_id = await eventually(template, what=f"{label}'s templates")
    await _json(http.put(f"{outbound}/v1/templates/{template_id}/favourite", headers=auth(tenant)))
    ids = {
        "chat_id": chat_id,
        "message_id": message_id,
        "note_id": note["note_id"],
        "contact_id": contact_id,
        "list_id": listed["list_id"],
        "list": listed["list_id"],
        "tag": tag,
        "key": field_key,
        "template_id": template_id,
        "phone_number_id": tenant.phone_number_id,
        "wa_id": wa_id,
        "phone": f"+{wa_id}",
        "contact_ids": contact_id,
    }
    private = [secret, wa_id, chat_id, contact_id, note["note_id"], message_id, listed["list_id"]]
    private += [n.waba_id for n in tenant.numbers] + [n.phone_number_id for n in tenant.numbers]
    return Objects(ids, private)


async def snapshot(stack: Stack, http: httpx.AsyncClient, tenant: StackTenant, objects: Objects) -> dict[str, Any]:
    """Everything the tenant can read of its objects (and WhatsApp's record of calls for its number)."""
    conversation, contacts, outbound = (stack.url(s) for s in SERVICES)
    ids = objects.ids
    reads = {
        "chat": f"{conversation}/v1/chats/{ids['chat_id']}",
        "timeline": f"{conversation}/v1/chats/{ids['chat_id']}/messages",
        "notes": f"{conversation}/v1/chats/{ids['chat_id']}/notes",
        "contact": f"{contacts}/v1/contacts/{ids['contact_id']}",
        "contact lists": f"{contacts}/v1/contacts/{ids['contact_id']}/lists",
        "list": f"{contacts}/v1/lists/{ids['list_id']}",
        "members": f"{contacts}/v1/lists/{ids['list_id']}/members",
        "lists": f"{contacts}/v1/lists",
        "fields": f"{contacts}/v1/fields",
        "tags": f"{contacts}/v1/tags",
        "templates": f"{outbound}/v1/templates",
        "recipient": f"{outbound}/v1/recipients/{ids['phone_number_id']}/{ids['wa_id']}",
    }
    state = {name: await _json(http.get(url, headers=auth(tenant))) for name, url in reads.items()}
    calls = await stack.sim.sent(ids["phone_number_id"])
    state["whatsapp calls"] = [c.model_dump(mode="json") for c in calls]
    return state


# --- the sweep ------------------------------------------------------------------------------------------------------


@dataclass
class Case:
    service: str
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    label: str

    def url(self, base: str) -> str:
        return base + re.sub(r"\{(\w+)\}", lambda m: self.params[m.group(1)], self.path)


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def body_examples(document: dict[str, Any], operation: dict[str, Any]) -> list[tuple[str, Any]] | None:
    """The request bodies the document shows for an operation ([] when it takes none, None when it has none)."""
    request = operation.get("requestBody")
    if request is None:
        return [("", None)]
    media = request["content"]["application/json"]
    if media.get("examples"):
        return [(name, example["value"]) for name, example in media["examples"].items()]
    if "example" in media:
        return [("", media["example"])]
    schema = media["schema"]
    options = [schema, *schema.get("anyOf", []), *schema.get("oneOf", [])]
    for option in options:
        resolved = _resolve(document, option)
        if resolved.get("examples"):
            return [("", resolved["examples"][0])]
    if not request.get("required"):
        return [("", None)]
    return None


def _with_ids(value: Any, ids: dict[str, str]) -> Any:
    """A body with every field that names an object (`contact_ids`, `phone_number_id`, ...) naming these."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ids and isinstance(item, list):
                out[key] = [ids[key]]
            elif key in ids and isinstance(item, str):
                out[key] = ids[key]
            else:
                out[key] = _with_ids(item, ids)
        return out
    if isinstance(value, list):
        return [_with_ids(item, ids) for item in value]
    return value


def cases_for(
    service: str, document: dict[str, Any], b: Objects, a: Objects
) -> tuple[list[tuple[Case, Case]], list[str]]:
    """(B's case, the same with missing ids) for every operation with ids; and what has no case."""
    pairs: list[tuple[Case, Case]] = []
    uncovered: list[str] = []
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            if method not in METHODS:
                continue
            where = f"{service} {method.upper()} {path}"
            parameters = operation.get("parameters", [])
            names = [p["name"] for p in parameters if p["in"] == "path"]
            query_ids = [p["name"] for p in parameters if p["in"] == "query" and p["name"] in MISSING]
            examples = body_examples(document, operation)
            if examples is None:
                uncovered.append(f"{where}: its body has no example")
                continue
            if not names and not query_ids and f"{method.upper()} {path}" not in NO_ID_CASES:
                uncovered.append(f"{where}: takes no id and has no case in NO_ID_CASES")
                continue
            unknown = [n for n in names if n not in MISSING]
            if unknown:
                uncovered.append(f"{where}: no case for the path parameters {unknown}")
                continue
            variants: list[tuple[str, dict[str, str], dict[str, str]]] = []
            if names:
                variants.append(("B's ids", b.ids, MISSING))
                # An own parent with B's child (A's chat with B's message, A's list with B's contact, ...).
                for own in names[:-1]:
                    mixed_b = b.ids | {own: a.ids[own]}
                    mixed_missing = MISSING | {own: a.ids[own]}
                    variants.append((f"A's {own}, B's others", mixed_b, mixed_missing))
            for query in query_ids:
                variants.append((f"query {query}=B's", b.ids, MISSING))
            for example_name, example in examples:
                for label, with_b, with_missing in variants:
                    query_b = {q: with_b[q] for q in query_ids if label.startswith("query")}
                    query_missing = {q: with_missing[q] for q in query_b}
                    made = [
                        Case(
                            service,
                            method,
                            path,
                            {n: ids[n] for n in names},
                            query,
                            _with_ids(example, ids) if example is not None else None,
                            f"{where} [{label}{' ' + example_name if example_name else ''}]",
                        )
                        for ids, query in ((with_b, query_b), (with_missing, query_missing))
                    ]
                    pairs.append((made[0], made[1]))
    return pairs, uncovered


async def call(http: httpx.AsyncClient, base: str, case: Case, tenant: StackTenant) -> httpx.Response:
    kwargs: dict[str, Any] = {"headers": auth(tenant), "params": case.query}
    if case.body is not None:
        kwargs["json"] = case.body
    return await http.request(case.method.upper(), case.url(base), **kwargs)


def _same_modulo_ids(b_answer: httpx.Response, missing_answer: httpx.Response, b_case: Case, missing: Case) -> bool:
    if b_answer.status_code != missing_answer.status_code:
        return False
    text = b_answer.text
    for name, value in b_case.params.items():
        text = text.replace(value, missing.params[name])
    for name, value in b_case.query.items():
        text = text.replace(value, missing.query[name])
    try:
        return bool(json.loads(text) == missing_answer.json())
    except ValueError:
        return text == missing_answer.text


def leaks(answer: httpx.Response, private: list[str], request: str) -> list[str]:
    """B's private strings in an answer to A (those A itself sent in the request excepted)."""
    return [p for p in private if p in answer.text and p not in request]


# Operations that name no object of B in their path: each checks its own way that B stays invisible.
NoIdCase = Callable[["Sweep"], Awaitable[list[str]]]
NO_ID_CASES: dict[str, NoIdCase] = {}


def no_id_case(key: str) -> Callable[[NoIdCase], NoIdCase]:
    def register(function: NoIdCase) -> NoIdCase:
        NO_ID_CASES[key] = function
        return function

    return register


@dataclass
class Sweep:
    stack: Stack
    http: httpx.AsyncClient
    a: Objects
    b: Objects

    @property
    def tenant(self) -> StackTenant:
        return self.stack.tenant_a

    async def request(self, service: str, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, str]:
        answer = await self.http.request(method, self.stack.url(service) + path, headers=auth(self.tenant), **kwargs)
        return answer, json.dumps([path, kwargs], ensure_ascii=False)

    async def must_not_show_b(self, service: str, method: str, path: str, **kwargs: Any) -> list[str]:
        answer, request = await self.request(service, method, path, **kwargs)
        where = f"{service} {method} {path} {kwargs}"
        problems = [f"{where}: answered {answer.status_code} {answer.text[:200]}"] if answer.status_code >= 400 else []
        return problems + [f"{where}: shows B's {leak!r}" for leak in leaks(answer, self.b.private, request)]


@no_id_case("GET /v1/chats")
async def _chats(s: Sweep) -> list[str]:
    problems = await s.must_not_show_b("conversation", "GET", "/v1/chats", params={"limit": 200})
    for query in ({"search": s.b.ids["wa_id"]}, {"search": s.b.private[0]}, {"unread": "true"}):
        problems += await s.must_not_show_b("conversation", "GET", "/v1/chats", params=query)
    return problems


@no_id_case("POST /v1/chats")
async def _open_chat(s: Sweep) -> list[str]:
    """B's number is not A's (404, as a missing one); B's customer's number opens A's own chat, showing nothing of B."""
    problems: list[str] = []
    body = {"phone": s.b.ids["phone"], "phone_number_id": s.b.ids["phone_number_id"]}
    on_b, _ = await s.request("conversation", "POST", "/v1/chats", json=body)
    missing, _ = await s.request(
        "conversation", "POST", "/v1/chats", json=body | {"phone_number_id": MISSING["phone_number_id"]}
    )
    if on_b.status_code != 404 or on_b.json() != missing.json():
        problems.append(f"POST /v1/chats on B's number: {on_b.status_code} {on_b.text[:200]} (missing: {missing.text})")
    own = await s.must_not_show_b("conversation", "POST", "/v1/chats", json={"phone": s.b.ids["phone"]})
    return problems + own


@no_id_case("POST /v1/chats/mark-all-read")
async def _mark_all_read(s: Sweep) -> list[str]:
    return await s.must_not_show_b("conversation", "POST", "/v1/chats/mark-all-read")


@no_id_case("POST /v1/contacts")
async def _create_contact(s: Sweep) -> list[str]:
    """B's customer's number makes A a contact of its own: not B's, with nothing of B's."""
    return await s.must_not_show_b("contacts", "POST", "/v1/contacts", json={"phone": s.b.ids["phone"]})


@no_id_case("GET /v1/contacts")
async def _contacts(s: Sweep) -> list[str]:
    problems: list[str] = []
    queries: list[dict[str, Any]] = [{}, {"q": s.b.private[0]}, {"q": s.b.ids["wa_id"]}, {"tag": s.b.ids["tag"]}]
    queries += [{"deleted": "true"}]
    for query in queries:
        problems += await s.must_not_show_b("contacts", "GET", "/v1/contacts", params=query | {"limit": 200})
    return problems


@no_id_case("GET /v1/tags")
async def _tags(s: Sweep) -> list[str]:
    return await s.must_not_show_b("contacts", "GET", "/v1/tags")


@no_id_case("GET /v1/fields")
async def _fields(s: Sweep) -> list[str]:
    return await s.must_not_show_b("contacts", "GET", "/v1/fields")


@no_id_case("POST /v1/fields")
async def _define_field(s: Sweep) -> list[str]:
    """B's field key is free for A, with another type (a conflict would tell A that B has it)."""
    body = {"key": s.b.ids["key"], "label": "A's own", "type": "number"}
    answer, _ = await s.request("contacts", "POST", "/v1/fields", json=body)
    return [] if answer.status_code == 201 else [f"POST /v1/fields with B's key: {answer.status_code} {answer.text}"]


@no_id_case("GET /v1/lists")
async def _lists(s: Sweep) -> list[str]:
    return await s.must_not_show_b("contacts", "GET", "/v1/lists")


@no_id_case("POST /v1/lists")
async def _create_list(s: Sweep) -> list[str]:
    """B's list name is free for A (list_name_taken would tell A that B has it)."""
    b_list_name = f"list of {s.b.private[0]}"
    answer, _ = await s.request("contacts", "POST", "/v1/lists", json={"name": b_list_name})
    return [] if answer.status_code == 201 else [f"POST /v1/lists with B's name: {answer.status_code} {answer.text}"]


@no_id_case("GET /v1/templates")
async def _templates(s: Sweep) -> list[str]:
    return await s.must_not_show_b("outbound", "GET", "/v1/templates")


@no_id_case("POST /v1/templates/sync")
async def _sync(s: Sweep) -> list[str]:
    return await s.must_not_show_b("outbound", "POST", "/v1/templates/sync")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def objects(stack: Stack) -> tuple[Objects, Objects]:
    """(A's, B's) objects; A also defines the fields its documents' examples use, so those bodies are valid."""
    async with httpx.AsyncClient(timeout=30) as http:
        for key, kind in (("city", "text"), ("orders", "number")):
            answer = await http.post(
                f"{stack.url('contacts')}/v1/fields",
                json={"key": key, "label": key, "type": kind},
                headers=auth(stack.tenant_a),
            )
            assert answer.status_code in (200, 201), answer.text
        a = await make_objects(stack, http, stack.tenant_a, "A")
        b = await make_objects(stack, http, stack.tenant_b, "B")
    return a, b


def _deletions_last(pair: tuple[Case, Case]) -> tuple[bool, int]:
    deletes = pair[0].method == "delete"
    return deletes, -pair[0].path.count("/") if deletes else 0


async def sweep(
    stack: Stack, http: httpx.AsyncClient, caller: StackTenant, own: Objects, other: Objects
) -> tuple[list[str], dict[str, bool]]:
    """Every operation of every document, called by `caller` on `other`'s ids: the problems found, and for each
    case whether it found one."""
    problems: list[str] = []
    flagged: dict[str, bool] = {}
    for service in SERVICES:
        base = stack.url(service)
        document = await _json(http.get(f"{base}/openapi.json"))
        pairs, uncovered = cases_for(service, document, other, own)
        problems += [f"no case: {u}" for u in uncovered]
        # Deletions last, children before parents: where one reaches its object, the other cases still find theirs.
        pairs.sort(key=_deletions_last)
        for on_b, on_missing in pairs:
            found: list[str] = []
            b_answer = await call(http, base, on_b, caller)
            missing_answer = await call(http, base, on_missing, caller)
            status = b_answer.status_code
            documented_404 = "404" in document["paths"][on_b.path][on_b.method]["responses"]
            if status >= 500 or status == 403:
                found.append(f"{on_b.label}: answered {status} {b_answer.text[:200]}")
            elif "[B's ids" in on_b.label and status != 404 and (documented_404 or status not in NOT_404_FOR_ANYONE):
                found.append(f"{on_b.label}: answered {status}, not 404: {b_answer.text[:200]}")
            if not _same_modulo_ids(b_answer, missing_answer, on_b, on_missing):
                found.append(
                    f"{on_b.label}: B's id answered {status} {b_answer.text[:200]}, a missing one "
                    f"{missing_answer.status_code} {missing_answer.text[:200]}"
                )
            request = json.dumps([on_b.params, on_b.query, on_b.body], ensure_ascii=False)
            found += [f"{on_b.label}: shows B's {p!r}" for p in leaks(b_answer, other.private, request)]
            flagged[on_b.label] = bool(found)
            problems += found
    return problems, flagged


async def test_tenant_a_never_reaches_tenant_bs_objects(stack: Stack, objects: tuple[Objects, Objects]) -> None:
    a, b = objects
    async with httpx.AsyncClient(timeout=30) as http:
        before = await snapshot(stack, http, stack.tenant_b, b)
        problems, flagged = await sweep(stack, http, stack.tenant_a, a, b)
        checks = Sweep(stack, http, a, b)
        # Reads first: the writes give A objects of its own named like B's (a contact with B's customer's number,
        # a list with B's list's name), which A may then see.
        for key in sorted(NO_ID_CASES, key=lambda k: not k.startswith("GET ")):
            problems += await NO_ID_CASES[key](checks)
        after = await snapshot(stack, http, stack.tenant_b, b)
    changed = [name for name in before if before[name] != after[name]]
    problems += [f"B's {name} changed: {before[name]} -> {after[name]}" for name in changed]
    assert len(flagged) > 30, f"only {len(flagged)} cases were swept"
    assert not problems, f"{len(problems)} problems in {len(flagged)} cases:\n  " + "\n  ".join(problems)


async def test_the_sweep_sees_what_a_tenant_may_reach(stack: Stack, objects: tuple[Objects, Objects]) -> None:
    """The sweep's control: B's key on B's own ids reaches them, and the sweep must flag every such case (a sweep
    that flags nothing here could not catch a leak). Runs after the real sweep: it changes B's objects."""
    _, b = objects
    async with httpx.AsyncClient(timeout=30) as http:
        _, flagged = await sweep(stack, http, stack.tenant_b, b, b)
    # Operations that answer everyone alike (notes refuse PUT/PATCH/DELETE to all: 405) cannot tell owners apart.
    silent = [label for label, hit in flagged.items() if "[B's ids" in label and not hit and not _refuses(label)]
    assert not silent, "the sweep did not notice B reaching its own objects in:\n  " + "\n  ".join(silent)


def _refuses(label: str) -> bool:
    return any(label.startswith(f"conversation {m} /v1/chats/{{chat_id}}/notes/{{note_id}} ") for m in REFUSED)


REFUSED = ("PUT", "PATCH", "DELETE")


# --- nobody is messaged who must not be -------------------------------------------------------------------------


def outgoing_kinds() -> list[str]:
    """Every kind of message outbound can be asked to send (the send.requested contract)."""
    members = get_args(get_args(OutgoingMessage)[0])
    return [member.model_fields["type"].default for member in members]


def command_for(kind: str) -> Any:
    """One valid message of each kind; a kind without one here fails the sweep."""
    from waflow_common.events.outbound import TemplateMessage, TextMessage

    messages: dict[str, Any] = {
        "text": TextMessage(body="hello"),
        "template": TemplateMessage(name="open_template", language="en", parameters={"SENTENCE": "for writing"}),
    }
    if kind not in messages:
        raise AssertionError(f"no case for outgoing messages of kind {kind!r}: add one to command_for")
    return messages[kind]


@dataclass
class Customer:
    stack: Stack
    http: httpx.AsyncClient
    tenant: StackTenant
    wa_id: str
    chat_id: str
    contact_id: str
    wamids: list[str]

    @property
    def phone_number_id(self) -> str:
        return self.tenant.phone_number_id

    async def calls(self) -> list[dict[str, Any]]:
        """Every call WhatsApp received for this customer: messages to them and read receipts of their messages."""
        calls = await self.stack.sim.sent(self.phone_number_id)
        return [
            c.model_dump(mode="json")
            for c in calls
            if c.to == self.wa_id or (isinstance(c.body, dict) and c.body.get("message_id") in self.wamids)
        ]

    async def api(self, service: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, self.stack.url(service) + path, headers=auth(self.tenant), **kwargs)

    async def command(self, kind: str) -> str:
        """Asks outbound directly (as any producer of send.requested could) and returns the request id."""
        request_id = f"req_{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        event = SendRequestedEvent(
            event_id=uuid.uuid4(),
            tenant_id=self.tenant.tenant_id,
            occurred_at=now,
            produced_at=now,
            correlation_id=request_id,
            payload=SendRequested(
                request_id=request_id,
                chat_id=self.chat_id,
                phone_number_id=self.phone_number_id,
                wa_id=self.wa_id,
                message=command_for(kind),
                requested_by="automation:isolation-test",
            ),
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.stack.settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(
                self.stack.settings.topic(SendRequestedEvent.topic),
                event.to_json(),
                key=event.key().encode(),
                headers=[(k, v.encode()) for k, v in event.headers().items()],
            )
        finally:
            await producer.stop()
        return request_id

    async def outcome(self, request_id: str) -> dict[str, Any]:
        """send.accepted or send.rejected for the request, read from outbound.results.v1."""
        consumer = AIOKafkaConsumer(
            self.stack.settings.topic("outbound.results.v1"),
            bootstrap_servers=self.stack.settings.kafka_bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        event = json.loads(record.value)
                        if event["payload"].get("request_id") == request_id:
                            result: dict[str, Any] = event
                            return result
        finally:
            await consumer.stop()
        raise AssertionError(f"no outcome for {request_id} within 30s")


async def customer_writes(
    stack: Stack, http: httpx.AsyncClient, tenant: StackTenant, *, hours_ago: float = 0.0
) -> Customer:
    wa_id = new_customer()
    timestamp = int(time.time() - hours_ago * 3600)
    result = await stack.sim.customer_message(
        tenant.phone_number_id, wa_id, text="hello", name="Someone", timestamp=timestamp
    )
    assert result.delivered
    conversation, contacts = stack.url("conversation"), stack.url("contacts")

    async def chat() -> dict[str, Any] | None:
        page = await _json(http.get(f"{conversation}/v1/chats", headers=auth(tenant), params={"limit": 200}))
        return next((c for c in page["items"] if c["wa_id"] == wa_id and c["last_message"]), None)

    async def contact() -> dict[str, Any] | None:
        answer = await http.get(f"{contacts}/v1/contacts/by-phone/+{wa_id}", headers=auth(tenant))
        return answer.json() if answer.status_code == 200 else None

    chat_id = (await eventually(chat, what="the chat"))["chat_id"]
    contact_id = (await eventually(contact, what="the contact"))["contact_id"]
    return Customer(stack, http, tenant, wa_id, chat_id, contact_id, [result.wamid])


async def delete(customer: Customer) -> None:
    """The agent deletes the contact; waits until conversation and outbound both know it is blacklisted."""
    answer = await customer.api("contacts", "DELETE", f"/v1/contacts/{customer.contact_id}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["blacklisted"] is True

    async def known() -> bool:
        chat = (await customer.api("conversation", "GET", f"/v1/chats/{customer.chat_id}")).json()
        path = f"/v1/recipients/{customer.phone_number_id}/{customer.wa_id}"
        recipient = (await customer.api("outbound", "GET", path)).json()
        return bool(chat["blacklisted"] and recipient["blacklisted"])

    await eventually(known, what="the blacklist known to conversation and outbound")


async def sentinel(stack: Stack, http: httpx.AsyncClient, tenant: StackTenant) -> None:
    """Another customer of the same number gets a read receipt: outbound has worked through what came before."""
    other = await customer_writes(stack, http, tenant)
    answer = await other.api("conversation", "POST", f"/v1/chats/{other.chat_id}/read")
    assert answer.status_code == 200, answer.text
    await eventually(other.calls, what="the sentinel's read receipt at WhatsApp")


WINDOWS = pytest.mark.parametrize("hours_ago", [0, 25], ids=["window open", "window closed"])


@WINDOWS
async def test_a_deleted_contact_is_sent_nothing_of_any_kind(stack: Stack, hours_ago: int) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        customer = await customer_writes(stack, http, stack.tenant_a, hours_ago=hours_ago)
        await delete(customer)
        problems: list[str] = []
        bodies = {
            "text": {"type": "text", "body": "are you there?"},
            "template": {"type": "template", "name": "open_template", "parameters": {"SENTENCE": "for writing"}},
        }
        # Free-form text outside the window may be refused for that reason first; a refusal either way.
        refusals = {"blacklisted", "window_closed"} if hours_ago else {"blacklisted"}
        for kind, body in bodies.items():
            answer = await customer.api("conversation", "POST", f"/v1/chats/{customer.chat_id}/messages", json=body)
            allowed = refusals if kind == "text" else {"blacklisted"}
            if answer.status_code != 409 or answer.json()["error"]["code"] not in allowed:
                problems.append(f"API {kind}: {answer.status_code} {answer.text[:200]}")
        reopened = await customer.api("conversation", "POST", "/v1/chats", json={"phone": f"+{customer.wa_id}"})
        if reopened.status_code != 409:
            problems.append(f"a new chat with the deleted number: {reopened.status_code} {reopened.text[:200]}")
        kinds = outgoing_kinds()
        assert set(kinds) >= {"text", "template"}, kinds
        for kind in kinds:
            outcome = await customer.outcome(await customer.command(kind))
            reason = outcome["payload"].get("reason")
            allowed = refusals if kind == "text" else {"blacklisted"}
            if outcome["event_type"] != "send.rejected" or reason not in allowed:
                problems.append(f"send.requested {kind}: {outcome['event_type']} {reason}")
        await sentinel(stack, http, stack.tenant_a)
        calls = await customer.calls()
    problems += [f"WhatsApp was called for a deleted contact: {call}" for call in calls]
    assert not problems, "\n".join(problems)


@WINDOWS
async def test_read_receipts_never_reach_a_deleted_contact(stack: Stack, hours_ago: int) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        customer = await customer_writes(stack, http, stack.tenant_a, hours_ago=hours_ago)
        await delete(customer)
        message_id = (await customer.api("conversation", "GET", f"/v1/chats/{customer.chat_id}/messages")).json()[
            "items"
        ][0]["message_id"]
        for path in (
            f"/v1/chats/{customer.chat_id}/read",
            f"/v1/chats/{customer.chat_id}/messages/{message_id}/unread",
            f"/v1/chats/{customer.chat_id}/read",
            "/v1/chats/mark-all-read",
        ):
            answer = await customer.api("conversation", "POST", path)
            assert answer.status_code == 200, f"{path}: {answer.text}"
        await sentinel(stack, http, stack.tenant_a)
        calls = await customer.calls()
    assert not calls, f"WhatsApp was called for a deleted contact: {calls}"


async def test_a_closed_window_lets_no_free_form_text_through(stack: Stack) -> None:
    """Outside the 24-hour window only approved templates go out: the template is the sentinel that reaches."""
    async with httpx.AsyncClient(timeout=30) as http:
        customer = await customer_writes(stack, http, stack.tenant_a, hours_ago=25)
        chat = (await customer.api("conversation", "GET", f"/v1/chats/{customer.chat_id}")).json()
        assert chat["window"]["open"] is False, chat["window"]
        problems: list[str] = []
        text = {"type": "text", "body": "are you there?"}
        answer = await customer.api("conversation", "POST", f"/v1/chats/{customer.chat_id}/messages", json=text)
        if answer.status_code != 409 or answer.json()["error"]["code"] != "window_closed":
            problems.append(f"API text: {answer.status_code} {answer.text[:200]}")
        outcome = await customer.outcome(await customer.command("text"))
        if outcome["event_type"] != "send.rejected" or outcome["payload"].get("reason") != "window_closed":
            problems.append(f"send.requested text: {outcome['event_type']} {outcome['payload'].get('reason')}")
        template = {"type": "template", "name": "open_template", "parameters": {"SENTENCE": "for writing"}}
        answer = await customer.api("conversation", "POST", f"/v1/chats/{customer.chat_id}/messages", json=template)
        assert answer.status_code == 202, answer.text

        async def template_sent() -> list[dict[str, Any]]:
            return [c for c in await customer.calls() if c["type"] == "template"]

        await eventually(template_sent, what="the template at WhatsApp")
        calls = [c for c in await customer.calls() if c["type"] != "template"]
    assert not calls, f"free-form calls reached WhatsApp outside the window: {calls}"
    assert not problems, "\n".join(problems)
