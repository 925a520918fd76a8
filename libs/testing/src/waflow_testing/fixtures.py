"""Test fixtures shared by every package: the real Kafka and MongoDB-protocol server, a unique namespace per
run, tenants on tenants.v1, and serving an app over real HTTP.

Where the servers come from, in order: WAFLOW_TEST_KAFKA_BOOTSTRAP / WAFLOW_TEST_MONGODB_URI, then
testcontainers if a Docker engine answers, then local processes started once per run by deploy/local/infra.sh.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from waflow_common.admin import Admin, AppFile, TenantFile
from waflow_common.events.conversation import NoteAdded, NoteAddedEvent
from waflow_common.events.tenants import PhoneNumber
from waflow_common.kafka import ensure_topics
from waflow_common.processes import free_port as free_port  # re-exported: tests take it from here
from waflow_common.secrets import generate_key
from waflow_common.settings import CommonSettings

REPO = Path(__file__).resolve().parents[4]
FIXTURES = REPO / "tests" / "fixtures"
INFRA = REPO / "deploy" / "local" / "infra.sh"


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    mongodb_uri: str
    # Set when this run started the broker itself, so fault tests may stop and restart it.
    local_data_dir: Path | None = None


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


def _local_env(data_dir: Path) -> dict[str, str]:
    return os.environ | {
        "WAFLOW_DATA": str(data_dir),
        "KAFKA_PORT": os.environ.get("WAFLOW_TEST_KAFKA_PORT", "19092"),
        "KAFKA_CONTROLLER_PORT": os.environ.get("WAFLOW_TEST_KAFKA_CONTROLLER_PORT", "19093"),
        "MONGO_PORT": os.environ.get("WAFLOW_TEST_MONGO_PORT", "37017"),
    }


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    kafka = os.environ.get("WAFLOW_TEST_KAFKA_BOOTSTRAP")
    mongo = os.environ.get("WAFLOW_TEST_MONGODB_URI")
    if kafka and mongo:
        yield Infra(kafka, mongo)
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.mongodb import MongoDbContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as k, MongoDbContainer("mongo:7") as m:
            yield Infra(k.get_bootstrap_server(), m.get_connection_url())
        return
    data_dir = REPO / ".data" / "test"
    env = _local_env(data_dir)
    subprocess.run(["bash", str(INFRA), "wipe"], env=env, check=True)
    subprocess.run(["bash", str(INFRA), "start"], env=env, check=True)
    try:
        yield Infra(
            f"127.0.0.1:{env['KAFKA_PORT']}", f"mongodb://127.0.0.1:{env['MONGO_PORT']}", local_data_dir=data_dir
        )
    finally:
        subprocess.run(["bash", str(INFRA), "stop"], env=env, check=False)


def local_infra(action: str, what: str, infra: Infra) -> None:
    """Stops or starts a locally started server (fault tests)."""
    assert infra.local_data_dir is not None
    subprocess.run(["bash", str(INFRA), action, what], env=_local_env(infra.local_data_dir), check=True)


@pytest.fixture(scope="session")
def secrets_key() -> str:
    return generate_key()


@pytest.fixture(scope="session")
def settings_env(infra: Infra, secrets_key: str) -> dict[str, str]:
    """Environment for processes of this run: a unique topic and database prefix keeps runs apart."""
    run = uuid.uuid4().hex[:8]
    return {
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "MONGODB_URI": infra.mongodb_uri,
        "WAFLOW_SECRETS_KEY": secrets_key,
        "WAFLOW_TOPIC_PREFIX": f"t{run}.",
        "WAFLOW_DB_PREFIX": f"t{run}_",
        "LOG_LEVEL": "WARNING",
    }


@pytest.fixture(scope="session")
def settings(settings_env: dict[str, str]) -> CommonSettings:
    return settings_for(CommonSettings, settings_env)


S = TypeVar("S", bound=CommonSettings)


def settings_for(cls: type[S], settings_env: dict[str, str], **overrides: Any) -> S:
    """A service's settings for this run (its own subclass), ignoring the developer's environment."""
    return cls.model_validate({k.lower(): v for k, v in settings_env.items()} | overrides)


def isolated_env(settings_env: dict[str, str], label: str) -> dict[str, str]:
    """This run's environment with topics and databases of their own: no other test's consumer sees them."""
    run = f"{label}{uuid.uuid4().hex[:6]}"
    return settings_env | {
        "WAFLOW_TOPIC_PREFIX": f"{settings_env['WAFLOW_TOPIC_PREFIX']}{run}.",
        "WAFLOW_DB_PREFIX": f"{settings_env['WAFLOW_DB_PREFIX']}{run}_",
    }


T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None] | T | None], *, timeout: float = 15.0, what: str = "condition"
) -> T:
    """Polls until the probe (plain or async) returns something truthy: events take effect asynchronously."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last: {result!r})")
        await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def topics_ready(settings: CommonSettings) -> CommonSettings:
    await ensure_topics(settings)
    return settings


@dataclass(frozen=True)
class SeededTenant:
    tenant_id: str
    api_key: str
    app_id: str
    app_secret: str
    verify_token: str
    phone_number_id: str
    waba_id: str
    display_phone_number: str
    access_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


# The numbers of tenants A and B in tests/fixtures/whatsapp (see its README).
TENANT_A = SeededTenant(
    "tenant-a",
    "wf_test_key_a",
    "700100200300",
    "app-secret-for-tests",
    "verify-token-for-tests",
    "118273645501928",
    "104882910347561",
    "15550001234",
    "access-token-tenant-a",
)
TENANT_B = SeededTenant(
    "tenant-b",
    "wf_test_key_b",
    "700100200300",
    "app-secret-for-tests",
    "verify-token-for-tests",
    "118273645577310",
    "104882910399902",
    "15550009876",
    "access-token-tenant-b",
)


async def put_test_tenant(admin: Admin, tenant: SeededTenant, **overrides: Any) -> None:
    await admin.put_tenant(
        TenantFile(
            tenant_id=tenant.tenant_id,
            name=f"{tenant.tenant_id} test business",
            app_id=tenant.app_id,
            phone_numbers=[
                PhoneNumber(
                    phone_number_id=tenant.phone_number_id,
                    waba_id=tenant.waba_id,
                    display_phone_number=tenant.display_phone_number,
                    rate_per_second=overrides.pop("rate_per_second", 80),
                )
            ],
            access_token=tenant.access_token,
            api_keys=[tenant.api_key],
            **overrides,
        )
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def admin(topics_ready: CommonSettings) -> AsyncIterator[Admin]:
    async with Admin(topics_ready) as admin:
        yield admin


async def put_test_app(admin: Admin) -> None:
    """The Meta app of the test tenants; returns once the admin's own registry (following the topic) has it."""
    await admin.put_app(
        AppFile(
            app_id=TENANT_A.app_id,
            name="test app",
            app_secret=TENANT_A.app_secret,
            verify_token=TENANT_A.verify_token,
        )
    )
    await eventually(lambda: admin.registry.app(TENANT_A.app_id), what="the app in the registry")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def tenants(admin: Admin) -> tuple[SeededTenant, SeededTenant]:
    """Tenants A and B, both on one Meta app (the Tech Provider model)."""
    await put_test_app(admin)
    await put_test_tenant(admin, TENANT_A)
    await put_test_tenant(admin, TENANT_B)
    return TENANT_A, TENANT_B


@contextlib.asynccontextmanager
async def serve(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Serves an ASGI app over real HTTP on loopback inside the test's event loop; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(400):
        if server.started:
            break
        if task.done():
            task.result()
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.025)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def fixture_json(name: str) -> Any:
    return json.loads((FIXTURES / "whatsapp" / name).read_text())


class TopicReader:
    """Reads a topic from its current end, so a test sees only what it caused."""

    def __init__(self, settings: CommonSettings, topic: str, *, from_beginning: bool = False) -> None:
        self.topic = settings.topic(topic)
        self.from_beginning = from_beginning
        # No consumer group: joining one costs seconds per reader; partitions are assigned directly.
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, enable_auto_commit=False
        )

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()
        cluster = await self.consumer._client.fetch_all_metadata()
        partitions = [TopicPartition(self.topic, p) for p in cluster.partitions_for_topic(self.topic) or ()]
        assert partitions, f"topic {self.topic} does not exist"
        self.consumer.assign(partitions)
        if self.from_beginning:
            await self.consumer.seek_to_beginning(*partitions)
        else:
            await self.consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self.consumer.position(tp)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def read(
        self, count: int, timeout: float = 10.0, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """Up to `count` JSON records (those `where` accepts), waiting at most `timeout` seconds."""
        return [r.value for r in await self.read_records(count, timeout, where)]

    async def read_records(
        self, count: int, timeout: float = 10.0, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[Record]:
        out: list[Record] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < count and loop.time() < deadline:
            batches = await self.consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for r in records:
                    value = json.loads(r.value)
                    if where is None or where(value):
                        headers = {k: v.decode() for k, v in (r.headers or ())}
                        out.append(Record(r.key.decode() if r.key else None, value, headers))
        return out


@dataclass(frozen=True)
class Record:
    key: str | None
    value: dict[str, Any]
    headers: dict[str, str]


def note_event(text: str, tenant_id: str = "tenant-a") -> NoteAddedEvent:
    """A note.added of a made-up chat: a small conversation.v1 event for tests of the Kafka wiring."""
    return NoteAddedEvent.new(
        tenant_id=tenant_id,
        payload=NoteAdded(
            chat_id="c1",
            phone_number_id="1",
            wa_id="15550001111",
            note_id=uuid.uuid4().hex,
            author="agent",
            text=text,
            created_at=datetime.now(UTC),
        ),
    )
