"""Meta's delivery, replayed: webhook sequences from tests/blackbox/corpus, signed with the app secret and POSTed to
ingest as Meta would, then the exact end state of every chat, message and contact, checked field by field through
the REST APIs.

Each corpus file holds `steps` (deliveries, and the agent's reads and sends between them) and `expect` (the end
state). The expected states are written from the product's rules (README, the issue's rules, Meta's reference),
not from what the code does. Tokens `${...}` in a file are filled in per run, so every run has customers, message
ids and timestamps of its own:

    ${A1} ${A2} ${B1}          a business number's phone_number_id (tenant A has two, tenant B one)
    ${A1.display} ${A1.waba}   its display number and WABA id
    ${c:NAME}                  a customer's wa_id          ${u:NAME}   a customer's BSUID (business-scoped user id)
    ${w:NAME}                  an inbound wamid            ${o:NAME}   the wamid of a message an agent sent (a step)
    ${t:N}                     Unix seconds, N seconds after the run's base time (an hour ago)
    ${iso:N}                   the same instant in ISO-8601

Expected values starting with `*` are rules rather than values (see `_matches`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import re
import signal
import string
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from waflow_common.events.tenants import PhoneNumber
from waflow_testing.fixtures import eventually
from waflow_testing.stack import Stack, StackTenant

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).parent / "corpus"
TOKEN = re.compile(r"\$\{([^}]+)\}")
SETTLE_TIMEOUT = 30.0
# How long the simulator holds its answer to outbound when a step needs the answer's wamid before outbound has it.
ANSWER_DELAY = 2.0


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORPUS / f"{name}.json").read_text())
    return data


# --- the stack's tenants and numbers -------------------------------------------------------------------------------


class Deployment:
    """The stack as the corpus names it: tenants A and B, numbers A1, A2 (tenant A's) and B1 (tenant B's)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    # Each use gives the service's next instance: with two instances, the corpus's calls go through both.
    @property
    def ingest(self) -> str:
        return self.stack.url("ingest")

    @property
    def conversation(self) -> str:
        return self.stack.url("conversation")

    @property
    def contacts(self) -> str:
        return self.stack.url("contacts")

    def tenant(self, letter: str) -> StackTenant:
        return {"A": self.stack.tenant_a, "B": self.stack.tenant_b}[letter]

    def phone(self, name: str) -> PhoneNumber:
        return self.tenant(name[0]).numbers[int(name[1:]) - 1]

    def number(self, name: str, attribute: str = "id") -> str:
        phone = self.phone(name)
        return {"id": phone.phone_number_id, "display": phone.display_phone_number, "waba": phone.waba_id}[attribute]

    async def eventually(self, probe: Any, *, what: str) -> Any:
        return await eventually(probe, timeout=SETTLE_TIMEOUT, what=what)

    @contextlib.asynccontextmanager
    async def statuses_only_from_webhooks(self, name: str) -> AsyncIterator[None]:
        """The simulator reports no statuses of its own for this number, so only the corpus's statuses arrive."""
        await self._status_flow(name, "none")
        try:
            yield
        finally:
            await self._status_flow(name, "read")

    async def _status_flow(self, name: str, flow: Literal["none", "read"]) -> None:
        await self.stack.numbers_behave(self.phone(name).phone_number_id, status_flow=flow)


@pytest.fixture
def deployment(stack: Stack) -> Deployment:
    return Deployment(stack)


# --- filling in a sequence ---------------------------------------------------------------------------------------


@dataclass
class Tokens:
    """What `${...}` stands for in this run."""

    deployment: Deployment
    base: int = field(default_factory=lambda: int(time.time()) - 3600)
    values: dict[str, str] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)

    def resolve(self, token: str) -> str:
        if token in self.values:
            return self.values[token]
        kind, _, arg = token.partition(":")
        if kind == "t":
            return str(self.base + _offset(arg))
        if kind == "iso":
            return datetime.fromtimestamp(self.base + _offset(arg), UTC).isoformat()
        if kind == "c":
            # Spanish mobile numbers: valid for every phone-number library, and unique per run.
            value = "346" + "".join(self.rng.choices(string.digits, k=8))
        elif kind == "u":
            value = "US." + "".join(self.rng.choices(string.digits, k=19))
        elif kind == "w":
            value = "wamid.HBgL" + "".join(self.rng.choices(string.ascii_letters + string.digits, k=48)) + "AA=="
        elif kind == "o":
            raise KeyError(f"${{{token}}} is used before the step that sends it")
        else:
            number, _, attribute = token.partition(".")
            value = self.deployment.number(number, attribute or "id")
        self.values[token] = value
        return value

    def fill(self, data: Any) -> Any:
        if isinstance(data, str):
            return TOKEN.sub(lambda m: self.resolve(m.group(1)), data)
        if isinstance(data, list):
            return [self.fill(item) for item in data]
        if isinstance(data, dict):
            return {key: self.fill(value) for key, value in data.items()}
        return data


def _offset(expression: str) -> int:
    return sum(int(term) for term in re.findall(r"[+-]?\d+", expression))


def encode(body: Any, encoding: str) -> bytes:
    """Meta's wire form is compact JSON with non-ASCII escaped as \\uXXXX; `utf8` sends the characters as they are."""
    if encoding == "utf8":
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(secret: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


# --- running a sequence --------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, deployment: Deployment, http: httpx.AsyncClient, tokens: Tokens) -> None:
        self.d = deployment
        self.http = http
        self.tokens = tokens
        self.paused: list[int] = []  # outbound processes this runner froze

    async def deliver(self, step: dict[str, Any]) -> None:
        app = self.d.tenant(step["app"]).app
        body = self.tokens.fill(step["deliver"])
        if step.get("via") == "simulator":
            # The simulator signs and posts it, and (as Meta) opens the customer's window for the agent's answer.
            result = await self.d.stack.sim.raw_webhook(app.app_id, body, duplicates=step.get("copies", 1) - 1)
            assert result.delivered, result
            return
        raw = encode(body, step.get("encoding", "meta"))
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(app.app_secret, raw)}
        for _ in range(step.get("copies", 1)):
            url = f"{self.d.ingest}/webhooks/whatsapp/{app.app_id}"
            answer = await self.http.post(url, content=raw, headers=headers)
            assert answer.status_code == 200, f"ingest answered {answer.status_code}: {answer.text[:500]}"

    async def chat_for(self, number: str, customer: str, *, wamids: list[str] | None = None) -> dict[str, Any]:
        """The chat, once it exists and holds these messages."""
        tenant = self.d.tenant(number[0])
        phone_number_id = self.d.number(number, "id")
        identity = self.tokens.resolve(customer)

        async def probe() -> dict[str, Any] | None:
            found = [c for c in await self.chats(tenant.api_key) if _is_chat_of(c, phone_number_id, identity)]
            if len(found) != 1:
                return None
            if wamids:
                have = {m.get("wamid") for m in await self.timeline(tenant.api_key, found[0]["chat_id"])}
                if not set(wamids) <= have:
                    return None
            return found[0]

        chat: dict[str, Any] = await self.d.eventually(probe, what=f"chat {number}/{customer} with {wamids}")
        return chat

    async def read(self, step: dict[str, Any]) -> None:
        spec = step["read"]
        chat = await self.chat_for(spec["number"], spec["customer"], wamids=self.tokens.fill(step.get("after", [])))
        key = self.d.tenant(spec["number"][0]).api_key
        answer = await self.http.post(f"{self.d.conversation}/v1/chats/{chat['chat_id']}/read", headers=_auth(key))
        assert answer.status_code == 200, answer.text
        wamids = set(self.tokens.fill(step.get("after", [])))

        async def receipt_sent() -> bool:
            # Wait for the read receipt to reach WhatsApp, so it is not taken for a later step's call.
            calls = await self.d.stack.sim.sent(chat["phone_number_id"])
            return any(c.type == "read" and _body_of(c).get("message_id") in wamids for c in calls)

        await self.d.eventually(receipt_sent, what="the read receipt at WhatsApp")

    async def send(self, step: dict[str, Any]) -> None:
        spec = step["send"]
        chat = await self.chat_for(spec["number"], spec["customer"], wamids=self.tokens.fill(step.get("after", [])))
        key = self.d.tenant(spec["number"][0]).api_key
        url = f"{self.d.conversation}/v1/chats/{chat['chat_id']}/messages"

        async def window_open() -> bool:
            got = await self.http.get(f"{self.d.conversation}/v1/chats/{chat['chat_id']}", headers=_auth(key))
            return bool(got.json()["window"]["open"])

        await self.d.eventually(window_open, what="the window open before the agent answers")
        if spec.get("hold_answer"):
            await self.d.stack.sim.inject_fault(chat["phone_number_id"], delay_seconds=ANSWER_DELAY)
        answer = await self.http.post(url, json={"type": "text", "body": spec["text"]}, headers=_auth(key))
        assert answer.status_code == 202, answer.text
        message_id = answer.json()["message"]["message_id"]
        self.tokens.values[f"message:{spec['as']}"] = f"{url}/{message_id}"
        if spec.get("hold_answer"):
            self.tokens.values[f"o:{spec['as']}"] = await self.hold_answer(chat)
            return

        async def wamid() -> str | None:
            got = await self.http.get(f"{url}/{message_id}", headers=_auth(key))
            value: str | None = got.json().get("wamid")
            return value

        self.tokens.values[f"o:{spec['as']}"] = await self.d.eventually(wamid, what="WhatsApp's wamid for the answer")

    async def hold_answer(self, chat: dict[str, Any]) -> str:
        """Freezes outbound while WhatsApp (delayed) answers its call, so the answer's wamid is known to WhatsApp,
        to the test and to the statuses that follow, but not yet to conversation (outbound has not published
        send.accepted). Returns the wamid; `release` lets outbound go on."""
        for _ in range(20):
            # outbound's call is in the simulator's delay now, or not made yet (then it is made after SIGCONT).
            # Every instance is frozen: whichever holds the customer's partition makes the call.
            await asyncio.sleep(ANSWER_DELAY / 4)
            self.paused = self.d.stack.pids("outbound")
            for pid in self.paused:
                os.killpg(pid, signal.SIGSTOP)
            deadline = time.monotonic() + ANSWER_DELAY * 2
            while time.monotonic() < deadline:
                calls = await self.d.stack.sim.sent(chat["phone_number_id"], to=chat["wa_id"])
                if calls and calls[-1].wamid:
                    return calls[-1].wamid
                await asyncio.sleep(0.1)
            self.release()
        raise AssertionError("outbound never called WhatsApp")

    def release(self) -> None:
        for pid in self.paused:
            os.killpg(pid, signal.SIGCONT)
        self.paused = []

    async def still_unsent(self, step: dict[str, Any]) -> None:
        """Conversation does not know the message's wamid yet, so no status can have been applied to it."""
        got = await self.http.get(self.tokens.values[f"message:{step['unsent']}"], headers=_auth(self.key(step)))
        message = got.json()
        assert message["wamid"] is None, message
        assert message["status"] in ("pending", "accepted"), message

    def key(self, step: dict[str, Any]) -> str:
        return self.d.tenant(step.get("tenant", "A")).api_key

    async def run(self, sequence: dict[str, Any]) -> None:
        try:
            for step in sequence["steps"]:
                if "deliver" in step:
                    await self.deliver(step)
                elif "read" in step:
                    await self.read(step)
                elif "send" in step:
                    await self.send(step)
                elif "unsent" in step:
                    await self.still_unsent(step)
                elif "release" in step:
                    self.release()
                else:
                    raise AssertionError(f"unknown step {step}")
        finally:
            self.release()

    async def chats(self, key: str) -> list[dict[str, Any]]:
        return await self._pages(f"{self.d.conversation}/v1/chats", key)

    async def timeline(self, key: str, chat_id: str) -> list[dict[str, Any]]:
        return await self._pages(f"{self.d.conversation}/v1/chats/{chat_id}/messages", key)

    async def contacts(self, key: str) -> list[dict[str, Any]]:
        return await self._pages(f"{self.d.contacts}/v1/contacts", key)

    async def _pages(self, url: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": "200"} | ({"cursor": cursor} if cursor else {})
            answer = await self.http.get(url, params=params, headers=_auth(key))
            assert answer.status_code == 200, f"{url}: {answer.status_code} {answer.text[:300]}"
            page = answer.json()
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    # --- the end state ---------------------------------------------------------------------------------------

    async def differences(self, sequence: dict[str, Any]) -> list[str]:
        """Every way the services' state differs from the sequence's expected end state (empty when it matches)."""
        expect = self.tokens.fill(sequence["expect"])
        problems: list[str] = []
        chat_ids: set[str] = set()
        customers = {c["customer"] for c in expect["chats"]} | {c["customer"] for c in expect["contacts"]}
        for tenant_name in ("A", "B"):
            key = self.d.tenant(tenant_name).api_key
            chats = await self.chats(key)
            identities = {self.tokens.resolve(c) for c in customers}
            theirs = [c for c in chats if any(_mentions(c, i) for i in identities)]
            wanted = [e for e in expect["chats"] if e["number"].startswith(tenant_name)]
            for spec in wanted:
                where = f"chat {spec['number']}/{spec['customer']}"
                phone_number_id = self.d.number(spec["number"], "id")
                identity = self.tokens.resolve(spec["customer"])
                found = [c for c in theirs if _is_chat_of(c, phone_number_id, identity)]
                if len(found) != 1:
                    same_number = [c for c in chats if c["phone_number_id"] == phone_number_id]
                    faceless = [_brief(c) for c in same_number if not c.get("wa_id")]
                    shown = f" (chats without a phone number: {faceless})" if not identity.isdigit() else ""
                    problems.append(f"{where}: {len(found)} chats{shown}")
                    continue
                chat = found[0]
                chat_ids.add(chat["chat_id"])
                problems += _compare_chat(where, chat, spec)
                timeline = await self.timeline(key, chat["chat_id"])
                problems += _compare_timeline(where, timeline, spec["timeline"])
            extra = [c for c in theirs if c["chat_id"] not in chat_ids]
            problems += [f"tenant {tenant_name}: unexpected chat {_brief(c)}" for c in extra]
            contacts = await self.contacts(key)
            for spec in [c for c in expect["contacts"] if c["tenant"] == tenant_name]:
                problems += self._compare_contact(spec, contacts)
            for spec in [c for c in expect.get("absent_contacts", []) if c["tenant"] == tenant_name]:
                identity = self.tokens.resolve(spec["customer"])
                problems += [
                    f"tenant {tenant_name}: unexpected contact {_brief(c)}" for c in contacts if _mentions(c, identity)
                ]
        if len(chat_ids) != len(expect["chats"]):
            problems.append(f"{len(expect['chats'])} chats expected, {len(chat_ids)} distinct found")
        return problems

    def _compare_contact(self, spec: dict[str, Any], contacts: list[dict[str, Any]]) -> list[str]:
        identity = self.tokens.resolve(spec["customer"])
        where = f"contact {spec['tenant']}/{spec['customer']}"
        found = [c for c in contacts if _mentions(c, identity)]
        if "linked" in spec:
            other = self.tokens.resolve(spec["linked"])
            found = [c for c in contacts if _mentions(c, identity) or _mentions(c, other)]
            if len(found) == 1 and not _mentions(found[0], other):
                return [f"{where}: the contact does not know the customer's BSUID {other}"]
        if len(found) != 1:
            return [f"{where}: {len(found)} contacts {[_brief(c) for c in found]}"]
        checked = {k: v for k, v in spec.items() if k not in {"tenant", "customer", "linked"}}
        return [f"{where}: {p}" for p in _fields(found[0], checked)]


def _body_of(call: Any) -> dict[str, Any]:
    return call.body if isinstance(call.body, dict) else {}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _mentions(document: dict[str, Any], identity: str) -> bool:
    """The document names this customer: by wa_id for a phone number, anywhere for a BSUID (its field is new)."""
    if identity.isdigit():
        return document.get("wa_id") == identity
    return identity in json.dumps(document)


def _is_chat_of(chat: dict[str, Any], phone_number_id: str, identity: str) -> bool:
    return chat.get("phone_number_id") == phone_number_id and _mentions(chat, identity)


def _brief(document: dict[str, Any]) -> str:
    keys = ("chat_id", "contact_id", "phone_number_id", "wa_id", "display_name", "profile_name")
    return json.dumps({k: document[k] for k in keys if k in document}, ensure_ascii=False)


def _matches(actual: Any, expected: Any) -> bool:
    if isinstance(expected, str) and expected.startswith("*no-phone"):
        return actual in (None, "", "+")
    if isinstance(expected, str) and expected.startswith("*unknown:"):
        # A type we do not know: stored as Meta's name for it or as `unsupported`, never as something else.
        return actual in (expected.removeprefix("*unknown:"), "unsupported")
    if isinstance(expected, str) and _looks_like_instant(expected) and isinstance(actual, str):
        return _instant(actual) == _instant(expected)
    return bool(actual == expected)


def _looks_like_instant(value: str) -> bool:
    return bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value))


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _fields(actual: dict[str, Any], expected: dict[str, Any]) -> Iterator[str]:
    for name, want in expected.items():
        got = actual.get(name)
        if isinstance(want, dict) and isinstance(got, dict):
            yield from (f"{name}.{p}" for p in _fields(got, want))
        elif not _matches(got, want):
            yield f"{name} is {_short(got)}, expected {_short(want)}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 160 else f"{text[:100]}…({len(text)} characters)"


def _compare_chat(where: str, chat: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    expected = {k: spec[k] for k in ("unread_count", "display_name", "window")}
    last = dict(spec["last_message"])
    prefix_of = last.pop("preview_prefix_of", None)
    expected["last_message"] = last
    problems = [f"{where}: {p}" for p in _fields(chat, expected)]
    preview = (chat.get("last_message") or {}).get("preview")
    if prefix_of is not None:
        shown = (preview or "").removesuffix("…")
        if not shown or not prefix_of.startswith(shown):
            problems.append(f"{where}: preview {_short(preview)} is not the start of the last message")
    elif "preview" not in last and not preview:
        problems.append(f"{where}: no preview")
    return problems


def _compare_timeline(where: str, timeline: list[dict[str, Any]], expected: list[dict[str, Any]]) -> list[str]:
    messages = [m for m in timeline if m.get("kind", "message") == "message"]
    got = [m.get("wamid") for m in messages]
    want = [e["wamid"] for e in expected]
    if got != want:
        return [f"{where}: timeline is {[_brief_message(m) for m in messages]}, expected wamids {want}"]
    problems: list[str] = []
    for message, spec in zip(messages, expected, strict=True):
        problems += [f"{where} message {spec['wamid'][:18]}…: {p}" for p in _compare_message(message, spec)]
    return problems


def _brief_message(message: dict[str, Any]) -> str:
    return f"{message.get('type')}:{_short(message.get('content'))[:60]}"


def _compare_message(message: dict[str, Any], spec: dict[str, Any]) -> Iterator[str]:
    content = message.get("content") or {}
    for name in ("direction", "type", "status"):
        if name in spec and not _matches(message.get(name), spec[name]):
            yield f"{name} is {_short(message.get(name))}, expected {_short(spec[name])}"
    if "text" in spec and content.get("body") != spec["text"]:
        yield f"text is {_short(content.get('body'))}, expected {_short(spec['text'])}"
    if "reactions" in spec:
        emoji = [r.get("emoji") for r in message.get("reactions") or []]
        if emoji != spec["reactions"]:
            yield f"reactions are {emoji}, expected {spec['reactions']}"
    for flag in ("edited", "revoked"):  # the API says when: `edited_at`, `revoked_at` (null when never)
        shown = message.get(f"{flag}_at")
        if flag in spec and (shown is not None) != spec[flag]:
            yield f"{flag}_at is {shown!r}, expected {'a time' if spec[flag] else 'null'}"
    outside_content = json.dumps({k: v for k, v in message.items() if k != "content"}, ensure_ascii=False)
    for earlier in spec.get("history", []):
        if json.dumps(earlier, ensure_ascii=False)[1:-1] not in outside_content:
            yield f"the earlier text {_short(earlier)} is not kept in the message's history"
    if "hidden_text" in spec and json.dumps(spec["hidden_text"], ensure_ascii=False)[1:-1] in json.dumps(
        message, ensure_ascii=False
    ):
        yield f"the revoked text {_short(spec['hidden_text'])} is still shown"
    if "raw_contains" in spec and spec["raw_contains"] not in json.dumps(content, ensure_ascii=False):
        yield f"the raw object ({_short(spec['raw_contains'])}) is not kept"


async def replay(deployment: Deployment, name: str) -> None:
    sequence = load(name)
    async with httpx.AsyncClient(timeout=30) as http:
        runner = Runner(deployment, http, Tokens(deployment))
        await runner.run(sequence)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            problems = await runner.differences(sequence)
            if not problems or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert not problems, f"{name}: the end state differs\n  " + "\n  ".join(problems)


# --- the sequences -------------------------------------------------------------------------------------------------


async def test_duplicates_make_one_message_each(deployment: Deployment) -> None:
    await replay(deployment, "duplicates")


async def test_statuses_in_reverse_order_end_read(deployment: Deployment) -> None:
    async with deployment.statuses_only_from_webhooks("A1"):
        await replay(deployment, "statuses_reversed")


async def test_statuses_before_their_message_are_applied_when_it_appears(deployment: Deployment) -> None:
    async with deployment.statuses_only_from_webhooks("A1"):
        await replay(deployment, "statuses_before_their_message")


async def test_one_post_across_numbers_and_tenants(deployment: Deployment) -> None:
    await replay(deployment, "batch_across_numbers_and_tenants")


async def test_entries_of_another_apps_number_are_never_routed(deployment: Deployment) -> None:
    await replay(deployment, "foreign_entry")


async def test_reactions_added_replaced_and_removed(deployment: Deployment) -> None:
    await replay(deployment, "reactions")


async def test_long_unicode_bodies_are_stored_exactly(deployment: Deployment) -> None:
    await replay(deployment, "long_unicode_bodies")


async def test_edits_and_revokes_apply_to_the_original(deployment: Deployment) -> None:
    await replay(deployment, "edits_and_revokes")


async def test_unknown_types_are_customer_messages(deployment: Deployment) -> None:
    await replay(deployment, "unknown_types")


async def test_bsuid_only_customers(deployment: Deployment) -> None:
    await replay(deployment, "bsuid_only_customers")
