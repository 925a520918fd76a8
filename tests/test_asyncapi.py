"""The AsyncAPI document (waflow_common.events.asyncapi): committed as generated, complete, true to the services'
wiring, valid against the official AsyncAPI 3.0.0 JSON Schema, and served by every service."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import referencing
import referencing.jsonschema
from fastapi import FastAPI, Request
from waflow_common import kafka, topics
from waflow_common.events import ALL_EVENTS, asyncapi
from waflow_common.events.envelope import Envelope
from waflow_common.events.schemas import event_schemas, schema_name
from waflow_common.http import health_router
from waflow_common.secrets import generate_key
from waflow_common.tenants import TenantRegistry
from waflow_testing.fixtures import REPO

COMMITTED = REPO / "docs" / "asyncapi.json"

# The official meta-schema, from the npm package @asyncapi/specs (GitHub is not reachable from every build machine;
# the npm registry is). Pinned: the tarball's integrity as the registry publishes it, and the file's own sha256.
SPECS_VERSION = "6.11.1"
SPECS_TARBALL = f"https://registry.npmjs.org/@asyncapi/specs/-/specs-{SPECS_VERSION}.tgz"
SPECS_SHA512 = "A3WBLqAKGoJ2+6FWFtpjBlCQ1oFCcs4GxF7zsIGvNqp/klGUHjlA3aAcZ9XMMpLGE8zPeYDz2x9FmO6DSuKraQ=="
SCHEMA_MEMBER = "package/schemas/3.0.0.json"
SCHEMA_SHA256 = "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626"


def _cache_dir() -> Path:
    """Where the project caches what it downloads (deploy/local/infra.sh: WAFLOW_CACHE, else ~/.cache/waflow)."""
    return Path(os.environ.get("WAFLOW_CACHE") or Path.home() / ".cache" / "waflow")


def asyncapi_meta_schema() -> dict[str, Any]:
    """AsyncAPI 3.0.0's JSON Schema, downloaded once into the cache and checked against its pinned hashes."""
    path = _cache_dir() / f"asyncapi-specs-{SPECS_VERSION}" / "3.0.0.json"
    if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == SCHEMA_SHA256):
        try:
            tarball = httpx.get(SPECS_TARBALL, timeout=60, follow_redirects=True).raise_for_status().content
        except httpx.HTTPError as exc:
            pytest.fail(f"could not download {SPECS_TARBALL} (the npm registry must be reachable once): {exc!r}")
        assert base64.b64encode(hashlib.sha512(tarball).digest()).decode() == SPECS_SHA512, "tarball changed"
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            member = archive.extractfile(SCHEMA_MEMBER)
            assert member is not None
            content = member.read()
        assert hashlib.sha256(content).hexdigest() == SCHEMA_SHA256, f"{SCHEMA_MEMBER} changed"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_bytes(content)
        partial.replace(path)
    schema: dict[str, Any] = json.loads(path.read_text())
    return schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    """A draft-07 validator whose registry holds every definition of the bundled file under its `$id` (the file
    refers to them by absolute URI, e.g. http://asyncapi.com/definitions/3.0.0/channel.json)."""
    meta = asyncapi_meta_schema()
    draft7 = referencing.jsonschema.DRAFT7
    resources = [(meta["$id"], referencing.Resource.from_contents(meta, default_specification=draft7))]
    resources += [
        (uri, referencing.Resource.from_contents(schema, default_specification=draft7))
        for uri, schema in meta["definitions"].items()
    ]
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    return jsonschema.Draft7Validator(meta, registry=registry)


def _refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from _refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _refs(item, f"{where}/{i}")


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for token in ref.removeprefix("#/").split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or token not in node:
            raise KeyError(ref)
        node = node[token]
    return node


def problems(doc: dict[str, Any], validator: jsonschema.Draft7Validator) -> list[str]:
    """What makes `doc` an invalid AsyncAPI 3.0.0 document: the meta-schema's errors, local `$ref`s that point
    nowhere (the meta-schema only checks that a ref is a string), and operation messages outside their channel."""
    found = []
    for error in validator.iter_errors(doc):
        best = jsonschema.exceptions.best_match([error])  # the member of a oneOf that failed, not the oneOf
        found.append(f"{'/'.join(map(str, best.absolute_path))}: {best.message}")
    for where, ref in _refs(doc):
        if not ref.startswith("#/"):
            found.append(f"{where}: {ref} is not a local ref")
            continue
        try:
            _resolve(doc, ref)
        except KeyError:
            found.append(f"{where}: {ref} points nowhere")
    for name, operation in doc.get("operations", {}).items():
        channel = operation.get("channel", {}).get("$ref", "")
        for message in operation.get("messages", []):
            if not message.get("$ref", "").startswith(channel + "/messages/"):
                found.append(f"operations/{name}: {message} is not a message of {channel}")
    return found


def test_the_committed_document_is_the_generated_one() -> None:
    assert COMMITTED.is_file(), "run `make schemas`: docs/asyncapi.json is missing"
    assert json.loads(COMMITTED.read_text()) == asyncapi.build(), "run `make schemas`: docs/asyncapi.json is stale"


def test_the_document_is_valid_asyncapi_3(validator: jsonschema.Draft7Validator) -> None:
    doc = asyncapi.document()
    assert doc["asyncapi"] == "3.0.0"
    assert problems(doc, validator) == []


def test_validation_rejects_broken_documents(validator: jsonschema.Draft7Validator) -> None:
    dangling = asyncapi.document()
    dangling["operations"]["ingest.sends.wa.inbound.v1"]["channel"] = {"$ref": "#/channels/wa.inbound.v9"}
    assert any("#/channels/wa.inbound.v9 points nowhere" in p for p in problems(dangling, validator))

    asyncapi_2 = asyncapi.document()  # AsyncAPI 2's verbs are not 3.0's actions
    asyncapi_2["operations"]["ingest.sends.wa.inbound.v1"]["action"] = "publish"
    assert any("'publish' is not one of" in p for p in problems(asyncapi_2, validator))

    no_channel = asyncapi.document()
    del no_channel["operations"]["ingest.sends.wa.inbound.v1"]["channel"]
    assert not validator.is_valid(no_channel)

    foreign = asyncapi.document()
    foreign["operations"]["ingest.sends.wa.inbound.v1"]["messages"].append(
        {"$ref": "#/channels/contacts.v1/messages/contact.changed.v1"}
    )
    assert any("is not a message of #/channels/wa.inbound.v1" in p for p in problems(foreign, validator))

    bad_payload = asyncapi.document()  # a payload schema that is not a schema: the refs into draft-07 resolve
    bad_payload["components"]["schemas"]["ChatOpened"]["required"] = "chat_id"
    assert [list(e.absolute_path) for e in validator.iter_errors(bad_payload)] == [
        ["components", "schemas", "ChatOpened", "required"]
    ]


def _envelope_models() -> set[type[Envelope[Any]]]:
    """Every concrete event model of waflow_common: ALL_EVENTS, as schemas.py enumerates them, and any subclass
    of Envelope pinned to an event type that was left out of it."""
    found: set[type[Envelope[Any]]] = set(ALL_EVENTS)
    todo: list[type[Envelope[Any]]] = [Envelope]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("waflow_common.") and isinstance(sub.model_fields["event_type"].default, str):
                found.add(sub)
    return found


def test_every_event_model_is_a_message_of_its_topic() -> None:
    doc = asyncapi.document()
    committed = event_schemas()
    models = _envelope_models()
    assert models == set(ALL_EVENTS), "an event model is missing from waflow_common.events.ALL_EVENTS"
    for cls in models:
        message_id = asyncapi.message_id(cls)
        message = doc["components"]["messages"][message_id]
        assert doc["channels"][cls.topic]["messages"][message_id] == {"$ref": f"#/components/messages/{message_id}"}
        payload = _resolve(doc, message["payload"]["$ref"])
        schema = committed[schema_name(asyncapi.event_type_of(cls), asyncapi.schema_version_of(cls))]
        assert payload["properties"].keys() == schema["properties"].keys()
        assert payload["required"] == schema["required"]
        assert set(schema.get("$defs", {})) <= set(doc["components"]["schemas"])
    channel_names = {spec.name for spec in topics.all_topics()}
    assert set(doc["channels"]) == channel_names
    for name in channel_names:
        assert doc["channels"][name]["address"] == name
    for dlq in (n for n in channel_names if n.endswith(topics.DLQ_SUFFIX)):
        assert list(doc["channels"][dlq]["messages"]) == ["dead_letter"]
    payload = _resolve(doc, doc["components"]["messages"]["dead_letter"]["payload"]["$ref"])
    assert {"topic", "partition", "offset", "value", "error", "consumer"} <= payload["properties"].keys()


def _variants(event: Envelope[Any]) -> Iterator[Envelope[Any]]:
    """The example, and the example with each combination of customer ids its payload can carry (a customer has
    at least one)."""
    yield event
    fields = type(event.payload).model_fields
    for user_id in (None, "US.13491208655302741918") if "user_id" in fields else (None,):
        for wa_id in ("", "15550001111") if "wa_id" in fields else ("",):
            update = {k: v for k, v in {"user_id": user_id, "wa_id": wa_id}.items() if k in fields}
            if update and not any(update.values()):
                continue
            yield event.model_copy(update={"payload": event.payload.model_copy(update=update)})


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=asyncapi.message_id)
def test_the_key_and_headers_are_what_the_producer_sets(cls: type[Envelope[Any]]) -> None:
    doc = asyncapi.document()
    message = doc["components"]["messages"][asyncapi.message_id(cls)]
    template = message["bindings"]["kafka"]["key"]["description"].split("`")[1]
    sample = asyncapi.example(cls)
    assert sample is not None
    for event in _variants(sample):
        assert asyncapi.render_key(template, event) == event.key()
    base, own = message["headers"]["allOf"]
    assert base == {"$ref": "#/components/schemas/EventHeaders"}
    shared = doc["components"]["schemas"]["EventHeaders"]
    headers = sample.headers()
    assert set(headers) == set(shared["required"]) | set(own["required"])
    assert set(headers) <= set(shared["properties"]) | set(own["properties"])
    assert own["properties"]["event_type"] == {"const": headers["event_type"]}
    assert own["properties"]["schema_version"] == {"const": headers["schema_version"]}
    assert message["examples"][0]["headers"] == headers
    assert Envelope.headers(sample).keys() == set(asyncapi.ENVELOPE_HEADERS)


def _wiring(monkeypatch: pytest.MonkeyPatch) -> set[tuple[str, str, str | None]]:
    """(service, topic, group) for every subscription each service's create_app makes, and every tenants
    registry it builds (it reads tenants.v1 without a group). Building an app connects to nothing."""
    from waflow_contacts.main import create_app as contacts_app
    from waflow_conversation.main import create_app as conversation_app
    from waflow_ingest.main import create_app as ingest_app
    from waflow_outbound.main import create_app as outbound_app

    monkeypatch.setenv("WAFLOW_SECRETS_KEY", generate_key())
    seen: set[tuple[str, str, str | None]] = set()
    building = [""]  # the service whose app is being built

    def register(self: kafka.Consumer, topic: str, consume: Any, **options: Any) -> None:
        seen.add((building[0], topic, self.group_id))

    registry_init = TenantRegistry.__init__

    def new_registry(self: TenantRegistry, *args: Any, **kwargs: Any) -> None:
        seen.add((building[0], topics.TENANTS, None))
        registry_init(self, *args, **kwargs)

    monkeypatch.setattr(kafka.Consumer, "_register", register)
    monkeypatch.setattr(TenantRegistry, "__init__", new_registry)
    for service, create in (
        ("ingest", ingest_app),
        ("conversation", conversation_app),
        ("contacts", contacts_app),
        ("outbound", outbound_app),
    ):
        building[0] = service
        create()
    return seen


def test_the_readers_are_the_services_subscriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = {
        (reader.service, topic, reader.group)
        for topic, readers in asyncapi.READERS.items()
        for reader in readers
        if reader.service != "waflow-admin"
    }
    assert _wiring(monkeypatch) == declared


_NOT_PRODUCING = {"isinstance", "issubclass", "TypeAdapter", "cast"}


def _events_built(source: Path, names: set[str]) -> set[str]:
    """The event classes a module builds or hands to something that builds them: `X.new(...)`, `f(X)`,
    `cls = X if ... else Y`; not `isinstance(e, X)`, `TypeAdapter(X)`, `X.model_validate(...)` or annotations."""
    tree = ast.parse(source.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        annotations: list[ast.AST | None] = []
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
            annotations += [a.annotation for a in (*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _NOT_PRODUCING:
            annotations += node.args
        elif isinstance(node, ast.Attribute) and node.attr != "new":
            annotations.append(node.value)
        for annotation in annotations:
            if annotation is not None:
                skip.update(id(n) for n in ast.walk(annotation))
    return {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and node.id in names and isinstance(node.ctx, ast.Load) and id(node) not in skip
    }


def test_each_event_is_built_by_its_topics_producer_only() -> None:
    names = {cls.__name__: cls for cls in ALL_EVENTS}
    sources = {
        service: sorted((REPO / "services" / service / "src").rglob("*.py"))
        for service in ("ingest", "conversation", "contacts", "outbound")
    }
    sources["waflow-admin"] = [REPO / "libs" / "common" / "src" / "waflow_common" / "admin.py"]
    builders: dict[str, set[str]] = {name: set() for name in names}
    for service, files in sources.items():
        for source in files:
            for name in _events_built(source, set(names)):
                builders[name].add(service)
    expected = {name: {asyncapi.PRODUCERS[cls.topic]} for name, cls in names.items()}
    assert builders == expected


async def test_the_shared_router_serves_the_document_and_its_page() -> None:
    async def ready(request: Request) -> dict[str, bool]:
        return {}

    app = FastAPI()
    app.include_router(health_router(ready))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        document = await client.get("/asyncapi.json")
        page = await client.get("/asyncapi")
    assert document.status_code == 200
    assert document.headers["content-type"] == "application/json"
    assert document.json() == asyncapi.build()
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text
    assert "http://" not in page.text
    assert "https://" not in page.text
    for spec in topics.all_topics():
        assert f"<code>{spec.name}</code>" in page.text
    assert "message.received v1" in page.text


async def test_a_service_answers_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from waflow_conversation.main import create_app

    monkeypatch.setenv("WAFLOW_SECRETS_KEY", generate_key())
    app = create_app()  # no lifespan: nothing connects to Kafka or the database
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/asyncapi.json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "waflow"
    assert "/asyncapi.json" in app.openapi()["paths"]
