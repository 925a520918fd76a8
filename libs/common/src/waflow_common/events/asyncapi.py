"""waflow's events as one AsyncAPI 3.0.0 document, built from the code: the topics, the event models, the keys.

Other systems (and their tooling: viewers, code generators, contract tests) learn what is on each topic from it,
without reading Python. Everything the code already says comes from the code: one channel per topic of
`topics.all_topics()` with its partitions and configuration, one message per model of `ALL_EVENTS` with the JSON
Schema `schemas.event_schemas()` commits under docs/events/ (its `$defs` moved into `components/schemas`), the
headers `Envelope.headers()` sets, the Kafka key as `key()` forms it, and the example in `events/examples/`. What
the code says only inside the services (who produces and who consumes each topic, in which consumer group) is the
table below, which tests/test_asyncapi.py checks against the services' own wiring.

`make schemas` writes it to docs/asyncapi.json; every service serves it at `GET /asyncapi.json` (and a readable
page at `GET /asyncapi`).
"""

from __future__ import annotations

import copy
import html
import json
import sys
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path
from typing import Any

from waflow_common import topics
from waflow_common.events import ALL_EVENTS
from waflow_common.events.dead_letter import DeadLetter
from waflow_common.events.envelope import Envelope
from waflow_common.events.schemas import Schema, event_schemas, schema_name

Document = dict[str, Any]

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
EXAMPLES = files("waflow_common.events") / "examples"
PREFIX_NOTE = (
    "A deployment started with `WAFLOW_TOPIC_PREFIX` puts that prefix before every topic name and every consumer "
    "group id (several stacks on one broker); the addresses here are without it."
)


@dataclass(frozen=True)
class Reader:
    """A service that consumes a topic: in a consumer group of its own, or (group None) every instance reads the
    whole topic itself, as the tenants registry and waflow-admin's tools do."""

    service: str
    group: str | None
    why: str


# Each topic has one producing service; the messages it sends are the models whose `topic` is that topic.
PRODUCERS: dict[str, str] = {
    topics.WEBHOOKS: "ingest",
    topics.INBOUND: "ingest",
    topics.CONTACTS: "contacts",
    topics.OUTBOUND_COMMANDS: "conversation",
    topics.OUTBOUND_RESULTS: "outbound",
    topics.CONVERSATION: "conversation",
    topics.TENANTS: "waflow-admin",
}

READERS: dict[str, tuple[Reader, ...]] = {
    topics.WEBHOOKS: (Reader("waflow-admin", None, "`waflow-admin replay` sends archived deliveries to ingest again"),),
    topics.INBOUND: (
        Reader("conversation", "conversation", "chats, messages and statuses, the 24-hour window"),
        Reader("contacts", "contacts", "a contact for every customer who writes"),
        Reader("outbound", "waflow-outbound-inbound", "the window per customer, template updates"),
    ),
    topics.CONTACTS: (
        Reader("conversation", "conversation", "names and the blacklist on chats"),
        Reader("outbound", "waflow-outbound-contacts", "the blacklist: a deleted contact is never messaged"),
        Reader("waflow-admin", None, "`waflow-admin rebuild` applies it to those services' projections again"),
    ),
    topics.OUTBOUND_COMMANDS: (Reader("outbound", "waflow-outbound-commands", "sends each request once"),),
    topics.OUTBOUND_RESULTS: (Reader("conversation", "conversation", "what became of each message sent"),),
    topics.CONVERSATION: (
        Reader("contacts", "contacts-conversation", "a contact for every chat an agent opens"),
        Reader("outbound", "waflow-outbound-conversation", "read receipts on WhatsApp"),
    ),
    topics.TENANTS: tuple(
        Reader(service, None, "the apps and tenants registry, read whole at start and followed live")
        for service in ("ingest", "conversation", "contacts", "outbound")
    ),
}

# Dead letters: every consumer group writes what it gives up on to `<topic>.dlq`; ingest also writes there the
# parts of a webhook delivery it could not read. waflow-admin lists, shows, redrives and purges them.
DLQ_EXTRA_PRODUCERS: dict[str, tuple[str, ...]] = {topics.INBOUND: ("ingest",)}
DLQ_READERS = (Reader("waflow-admin", None, "`waflow-admin dlq list|show|redrive|purge`"),)

# Kafka keys that are not the envelope's default (`Envelope.key`), as templates `render_key` forms: `{a.b}` is a
# field, `{a|b}` the first of them that is not empty.
KEY_TEMPLATES: dict[str, tuple[str, str]] = {
    "webhook.received": ("{payload.app_id}", "the Meta app that signed the delivery"),
    "contact.changed": (
        "{tenant_id}:{payload.wa_id|payload.user_id}",
        "the tenant and the customer, by number first: contacts.v1 is compacted, so a contact's key must not "
        "change when a BSUID is linked to a customer known by phone",
    ),
    "app.upserted": ("app:{payload.app_id}", "one record per app on the compacted topic"),
    "tenant.upserted": ("tenant:{payload.tenant_id}", "one record per tenant on the compacted topic"),
}

# Every header a producer sets; a new one must be described here (`document()` fails otherwise).
HEADERS: dict[str, str] = {
    "event_type": "the envelope's event_type: filter without parsing the value",
    "schema_version": "the envelope's schema_version, as a decimal string",
    "tenant_id": "the envelope's tenant_id; empty for platform-level events (apps, raw webhook deliveries)",
    "event_id": "the envelope's event_id (a UUID): drop a repeat by it",
    "tenant_ids": "the tenants the delivery was routed to, comma-separated (a per-tenant replay filters by it)",
    "phone_number_ids": "the business numbers in the delivery, comma-separated",
}
ENVELOPE_HEADERS = ("event_type", "schema_version", "tenant_id", "event_id")  # what Envelope.headers() sets
OPTIONAL_HEADERS: dict[str, str] = {
    "correlation_id": "set by the producers that publish through FastStream; the envelope's correlation_id is the "
    "one to follow",
    "content-type": "set (often empty) by the producers that publish through FastStream; values are always JSON",
    "dlq_redriven_from": "`partition:offset` in the dead-letter topic, on a record `waflow-admin dlq redrive` put back",
}
DLQ_HEADERS: dict[str, str] = {
    "dlq_error_type": "the kind of failure, e.g. ValidationError",
    "dlq_consumer": "the consumer group that gave up (absent on ingest's dead letters: their `consumer` is ingest)",
}


def event_type_of(cls: type[Envelope[Any]]) -> str:
    event_type: str = cls.model_fields["event_type"].default
    return event_type


def schema_version_of(cls: type[Envelope[Any]]) -> int:
    schema_version: int = cls.model_fields["schema_version"].default
    return schema_version


def message_id(cls: type[Envelope[Any]]) -> str:
    return f"{event_type_of(cls)}.v{schema_version_of(cls)}"


def render_key(template: str, event: Envelope[Any]) -> str:
    """The key `template` forms for `event`; tests compare it with what `event.key()` returns."""
    out, rest = [], template
    while "{" in rest:
        before, _, rest = rest.partition("{")
        spec, _, rest = rest.partition("}")
        out.append(before)
        values = (_field(event, path) for path in spec.split("|"))
        out.append(next((str(v) for v in values if v), ""))
    return "".join(out) + rest


def _field(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def key_template(cls: type[Envelope[Any]]) -> tuple[str, str]:
    """How the class forms its Kafka key: a template for `render_key`, and why."""
    event_type = event_type_of(cls)
    if cls.key is Envelope.key:
        payload = cls.model_fields["payload"].annotation
        fields = getattr(payload, "model_fields", {})
        if "user_id" in fields and "wa_id" in fields:
            return (
                "{tenant_id}:{payload.user_id|payload.wa_id}",
                "the tenant and the customer (the BSUID when known, else the wa_id): everything about one customer "
                "of one tenant is on one partition, in order",
            )
        if "wa_id" in fields:
            return "{tenant_id}:{payload.wa_id}", "the tenant and the customer's number"
        return "{tenant_id}", "the tenant"
    if event_type not in KEY_TEMPLATES:
        raise KeyError(f"{cls.__name__} forms its own key: describe it in KEY_TEMPLATES")
    return KEY_TEMPLATES[event_type]


def example(cls: type[Envelope[Any]]) -> Envelope[Any] | None:
    """The event of `events/examples/<event_type>.json`, if it is of this class's version."""
    path = EXAMPLES / f"{event_type_of(cls)}.json"
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return cls.model_validate(raw) if raw.get("schema_version") == schema_version_of(cls) else None


def _components_schema(schema: Any, names: dict[str, str]) -> Any:
    """A pydantic JSON Schema as an AsyncAPI Schema: `$defs` refs point into components/schemas, and pydantic's
    OpenAPI-style `discriminator` object (AsyncAPI's is a plain property name with another meaning) is kept as
    `x-discriminator`."""
    if isinstance(schema, list):
        return [_components_schema(item, names) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$defs":
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            out[key] = "#/components/schemas/" + names[value.removeprefix("#/$defs/")]
        elif key == "discriminator" and isinstance(value, dict):
            out["x-discriminator"] = _components_schema(
                {**value, "mapping": {k: _ref(v, names) for k, v in value.get("mapping", {}).items()}}, names
            )
        else:
            out[key] = _components_schema(value, names)
    return out


def _ref(ref: str, names: dict[str, str]) -> str:
    return "#/components/schemas/" + names[ref.removeprefix("#/$defs/")] if ref.startswith("#/$defs/") else ref


def _add_schema(components: dict[str, Any], name: str, schema: Any, source: str) -> None:
    if name in components and components[name] != schema:
        raise ValueError(f"two different schemas are named {name} (the last in {source}): rename one model")
    components[name] = schema


def _add_model_schema(components: dict[str, Any], name: str, schema: dict[str, Any], source: str) -> str:
    """Puts the schema and its `$defs` into components/schemas; returns the ref to it."""
    names = {def_name: def_name for def_name in schema.get("$defs", {})}
    for def_name, definition in schema.get("$defs", {}).items():
        _add_schema(components, def_name, _components_schema(definition, names), source)
    _add_schema(components, name, _components_schema(schema, names), source)
    return f"#/components/schemas/{name}"


def _headers_schema(names: list[str], pinned: dict[str, str]) -> dict[str, Any]:
    """The envelope's headers (a shared schema) with this message's values pinned, and any headers of its own."""
    own = {name: {"type": "string", "description": HEADERS[name]} for name in names if name not in ENVELOPE_HEADERS}
    properties = {name: {"const": value} for name, value in pinned.items()} | own
    return {
        "allOf": [
            {"$ref": "#/components/schemas/EventHeaders"},
            {"properties": properties, "required": list(pinned) + list(own)},
        ]
    }


def _event_headers_schema() -> dict[str, Any]:
    headers = {name: HEADERS[name] for name in ENVELOPE_HEADERS} | OPTIONAL_HEADERS
    return {
        "title": "EventHeaders",
        "description": "The record headers of every event (UTF-8 strings).",
        "type": "object",
        "properties": {name: {"type": "string", "description": text} for name, text in headers.items()},
        "required": list(ENVELOPE_HEADERS),
    }


def _header_names(cls: type[Envelope[Any]], sample: Envelope[Any] | None) -> list[str]:
    """The headers the class's producer sets, as its example shows (the envelope's own without one)."""
    if sample is None:
        if cls.headers is not Envelope.headers:
            raise ValueError(f"{cls.__name__} sets headers of its own: give it an example in events/examples/")
        names = list(ENVELOPE_HEADERS)
    else:
        names = list(sample.headers())
    unknown = [name for name in names if name not in HEADERS]
    if unknown:
        raise KeyError(f"{cls.__name__} sets headers {unknown}: describe them in HEADERS")
    return names


def _event_message(cls: type[Envelope[Any]], schemas: dict[str, Any], committed: dict[str, Schema]) -> dict[str, Any]:
    event_type, schema_version = event_type_of(cls), schema_version_of(cls)
    file_name = schema_name(event_type, schema_version)
    payload_ref = _add_model_schema(schemas, cls.__name__, committed[file_name], file_name)
    template, why = key_template(cls)
    sample = example(cls)
    header_names = _header_names(cls, sample)
    key_schema: dict[str, Any] = {"type": "string", "description": f"`{template}`: {why}"}
    payload_model = cls.model_fields["payload"].annotation
    message: dict[str, Any] = {
        "name": event_type,
        "title": f"{event_type} v{schema_version}",
        "summary": _first_line(getattr(payload_model, "__doc__", None)) or f"{event_type} on {cls.topic}",
        "description": f"The envelope with this event's payload; its JSON Schema is docs/events/{file_name}.",
        "contentType": "application/json",
        "headers": _headers_schema(header_names, {"event_type": event_type, "schema_version": str(schema_version)}),
        "payload": {"$ref": payload_ref},
        "bindings": {"kafka": {"key": key_schema, "bindingVersion": KAFKA_BINDING_VERSION}},
    }
    if sample is not None:
        key_schema["examples"] = [sample.key()]
        message["examples"] = [
            {"name": "example", "headers": sample.headers(), "payload": json.loads(sample.to_json())},
        ]
    return message


def _dead_letter_message(schemas: dict[str, Any]) -> dict[str, Any]:
    payload_ref = _add_model_schema(schemas, "DeadLetter", DeadLetter.model_json_schema(mode="validation"), "dlq")
    return {
        "name": "dead_letter",
        "title": "dead letter",
        "summary": _first_line(sys.modules[DeadLetter.__module__].__doc__),
        "description": "Not an envelope: where the record came from, why it failed, and its value as it was. "
        "Headers are the original record's, plus the two below.",
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "properties": {name: {"type": "string", "description": text} for name, text in DLQ_HEADERS.items()},
            "required": ["dlq_error_type"],
        },
        "payload": {"$ref": payload_ref},
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "the original record's key (ingest's dead letters: the tenant_id, empty if none)",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


TOMBSTONE_MESSAGE: dict[str, Any] = {
    "name": "tombstone",
    "title": "tombstone",
    "summary": "A null value: the app or tenant of its key is deleted (compaction removes the key later).",
    "payload": {"type": "null"},
    "bindings": {
        "kafka": {
            "key": {"type": "string", "description": "`app:{app_id}` or `tenant:{tenant_id}`"},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    },
}


def _first_line(doc: str | None) -> str:
    return " ".join(doc.strip().split("\n\n")[0].split()) if doc else ""


def _topic_doc(topic: str) -> str:
    """The first paragraph of the docstring of the module that defines the topic's events."""
    for cls in ALL_EVENTS:
        if cls.topic == topic:
            return _first_line(sys.modules[cls.__module__].__doc__)
    return ""


def _channel(spec: topics.TopicSpec, messages: list[str], description: str) -> dict[str, Any]:
    configuration: dict[str, Any] = {"cleanup.policy": ["compact" if spec.compacted else "delete"]}
    if spec.max_message_bytes is not None:
        configuration["max.message.bytes"] = spec.max_message_bytes
    return {
        "address": spec.name,
        "title": spec.name,
        "description": description,
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
        "bindings": {
            "kafka": {
                "partitions": spec.partitions,
                "topicConfiguration": configuration,
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _operation(action: str, channel: str, messages: list[str], summary: str, group: str | None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{_pointer(channel)}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{_pointer(channel)}/messages/{_pointer(m)}"} for m in messages],
    }
    if action == "receive":
        group_id: dict[str, Any] = (
            {"type": "string", "enum": [group], "description": "prefixed with WAFLOW_TOPIC_PREFIX"}
            if group
            else {"type": "null", "description": "no consumer group: every instance reads the whole topic"}
        )
        operation["bindings"] = {"kafka": {"groupId": group_id, "bindingVersion": KAFKA_BINDING_VERSION}}
    return operation


def _pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


@cache
def document_json() -> bytes:
    """The document as served (built once per process, on first use)."""
    return json.dumps(build()).encode()


def document() -> Document:
    """The document (a fresh copy each call)."""
    doc: Document = json.loads(document_json())
    return doc


@cache
def page() -> str:
    return render_html(document())


def build() -> Document:
    """Builds the AsyncAPI document from the topics, the event models and the table of readers above."""
    schemas: dict[str, Any] = {"EventHeaders": _event_headers_schema()}
    messages: dict[str, Any] = {}
    by_topic: dict[str, list[str]] = {spec.name: [] for spec in topics.all_topics()}
    committed = event_schemas()  # what docs/events/ holds
    for cls in ALL_EVENTS:
        if cls.topic not in by_topic:
            raise KeyError(f"{cls.__name__} is on {cls.topic}, which is not a topic of topics.py")
        messages[message_id(cls)] = _event_message(cls, schemas, committed)
        by_topic[cls.topic].append(message_id(cls))
    messages["tombstone"] = copy.deepcopy(TOMBSTONE_MESSAGE)
    by_topic[topics.TENANTS].append("tombstone")
    messages["dead_letter"] = _dead_letter_message(schemas)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in topics.all_topics():
        name = spec.name
        if name.endswith(topics.DLQ_SUFFIX):
            base = name.removesuffix(topics.DLQ_SUFFIX)
            by_topic[name] = ["dead_letter"]
            senders = [r.service for r in READERS.get(base, ()) if r.group] + list(DLQ_EXTRA_PRODUCERS.get(base, ()))
            description = (
                f"What the consumers of {base} gave up on, with the reason; `waflow-admin dlq redrive {base}` puts "
                "letters back on it with their original key and headers."
                if senders
                else f"Created beside {base} like every consumed topic's; nothing is written to it: the readers of "
                f"{base} read it whole at every start, so they count and skip a record they cannot read."
            )
            readers: tuple[Reader, ...] = DLQ_READERS
        else:
            description = _topic_doc(name)
            senders = [PRODUCERS[name]]
            readers = READERS.get(name, ())
        channels[name] = _channel(spec, by_topic[name], description)
        for sender in dict.fromkeys(senders):
            summary = f"{sender} publishes to {name}"
            operations[f"{sender}.sends.{name}"] = _operation("send", name, by_topic[name], summary, None)
        for reader in readers:
            summary = f"{reader.service} reads {name}: {reader.why}"
            operations[f"{reader.service}.receives.{name}"] = _operation(
                "receive", name, by_topic[name], summary, reader.group
            )

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "waflow",
            "version": version("waflow-common"),
            "description": (
                "waflow's Kafka topics and events. Every value is one JSON envelope (event_id, event_type, "
                "schema_version, tenant_id, occurred_at, produced_at, correlation_id, causation_id, payload); "
                "headers repeat event_type, schema_version, tenant_id and event_id. Delivery is at least once, "
                "ordered per key. docs/subscribers.md says what a subscriber can rely on and how events evolve. "
                + PREFIX_NOTE
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "{bootstrap}",
                "protocol": "kafka",
                "description": f"The deployment's Kafka (KAFKA_BOOTSTRAP_SERVERS). {PREFIX_NOTE}",
                "variables": {"bootstrap": {"default": "127.0.0.1:9092", "description": "host:port of a broker"}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(sorted(schemas.items())), "messages": messages},
    }


def write(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(build(), indent=2) + "\n")
    return path


def render_html(doc: Document) -> str:
    """A plain page of the document (no scripts, nothing fetched): each topic, its messages, keys and who sends
    and receives it."""
    esc = html.escape
    messages = doc["components"]["messages"]
    by_channel: dict[str, list[str]] = {}
    for operation in doc["operations"].values():
        channel = operation["channel"]["$ref"].rsplit("/", 1)[-1]
        by_channel.setdefault(channel, []).append(operation["summary"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>waflow events</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}code{background:#eee}"
        "td,th{text-align:left;vertical-align:top;padding:2px 8px}</style></head><body>",
        f"<h1>{esc(doc['info']['title'])} {esc(doc['info']['version'])}: events</h1>",
        f"<p>{esc(doc['info']['description'])}</p><p>The whole document: <a href='asyncapi.json'>asyncapi.json</a> "
        f"(AsyncAPI {esc(doc['asyncapi'])}).</p>",
    ]
    for name, channel in doc["channels"].items():
        kafka = channel["bindings"]["kafka"]
        parts.append(f"<h2 id='{esc(name)}'><code>{esc(channel['address'])}</code></h2>")
        parts.append(f"<p>{esc(channel['description'])} Partitions: {kafka['partitions']}.</p><ul>")
        parts.extend(f"<li>{esc(summary)}</li>" for summary in by_channel.get(name, []))
        parts.append("</ul><table><tr><th>message</th><th>key</th><th>summary</th></tr>")
        for ref in channel["messages"].values():
            message = messages[ref["$ref"].rsplit("/", 1)[-1]]
            key = message.get("bindings", {}).get("kafka", {}).get("key", {}).get("description", "")
            parts.append(
                f"<tr><td><code>{esc(message['title'])}</code></td><td>{esc(key)}</td>"
                f"<td>{esc(message.get('summary', ''))}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
