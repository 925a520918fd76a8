"""waflow-admin: put and list Meta apps and tenants on tenants.v1, issue API keys, create topics.

    waflow-admin topics create
    waflow-admin topics tail TOPIC [--from-beginning] [--limit N]   print a topic's events as JSON lines
    waflow-admin app put FILE            FILE: {"app_id", "name", "app_secret", "verify_token"}
    waflow-admin app list
    waflow-admin app delete APP_ID
    waflow-admin tenant put FILE         FILE: {"tenant_id", "name", "app_id", "phone_numbers": [...],
                                                "access_token", "api_keys"?: [plain keys], ...}
    waflow-admin tenant list
    waflow-admin tenant delete TENANT_ID  (its API keys stop working at once; its data stays in the services)
    waflow-admin tenant key add TENANT_ID [--label L]
    waflow-admin keygen                  print a new WAFLOW_SECRETS_KEY

Secrets are sealed before they are published and are never printed. A new tenant without api_keys gets one,
printed once; only its SHA-256 is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.progress import Progress

from waflow_common import dlq, rebuild, replay, topics
from waflow_common.events.tenants import (
    TENANT_ID_PATTERN,
    ApiKeyRecord,
    AppRecord,
    AppUpsertedEvent,
    PhoneNumber,
    TenantRecord,
    TenantUpsertedEvent,
)
from waflow_common.kafka import EventPublisher, ensure_topics, make_broker
from waflow_common.secrets import SecretBox, generate_key, hash_api_key, new_api_key
from waflow_common.settings import CommonSettings
from waflow_common.tenants import TenantRegistry, app_secret_context, tenant_secret_context
from waflow_common.topic_reading import ReadStalled, topic_partitions


class AppFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    app_id: str = Field(min_length=1)
    name: str
    app_secret: str = Field(min_length=8)
    verify_token: str = Field(min_length=8)


class TenantFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_id: str = Field(pattern=TENANT_ID_PATTERN, description="lowercase letters, digits, - and _")
    name: str
    app_id: str
    phone_numbers: list[PhoneNumber] = Field(min_length=1)
    access_token: str = Field(min_length=8)
    api_keys: list[str] = Field(default_factory=list, description="plain keys to accept (hashed before storing)")
    window_closing_lead_minutes: int = 60


class AdminError(Exception):
    pass


class Admin:
    """The operations behind the command line, usable from tests and `make run` as a library."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.box = SecretBox(settings.waflow_secrets_key.get_secret_value())
        self._broker: KafkaBroker = make_broker(settings, client_id="waflow-admin")
        self.publisher = EventPublisher(self._broker, settings)
        self.registry = TenantRegistry(settings, self.box)

    async def __aenter__(self) -> Admin:
        await self._broker.start()
        try:
            await self.registry.start()
        except BaseException:
            await self._broker.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.registry.stop()
        await self._broker.stop()

    async def put_app(self, spec: AppFile) -> AppRecord:
        record = AppRecord(
            app_id=spec.app_id,
            name=spec.name,
            app_secret=self.box.seal(spec.app_secret, context=app_secret_context(spec.app_id, "app_secret")),
            verify_token=self.box.seal(spec.verify_token, context=app_secret_context(spec.app_id, "verify_token")),
        )
        await self.publisher.publish(AppUpsertedEvent.new(tenant_id=None, payload=record))
        return record

    async def put_tenant(self, spec: TenantFile) -> tuple[TenantRecord, str | None]:
        """Upserts a tenant, keeping its existing API keys; returns the record and a new key if one was made."""
        if self.registry.app(spec.app_id) is None:
            raise AdminError(f"app {spec.app_id} does not exist: put it first")
        for number in spec.phone_numbers:
            owner = self.registry.tenant_for_number(number.phone_number_id)
            if owner is not None and owner.tenant_id != spec.tenant_id:
                raise AdminError(f"phone number {number.phone_number_id} belongs to tenant {owner.tenant_id}")
        existing = self.registry.tenant(spec.tenant_id)
        keys = list(existing.record.api_keys) if existing else []
        known = {k.sha256 for k in keys}
        now = datetime.now(UTC)
        for plain in spec.api_keys:
            if hash_api_key(plain) not in known:
                keys.append(_key_record(plain, "from file", now))
                known.add(hash_api_key(plain))
        issued: str | None = None
        if not keys:
            issued = new_api_key()
            keys.append(_key_record(issued, "initial", now))
        record = TenantRecord(
            tenant_id=spec.tenant_id,
            name=spec.name,
            app_id=spec.app_id,
            phone_numbers=spec.phone_numbers,
            access_token=self.box.seal(
                spec.access_token, context=tenant_secret_context(spec.tenant_id, "access_token")
            ),
            api_keys=keys,
            window_closing_lead_minutes=spec.window_closing_lead_minutes,
        )
        await self.publisher.publish(TenantUpsertedEvent.new(tenant_id=spec.tenant_id, payload=record))
        return record, issued

    async def delete_tenant(self, tenant_id: str) -> None:
        if self.registry.tenant(tenant_id) is None:
            raise AdminError(f"tenant {tenant_id} does not exist")
        await self.publisher.tombstone(topics.TENANTS, f"tenant:{tenant_id}")

    async def delete_app(self, app_id: str) -> None:
        if self.registry.app(app_id) is None:
            raise AdminError(f"app {app_id} does not exist")
        users = [t.tenant_id for t in self.registry.tenants() if t.record.app_id == app_id]
        if users:
            raise AdminError(f"app {app_id} still serves tenants {', '.join(sorted(users))}")
        await self.publisher.tombstone(topics.TENANTS, f"app:{app_id}")

    async def add_key(self, tenant_id: str, label: str) -> str:
        tenant = self.registry.tenant(tenant_id)
        if tenant is None:
            raise AdminError(f"tenant {tenant_id} does not exist")
        issued = new_api_key()
        record = tenant.record.model_copy(
            update={"api_keys": [*tenant.record.api_keys, _key_record(issued, label, datetime.now(UTC))]}
        )
        await self.publisher.publish(TenantUpsertedEvent.new(tenant_id=tenant_id, payload=record))
        return issued


async def tail(settings: CommonSettings, topic: str, *, from_beginning: bool, limit: int) -> None:
    """Prints each record as one JSON line: its key, headers and value (events are JSON already)."""
    name = settings.topic(topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, name)
        if not partitions:
            raise AdminError(f"topic {name} does not exist")
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        printed = 0
        async for record in consumer:
            try:
                value: Any = json.loads(record.value) if record.value is not None else None
            except ValueError:
                value = record.value.decode("utf-8", "replace") if record.value else None
            line = {
                "partition": record.partition,
                "offset": record.offset,
                "key": record.key.decode("utf-8", "replace") if record.key else None,
                "headers": {k: v.decode("utf-8", "replace") for k, v in record.headers or ()},
                "value": value,
            }
            print(json.dumps(line, ensure_ascii=False), flush=True)
            printed += 1
            if limit and printed >= limit:
                return
    finally:
        await consumer.stop()


def _key_record(plain: str, label: str, now: datetime) -> ApiKeyRecord:
    return ApiKeyRecord(key_id=uuid.uuid4().hex[:12], sha256=hash_api_key(plain), label=label, created_at=now)


def _load(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdminError(f"cannot read {path}: {exc}") from exc


def _tenant_summary(record: TenantRecord) -> dict[str, Any]:
    return {
        "tenant_id": record.tenant_id,
        "name": record.name,
        "app_id": record.app_id,
        "waba_ids": record.waba_ids,
        "phone_numbers": [n.model_dump() for n in record.phone_numbers],
        "api_keys": [{"key_id": k.key_id, "label": k.label} for k in record.api_keys],
    }


async def _run(args: argparse.Namespace) -> int:
    settings = CommonSettings()
    if args.area == "keygen":
        print(generate_key())
        return 0
    if args.area == "topics" and args.action == "create":
        created = await ensure_topics(settings)
        print(json.dumps({"created": created}))
        return 0
    if args.area == "topics":
        await tail(settings, args.topic, from_beginning=args.from_beginning, limit=args.limit)
        return 0
    if args.area == "dlq":
        return await _dlq(settings, args)
    if args.area == "replay":
        return await _replay(settings, args)
    if args.area == "rebuild":
        return await _rebuild(settings, args)
    async with Admin(settings) as admin:
        if args.area == "app" and args.action == "put":
            app = await admin.put_app(AppFile.model_validate(_load(args.file)))
            print(json.dumps({"app_id": app.app_id, "name": app.name}))
        elif args.area == "app" and args.action == "delete":
            await admin.delete_app(args.app_id)
            print(json.dumps({"deleted": args.app_id}))
        elif args.area == "tenant" and args.action == "delete":
            await admin.delete_tenant(args.tenant_id)
            print(json.dumps({"deleted": args.tenant_id}))
        elif args.area == "app":
            print(json.dumps([{"app_id": a.app_id, "name": a.name} for a in admin.registry.apps()], indent=2))
        elif args.area == "tenant" and args.action == "put":
            record, issued = await admin.put_tenant(TenantFile.model_validate(_load(args.file)))
            out = _tenant_summary(record)
            if issued:
                out["new_api_key"] = issued
                out["note"] = "store this key now: it is shown once and kept only as a hash"
            print(json.dumps(out, indent=2))
        elif args.area == "tenant" and args.action == "list":
            print(json.dumps([_tenant_summary(t.record) for t in admin.registry.tenants()], indent=2))
        elif args.area == "tenant" and args.action == "key":
            print(
                json.dumps(
                    {
                        "tenant_id": args.tenant_id,
                        "new_api_key": await admin.add_key(args.tenant_id, args.label),
                    }
                )
            )
    return 0


async def _dlq(settings: CommonSettings, args: argparse.Namespace) -> int:
    try:
        if args.action == "list":
            print(json.dumps(await dlq.summary(settings), indent=2))
        elif args.action == "show":
            for line in await dlq.show(settings, args.topic, args.limit):
                print(json.dumps(line, ensure_ascii=False))
        elif args.action == "redrive":
            for line in await dlq.redrive(settings, args.topic, dry_run=args.dry_run):
                print(json.dumps(line, ensure_ascii=False))
        elif args.action == "purge":
            print(json.dumps({"topic": dlq.dlq_name(args.topic), "purged": await dlq.purge(settings, args.topic)}))
    except dlq.DlqError as exc:
        raise AdminError(str(exc)) from exc
    return 0


async def _replay(settings: CommonSettings, args: argparse.Namespace) -> int:
    since, until = _when(args.since), _when(args.until) if args.until else datetime.now(UTC)
    with Progress(console=Console(stderr=True), transient=True) as progress:
        try:
            done = await replay.replay(
                settings, args.ingest_url, args.tenant, since, until, dry_run=args.dry_run, progress=progress
            )
        except replay.ReplayError as exc:
            raise AdminError(str(exc)) from exc
    print(json.dumps(dataclasses.asdict(done) | {"dry_run": args.dry_run}))
    return 0 if done.refused == 0 else 1


async def _rebuild(settings: CommonSettings, args: argparse.Namespace) -> int:
    with Progress(console=Console(stderr=True), transient=True) as progress:
        try:
            done = await rebuild.rebuild(settings, args.service, dry_run=args.dry_run, progress=progress)
        except rebuild.RebuildError as exc:
            raise AdminError(str(exc)) from exc
    for projection in done:
        print(json.dumps(dataclasses.asdict(projection) | {"dry_run": args.dry_run}))
    return 0


def _when(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise AdminError(f"not an ISO 8601 time: {text}") from exc
    if moment.tzinfo is None:
        raise AdminError(f"give the time zone of {text} (e.g. Z or +01:00)")
    return moment


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="waflow-admin", description="Manage waflow apps, tenants and topics.")
    areas = parser.add_subparsers(dest="area", required=True)
    areas.add_parser("keygen", help="print a new WAFLOW_SECRETS_KEY")
    topics_p = areas.add_parser("topics", help="create the contract's topics")
    topic_actions = topics_p.add_subparsers(dest="action", required=True)
    topic_actions.add_parser("create")
    tail_p = topic_actions.add_parser("tail", help="follow a topic (name without the deployment's prefix)")
    tail_p.add_argument("topic")
    tail_p.add_argument("--from-beginning", action="store_true")
    tail_p.add_argument("--limit", type=int, default=0, help="stop after N records (0: follow forever)")
    dlq_p = areas.add_parser("dlq", help="dead-letter topics: list, show, redrive, purge (topic: e.g. wa.inbound.v1)")
    dlq_actions = dlq_p.add_subparsers(dest="action", required=True)
    dlq_actions.add_parser("list", help="every dead-letter topic: letters held and not yet redriven")
    dlq_show = dlq_actions.add_parser("show", help="a topic's letters as JSON lines")
    dlq_show.add_argument("topic")
    dlq_show.add_argument("--limit", type=int, default=0)
    dlq_redrive = dlq_actions.add_parser("redrive", help="put the letters not redriven yet back on their topic")
    dlq_redrive.add_argument("topic")
    dlq_redrive.add_argument("--dry-run", action="store_true", help="say what would be redriven, send nothing")
    dlq_actions.add_parser("purge", help="delete a topic's letters").add_argument("topic")
    rebuild_p = areas.add_parser(
        "rebuild", help="apply a service's compacted topics to its projections again (safe while it runs)"
    )
    rebuild_p.add_argument("service", help="a service with projections, e.g. outbound or conversation")
    rebuild_p.add_argument("--dry-run", action="store_true", help="read and count the records, write nothing")
    replay_p = areas.add_parser("replay", help="send a tenant's archived webhooks of a time range to ingest again")
    replay_p.add_argument("--tenant", required=True)
    replay_p.add_argument("--since", required=True, help="ISO 8601 with a time zone, e.g. 2026-12-01T00:00:00Z")
    replay_p.add_argument("--until", help="ISO 8601 with a time zone (default: now)")
    replay_p.add_argument("--ingest-url", default="http://127.0.0.1:8001")
    replay_p.add_argument("--dry-run", action="store_true", help="count what would be sent, send nothing")
    for area in ("app", "tenant"):
        sub = areas.add_parser(area).add_subparsers(dest="action", required=True)
        sub.add_parser("put").add_argument("file")
        sub.add_parser("list")
        sub.add_parser("delete").add_argument(f"{area}_id")
        if area == "tenant":
            key = sub.add_parser("key").add_subparsers(dest="key_action", required=True).add_parser("add")
            key.add_argument("tenant_id")
            key.add_argument("--label", default="")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except ValidationError as exc:
        print(f"waflow-admin: invalid file: {exc}", file=sys.stderr)
    except (AdminError, ReadStalled) as exc:
        print(f"waflow-admin: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
