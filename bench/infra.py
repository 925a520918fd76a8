"""What the benchmarks share: a namespace of their own, and Kafka and the database server (given or started here)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from waflow_common.admin import Admin, AppFile, TenantFile
from waflow_common.events.tenants import PhoneNumber
from waflow_common.kafka import ensure_topics
from waflow_common.processes import free_port as free_port  # re-exported for the benchmarks
from waflow_common.secrets import generate_key
from waflow_common.settings import CommonSettings

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "deploy" / "local" / "infra.sh"


def settings_from(env: dict[str, str]) -> CommonSettings:
    return CommonSettings.model_validate(
        {k.lower(): v for k, v in env.items() if k.lower() in CommonSettings.model_fields}
    )


@contextmanager
def bench_environment(name: str, *, mongo: bool) -> Iterator[dict[str, str]]:
    """Environment for the benchmark's processes: a fresh topic/db prefix and secrets key, and the servers of
    KAFKA_BOOTSTRAP_SERVERS (and MONGODB_URI) when set, otherwise ones started on free ports and wiped after."""
    run = uuid.uuid4().hex[:6]
    env = dict(os.environ) | {
        "WAFLOW_SECRETS_KEY": generate_key(),
        "WAFLOW_TOPIC_PREFIX": f"bench{run}.",
        "WAFLOW_DB_PREFIX": f"bench{run}_",
        "LOG_LEVEL": "WARNING",
    }
    given = "KAFKA_BOOTSTRAP_SERVERS" in os.environ and (not mongo or "MONGODB_URI" in os.environ)
    infra_env = env | {
        "WAFLOW_DATA": str(REPO / ".data" / f"bench-{name}"),
        "KAFKA_PORT": str(free_port()),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "MONGO_PORT": str(free_port()),
    }
    if not given:
        subprocess.run(["bash", str(INFRA), "wipe"], env=infra_env, check=True)
        subprocess.run(["bash", str(INFRA), "start", "all" if mongo else "kafka"], env=infra_env, check=True)
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{infra_env['KAFKA_PORT']}"
        if mongo:
            env["MONGODB_URI"] = f"mongodb://127.0.0.1:{infra_env['MONGO_PORT']}"
    try:
        yield env
    finally:
        if not given:
            subprocess.run(["bash", str(INFRA), "wipe"], env=infra_env, check=False)


async def wait_healthy(port: int, path: str = "/healthz", timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}{path}")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"nothing answered on port {port}")


@dataclass(frozen=True)
class BenchTenant:
    tenant_id: str
    app_id: str
    app_secret: str
    phone_number_id: str
    waba_id: str
    display_phone_number: str
    access_token: str
    api_key: str


async def seed_tenant(settings: CommonSettings, tenant: BenchTenant) -> None:
    """Creates the topics, the tenant's Meta app and the tenant itself on tenants.v1."""
    await ensure_topics(settings)
    async with Admin(settings) as admin:
        await admin.put_app(
            AppFile(app_id=tenant.app_id, name="bench", app_secret=tenant.app_secret, verify_token="bench-verify")
        )
        while admin.registry.app(tenant.app_id) is None:
            await asyncio.sleep(0.05)
        await admin.put_tenant(
            TenantFile(
                tenant_id=tenant.tenant_id,
                name="Bench",
                app_id=tenant.app_id,
                access_token=tenant.access_token,
                phone_numbers=[
                    PhoneNumber(
                        phone_number_id=tenant.phone_number_id,
                        waba_id=tenant.waba_id,
                        display_phone_number=tenant.display_phone_number,
                    )
                ],
                api_keys=[tenant.api_key],
            )
        )
