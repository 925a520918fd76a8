"""Hostile deliveries through the real HTTP receiver and the real Kafka: another app's secret, wrong types,
huge bodies, signature attacks. Never a 5xx; what is authentic is archived; what cannot be read is dead-lettered."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from waflow_common import topics
from waflow_common.admin import Admin, AppFile
from waflow_common.settings import CommonSettings
from waflow_ingest.main import IngestSettings, create_app
from waflow_ingest.signature import sign
from waflow_testing.fixtures import (
    SeededTenant,
    TopicReader,
    eventually,
    put_test_tenant,
    serve,
    settings_for,
)

from .hostile import compact, nested, replaced, sample, wrong_type_grid

pytestmark = pytest.mark.integration

# Tenant C is on a Meta app of its own; tenants A and B share the test app.
OTHER_APP = SeededTenant(
    tenant_id="tenant-c",
    api_key="wf_test_key_c",
    app_id="700100200999",
    app_secret="other-app-secret-for-tests",
    verify_token="other-verify-token",
    phone_number_id="118273645599999",
    waba_id="104882910399999",
    display_phone_number="15550005555",
    access_token="access-token-tenant-c",
)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def tenant_c(admin: Admin, tenants: tuple[SeededTenant, SeededTenant]) -> SeededTenant:
    c = OTHER_APP
    await admin.put_app(
        AppFile(app_id=c.app_id, name="other app", app_secret=c.app_secret, verify_token=c.verify_token)
    )
    await eventually(lambda: admin.registry.app(c.app_id), what="the other app in the registry")
    await put_test_tenant(admin, c)
    await eventually(lambda: admin.registry.tenant_for_number(c.phone_number_id), what="tenant c in the registry")
    return c


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def ingest_url(settings_env: dict[str, str], tenant_c: SeededTenant) -> AsyncIterator[str]:
    async with serve(create_app(settings_for(IngestSettings, settings_env))) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session")
async def inbound(topics_ready: CommonSettings) -> AsyncIterator[TopicReader]:
    async with TopicReader(topics_ready, topics.INBOUND) as reader:
        yield reader


@pytest_asyncio.fixture(loop_scope="session")
async def archive(topics_ready: CommonSettings) -> AsyncIterator[TopicReader]:
    async with TopicReader(topics_ready, topics.WEBHOOKS) as reader:
        yield reader


@pytest_asyncio.fixture(loop_scope="session")
async def dead_letters(topics_ready: CommonSettings) -> AsyncIterator[TopicReader]:
    async with TopicReader(topics_ready, topics.dlq(topics.INBOUND)) as reader:
        yield reader


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


async def deliver(
    http: httpx.AsyncClient,
    url: str,
    app: SeededTenant,
    body: bytes,
    corr: str,
    *,
    signature: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> httpx.Response:
    signed = signature if signature is not None else sign(app.app_secret, body)
    # As bytes: a header with a non-ASCII character reaches the server as sent.
    sent: list[tuple[bytes, bytes]] = [
        (b"Content-Type", b"application/json"),
        (b"X-Hub-Signature-256", signed.encode("utf-8")),
        (b"X-Correlation-Id", corr.encode()),
        *((k.encode(), v.encode()) for k, v in headers or []),
    ]
    return await http.post(f"{url}/webhooks/whatsapp/{app.app_id}", content=body, headers=sent)


def of(corr: str) -> Any:
    return lambda value: value.get("correlation_id") == corr


def letter_of(corr: str) -> Any:
    return lambda value: value.get("headers", {}).get("correlation_id") == corr


def for_number(name: str, number: str) -> dict[str, Any]:
    body: dict[str, Any] = sample(name)
    for entry in body["entry"]:
        for change in entry["changes"]:
            change["value"]["metadata"]["phone_number_id"] = number
    return body


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


# --- 1. one app's secret reaches only that app's tenants ----------------------------------------------------------


async def test_a_delivery_signed_by_one_app_never_reaches_another_apps_tenant(
    ingest_url: str,
    http: httpx.AsyncClient,
    inbound: TopicReader,
    archive: TopicReader,
    dead_letters: TopicReader,
    tenants: tuple[SeededTenant, SeededTenant],
    tenant_c: SeededTenant,
) -> None:
    a = tenants[0]
    before = metric((await http.get(f"{ingest_url}/metrics")).text, "waflow_ingest_foreign_entries_total")
    # App A's secret, tenant C's number (C is under the other app): archived and counted, never routed.
    forged, corr = compact(for_number("text_message.json", tenant_c.phone_number_id)), str(uuid.uuid4())
    r = await deliver(http, ingest_url, a, forged, corr)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "accepted", "events": 0, "dead_lettered": 0, "unrouted": 0, "foreign": 1}
    (raw,) = await archive.read(1, where=of(corr))
    assert raw["payload"]["body"] == forged.decode()
    assert raw["payload"]["foreign_phone_number_ids"] == [tenant_c.phone_number_id]
    assert raw["payload"]["tenant_ids"] == []
    after = metric((await http.get(f"{ingest_url}/metrics")).text, "waflow_ingest_foreign_entries_total")
    assert after == before + 1

    # The other way round: the other app's secret, tenant A's number.
    reverse, corr_reverse = compact(sample("text_message.json")), str(uuid.uuid4())
    r = await deliver(http, ingest_url, tenant_c, reverse, corr_reverse)
    assert r.json()["foreign"] == 1
    assert r.json()["events"] == 0

    # The same body signed by the right app is routed to its tenant.
    genuine, corr_genuine = forged, str(uuid.uuid4())
    r = await deliver(http, ingest_url, tenant_c, genuine, corr_genuine)
    assert r.json()["events"] == 1
    (event,) = await inbound.read(1, where=of(corr_genuine))
    assert event["tenant_id"] == tenant_c.tenant_id
    # Everything the refused deliveries might have published would be there by now.
    assert await inbound.read(1, timeout=1.0, where=lambda v: v.get("correlation_id") in (corr, corr_reverse)) == []
    assert await dead_letters.read(1, timeout=0.5, where=letter_of(corr)) == []


async def test_a_batch_across_apps_routes_only_the_signing_apps_entries(
    ingest_url: str,
    http: httpx.AsyncClient,
    inbound: TopicReader,
    archive: TopicReader,
    tenants: tuple[SeededTenant, SeededTenant],
    tenant_c: SeededTenant,
) -> None:
    ours = for_number("text_message.json", tenants[1].phone_number_id)
    theirs = for_number("status_read.json", tenant_c.phone_number_id)
    body = {"object": "whatsapp_business_account", "entry": ours["entry"] + theirs["entry"]}
    corr = str(uuid.uuid4())
    r = await deliver(http, ingest_url, tenants[0], compact(body), corr)
    assert r.json() == {"status": "accepted", "events": 1, "dead_lettered": 0, "unrouted": 0, "foreign": 1}
    events = await inbound.read(2, timeout=3.0, where=of(corr))
    assert [e["tenant_id"] for e in events] == [tenants[1].tenant_id]
    (raw,) = await archive.read(1, where=of(corr))
    assert raw["payload"]["tenant_ids"] == [tenants[1].tenant_id]
    assert raw["payload"]["foreign_phone_number_ids"] == [tenant_c.phone_number_id]


# --- 10. wrong types, huge values: never a 5xx, archived and dead-lettered -------------------------------------


async def test_wrong_types_in_every_field_never_answer_5xx(
    ingest_url: str, http: httpx.AsyncClient, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    """Each field of a text message and a status replaced by each JSON type, or removed (the reported fuzzing
    found 14 answers of 500 in 150)."""
    answers: dict[int, int] = {}
    server_errors = []
    for name in ("text_message.json", "status_read.json"):
        for label, body in wrong_type_grid(name):
            r = await deliver(http, ingest_url, tenants[0], compact(body), str(uuid.uuid4()))
            answers[r.status_code] = answers.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                server_errors.append(label)
            else:
                assert r.status_code == 200, (label, r.text)
                assert set(r.json()) == {"status", "events", "dead_lettered", "unrouted", "foreign"}
    assert server_errors == []
    assert sum(answers.values()) > 150


@pytest.mark.parametrize(
    ("label", "body", "reason"),
    [
        ("changes is a number", replaced(sample("text_message.json"), ("entry", 0, "changes"), 5), "entry"),
        ("time is text", replaced(sample("template_status_rejected.json"), ("entry", 0, "time"), "abc"), "entry"),
        (
            "metadata is text",
            replaced(sample("text_message.json"), ("entry", 0, "changes", 0, "value", "metadata"), "118273645501928"),
            "value.metadata",
        ),
        (
            "from is null",
            replaced(sample("text_message.json"), ("entry", 0, "changes", 0, "value", "messages", 0, "from"), None),
            "message",
        ),
        (
            "from is true",
            replaced(sample("text_message.json"), ("entry", 0, "changes", 0, "value", "messages", 0, "from"), True),
            "message",
        ),
        (
            "a 2 MB text",
            replaced(
                sample("text_message.json"),
                ("entry", 0, "changes", 0, "value", "messages", 0, "text", "body"),
                "x" * (2 * 1024 * 1024),
            ),
            "message",
        ),
        (
            "nested 300 deep",
            replaced(sample("text_message.json"), ("entry", 0, "changes", 0, "value", "messages", 0), nested(300)),
            "message",
        ),
        ("not a webhook", {"hello": "world"}, "body is not a WhatsApp webhook"),
        ("another Meta product", {"object": "page", "entry": []}, "body is not a WhatsApp webhook"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "",
)
async def test_an_authentic_body_that_cannot_be_read_is_archived_and_dead_lettered_with_200(
    label: str,
    body: Any,
    reason: str,
    ingest_url: str,
    http: httpx.AsyncClient,
    inbound: TopicReader,
    archive: TopicReader,
    dead_letters: TopicReader,
    tenants: tuple[SeededTenant, SeededTenant],
) -> None:
    raw, corr = compact(body), str(uuid.uuid4())
    r = await deliver(http, ingest_url, tenants[0], raw, corr)
    assert r.status_code == 200, r.text
    assert r.json()["dead_lettered"] == 1
    assert r.json()["events"] == 0
    (archived,) = await archive.read(1, where=of(corr))
    assert archived["payload"]["body"] == raw.decode()
    (letter,) = await dead_letters.read(1, where=letter_of(corr))
    assert letter["error"].startswith(reason)
    assert letter["headers"]["archive_event_id"] == archived["event_id"]
    assert letter["consumer"] == "ingest"
    assert await inbound.read(1, timeout=1.0, where=of(corr)) == []


async def test_hostile_bodies_at_random_never_answer_5xx(
    ingest_url: str, http: httpx.AsyncClient, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    """Seeded random mutations over every sample: deep nesting, huge strings, bytes cut or changed, signed."""
    rng = random.Random(11)
    names = ["text_message.json", "multi_entry_batch.json", "bsuid_only_message.json"]
    statuses: set[int] = set()
    for _ in range(60):
        raw = compact(sample(rng.choice(names)))
        match rng.randrange(4):
            case 0:
                raw = raw[: rng.randrange(len(raw))]
            case 1:
                at = rng.randrange(len(raw))
                raw = raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1 :]
            case 2:
                levels = rng.randrange(100, 1100)
                raw = b'{"extra":' + b"[" * levels + b"]" * levels + b"," + raw[1:]
            case _:
                raw = raw.replace(b'"Maria Lopez"', b'"' + b"\\u00e9" * rng.randrange(1, 400_000) + b'"')
        r = await deliver(http, ingest_url, tenants[0], raw, str(uuid.uuid4()))
        statuses.add(r.status_code)
        assert r.status_code in (200, 400), r.text
        assert ("error" in r.json()) == (r.status_code == 400)
    assert 200 in statuses


async def test_bsuid_only_customers_arrive_with_distinct_keys(
    ingest_url: str, http: httpx.AsyncClient, inbound: TopicReader, tenants: tuple[SeededTenant, SeededTenant]
) -> None:
    body = sample("bsuid_only_message.json")
    value = body["entry"][0]["changes"][0]["value"]
    other = {**value["messages"][0], "from_user_id": "US.77712345678901234567", "id": "wamid.OTHERbsuid0="}
    value["messages"].append(other)
    corr = str(uuid.uuid4())
    r = await deliver(http, ingest_url, tenants[0], compact(body), corr)
    assert r.json()["events"] == 2
    records = await inbound.read_records(2, where=of(corr))
    assert sorted(r.key or "" for r in records) == [
        f"{tenants[0].tenant_id}:US.13491208655302741918",
        f"{tenants[0].tenant_id}:US.77712345678901234567",
    ]
    assert {r.value["payload"]["wa_id"] for r in records} == {""}


# --- signature attacks: all refused with 401, nothing archived ----------------------------------------------------

BODY = compact(sample("text_message.json"))
RESERIALISED = json.dumps(json.loads(BODY), ensure_ascii=False, indent=1).encode()  # same content, other bytes
GOOD = sign("app-secret-for-tests", BODY)
ATTACKS: dict[str, tuple[bytes, str, list[tuple[str, str]]]] = {
    "wrong secret": (BODY, sign("not-the-secret", BODY), []),
    "another app's secret": (BODY, sign(OTHER_APP.app_secret, BODY), []),
    "truncated signature": (BODY, GOOD[:-1], []),
    "signature of the prefix only": (BODY, "sha256=", []),
    "body changed after signing": (BODY.replace(b"4471", b"4472"), GOOD, []),
    "re-serialised JSON": (RESERIALISED, GOOD, []),
    "missing prefix": (BODY, GOOD.removeprefix("sha256="), []),
    "duplicate prefix": (BODY, "sha256=" + GOOD, []),
    "sha1 prefix": (BODY, GOOD.replace("sha256=", "sha1="), []),
    "non-ASCII signature": (BODY, GOOD[:-1] + "\u00e9", []),
    "empty signature": (BODY, "", []),
    "two signature headers": (BODY, GOOD, [("X-Hub-Signature-256", sign("not-the-secret", BODY))]),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_signature_attacks_are_refused_with_401(
    attack: str,
    ingest_url: str,
    http: httpx.AsyncClient,
    archive: TopicReader,
    inbound: TopicReader,
    tenants: tuple[SeededTenant, SeededTenant],
) -> None:
    body, signature, extra = ATTACKS[attack]
    corr = str(uuid.uuid4())
    r = await deliver(http, ingest_url, tenants[0], body, corr, signature=signature, headers=extra)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "bad_signature"
    marker = str(uuid.uuid4())
    assert (await deliver(http, ingest_url, tenants[0], BODY, marker)).status_code == 200
    assert len(await archive.read(1, where=of(marker))) == 1
    assert await archive.read(1, timeout=0.5, where=of(corr)) == []
    assert await inbound.read(1, timeout=0.5, where=of(corr)) == []
