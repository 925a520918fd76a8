"""The whole stack as separate OS processes, for black-box tests: the simulator, ingest, conversation, contacts
and outbound run from their console entry points (as `make run` starts them, see waflow_common.processes) on
free ports, with a topic and database prefix of their own, against the run's Kafka and database server.

    async with Stack(kafka_bootstrap=..., mongodb_uri=..., workdir=tmp) as stack:
        await stack.sim.customer_message(stack.tenant_a.phone_number_id, "15551230001", text="hi")
        stack.kill("conversation"); await stack.restart("conversation")

Two Meta apps and two tenants are seeded: tenant A on app A with two business numbers, tenant B on app B with
one. A test talks to the stack only as an outsider would: HTTP to the services, the simulator's control API,
Kafka topics; it imports nothing of a service.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from waflow_common import processes
from waflow_common.admin import Admin, AppFile, TenantFile
from waflow_common.events.tenants import PhoneNumber
from waflow_common.kafka import ensure_topics
from waflow_common.processes import BY_NAME, PROCESSES
from waflow_common.secrets import generate_key
from waflow_common.settings import CommonSettings
from waflow_simulator.client import SimulatorClient

SERVICES: tuple[str, ...] = tuple(spec.name for spec in PROCESSES)
# The processes that consume topics (the simulator and ingest do not).
CONSUMERS: tuple[str, ...] = ("conversation", "contacts", "outbound")


@dataclass(frozen=True)
class StackApp:
    app_id: str
    app_secret: str
    verify_token: str


@dataclass(frozen=True)
class StackTenant:
    tenant_id: str
    api_key: str
    app: StackApp
    numbers: tuple[PhoneNumber, ...]
    access_token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def phone_number_id(self) -> str:
        """The tenant's first business number."""
        return self.numbers[0].phone_number_id


# The ids of tenant A's first number and of tenant B's match Meta's samples in tests/fixtures/whatsapp.
APP_A = StackApp("700100200300", "app-secret-for-tests", "verify-token-for-tests")
APP_B = StackApp("700100200399", "app-secret-of-app-b", "verify-token-of-app-b")
TENANT_A = StackTenant(
    "tenant-a",
    "wf_test_key_a",
    APP_A,
    (
        PhoneNumber(phone_number_id="118273645501928", waba_id="104882910347561", display_phone_number="15550001234"),
        PhoneNumber(phone_number_id="118273645501929", waba_id="104882910347561", display_phone_number="15550001235"),
    ),
    "access-token-tenant-a",
)
TENANT_B = StackTenant(
    "tenant-b",
    "wf_test_key_b",
    APP_B,
    (PhoneNumber(phone_number_id="118273645577310", waba_id="104882910399902", display_phone_number="15550009876"),),
    "access-token-tenant-b",
)


class Stack:
    """Runs and controls the stack's processes; see the module's docstring."""

    def __init__(
        self,
        *,
        kafka_bootstrap: str,
        mongodb_uri: str,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        label: str = "bb",
    ) -> None:
        """`env` adds to (or overrides) every process's environment, e.g. a service's tuning."""
        run = f"{label}{uuid.uuid4().hex[:6]}"
        self.workdir = workdir
        self.ports = {name: processes.free_port() for name in SERVICES}
        self.env: dict[str, str] = (
            dict(os.environ)
            | {
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "MONGODB_URI": mongodb_uri,
                "WAFLOW_SECRETS_KEY": generate_key(),
                "WAFLOW_TOPIC_PREFIX": f"{run}.",
                "WAFLOW_DB_PREFIX": f"{run}_",
                "WHATSAPP_API_BASE_URL": f"http://127.0.0.1:{self.ports['simulator']}",
                "LOG_LEVEL": "WARNING",
            }
            | {BY_NAME[name].port_variable: str(port) for name, port in self.ports.items()}
            | dict(env or {})
        )
        self.settings = CommonSettings.model_validate(
            {k.lower(): v for k, v in self.env.items() if k.lower() in CommonSettings.model_fields}
        )
        self.apps = (APP_A, APP_B)
        self.tenant_a = TENANT_A
        self.tenant_b = TENANT_B
        self.tenants = (TENANT_A, TENANT_B)
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self.sim = SimulatorClient(self.url("simulator"))

    async def __aenter__(self) -> Self:
        try:
            await self.up()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- the stack -----------------------------------------------------------------------------------------

    async def up(self) -> None:
        """Topics, apps and tenants first (every service reads tenants.v1 at start), then the simulator, which
        is configured before the services start (outbound reads templates from it), then the services."""
        await ensure_topics(self.settings)
        await self._seed()
        self.start("simulator")
        await self.wait_healthy(["simulator"])
        for tenant in self.tenants:
            await self.sim.put_business(
                tenant.app.app_id,
                app_secret=tenant.app.app_secret,
                webhook_url=self.webhook_url(tenant.app.app_id),
                access_token=tenant.access_token,
                numbers=tenant.numbers,
            )
        for name in SERVICES[1:]:
            self.start(name)
        await self.wait_healthy()

    async def close(self) -> None:
        await self.sim.aclose()
        for name in reversed(list(self._processes)):
            self.stop(name)

    async def _seed(self) -> None:
        async with Admin(self.settings) as admin:
            for app in self.apps:
                await admin.put_app(
                    AppFile(
                        app_id=app.app_id,
                        name=f"app {app.app_id}",
                        app_secret=app.app_secret,
                        verify_token=app.verify_token,
                    )
                )
            for _ in range(200):
                if all(admin.registry.app(app.app_id) for app in self.apps):
                    break
                await asyncio.sleep(0.05)
            for tenant in self.tenants:
                await admin.put_tenant(
                    TenantFile(
                        tenant_id=tenant.tenant_id,
                        name=f"{tenant.tenant_id} business",
                        app_id=tenant.app.app_id,
                        phone_numbers=list(tenant.numbers),
                        access_token=tenant.access_token,
                        api_keys=[tenant.api_key],
                    )
                )

    # --- one process ---------------------------------------------------------------------------------------

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def webhook_url(self, app_id: str) -> str:
        return f"{self.url('ingest')}/webhooks/whatsapp/{app_id}"

    def log_path(self, service: str) -> Path:
        return self.workdir / "logs" / f"{service}.log"

    def log_tail(self, service: str, chars: int = 4000) -> str:
        path = self.log_path(service)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def running(self, service: str) -> bool:
        process = self._processes.get(service)
        return process is not None and processes.alive(process.pid)

    def start(self, service: str) -> None:
        """Starts the process (a no-op if it runs); `wait_healthy` tells when it answers."""
        if self.running(service):
            return
        self._processes[service] = processes.spawn(BY_NAME[service], self.env, self.log_path(service))

    def kill(self, service: str) -> None:
        """SIGKILL: the process gets no chance to flush, commit or say goodbye."""
        process = self._processes.get(service)
        if process is not None:
            processes.kill(process.pid)
            process.wait()

    def stop(self, service: str) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        process = self._processes.get(service)
        if process is not None:
            processes.stop(process.pid)
            process.wait()

    async def restart(self, service: str) -> None:
        self.kill(service)
        self.start(service)
        await self.wait_healthy([service])

    async def wait_healthy(self, services: Iterable[str] | None = None, timeout: float = 90.0) -> None:
        """Returns once every given (default: started) process answers /healthz; raises with its log otherwise."""
        waiting = list(services if services is not None else self._processes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while waiting:
            for name in list(waiting):
                if await asyncio.to_thread(processes.answers, self.ports[name], "/healthz", 1.0):
                    waiting.remove(name)
                elif not self.running(name) or loop.time() > deadline:
                    state = "exited" if not self.running(name) else f"did not answer within {timeout}s"
                    raise RuntimeError(f"{name} {state}; its log ends:\n{self.log_tail(name)}")
            if waiting:
                await asyncio.sleep(0.2)
