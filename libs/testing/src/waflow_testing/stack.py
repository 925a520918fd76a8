"""The whole stack as separate OS processes, for black-box tests: the simulator, ingest, conversation, contacts
and outbound run from their console entry points (as `make run` starts them, see waflow_common.processes) on
free ports, with a topic and database prefix of their own, against the run's Kafka and database server.

    async with Stack(kafka_bootstrap=..., mongodb_uri=..., workdir=tmp) as stack:
        await stack.sim.customer_message(stack.tenant_a.phone_number_id, "15551230001", text="hi")
        stack.kill("conversation"); await stack.restart("conversation")

With `instances=2` (or WAFLOW_BLACKBOX_INSTANCES=2) conversation, contacts and outbound each run as two processes
on ports of their own, in one consumer group per service as deployed: `stack.url("conversation")` gives each
instance's base URL in turn, `stack.url("conversation", 1)` the second one's, `stack.kill("contacts", 0)` kills
one instance and `stack.kill("contacts")` all of them.

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
from waflow_simulator.models import StatusFlow

SERVICES: tuple[str, ...] = tuple(spec.name for spec in PROCESSES)
# The processes that consume topics (the simulator and ingest do not).
CONSUMERS: tuple[str, ...] = ("conversation", "contacts", "outbound")
# The processes that may run as several instances (ingest's webhooks all reach its first instance).
SCALABLE: tuple[str, ...] = ("ingest", *CONSUMERS)


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


def _distinct_port(taken: set[int]) -> int:
    """A free port none of this stack's processes was given yet (the OS may offer a port it offered before)."""
    while (port := processes.free_port()) in taken:
        pass
    taken.add(port)
    return port


def instances_from_env(default: int = 1) -> int:
    """How many instances of each consumer service the black-box suite runs: WAFLOW_BLACKBOX_INSTANCES, else
    `default`."""
    return int(os.environ.get("WAFLOW_BLACKBOX_INSTANCES", "") or default)


def instance_name(service: str, index: int) -> str:
    """`conversation` for the first instance, `conversation-2`, `conversation-3`... for the next (as `make run`)."""
    return service if index == 0 else f"{service}-{index + 1}"


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
        instances: int | Mapping[str, int] | None = None,
    ) -> None:
        """`env` adds to (or overrides) every process's environment, e.g. a service's tuning. `instances` is how
        many processes of each consumer service (conversation, contacts, outbound) run, each on a port of its
        own, or a count per service (ingest may be given too; the simulator always runs once); by default
        WAFLOW_BLACKBOX_INSTANCES, else 1."""
        run = f"{label}{uuid.uuid4().hex[:6]}"
        self.workdir = workdir
        if instances is None:
            instances = instances_from_env()
        counts = dict.fromkeys(CONSUMERS, instances) if isinstance(instances, int) else dict(instances)
        unknown = set(counts) - set(SCALABLE)
        if unknown or any(n < 1 for n in counts.values()):
            raise ValueError(f"instances: counts >= 1 of {', '.join(SCALABLE)} only (got {dict(counts)})")
        self.instances: dict[str, int] = {name: counts.get(name, 1) for name in SERVICES}
        taken: set[int] = set()
        self.instance_ports: dict[str, list[int]] = {
            name: [_distinct_port(taken) for _ in range(count)] for name, count in self.instances.items()
        }
        # The first instance's port of each service.
        self.ports = {name: ports[0] for name, ports in self.instance_ports.items()}
        self._turn = dict.fromkeys(SERVICES, 0)
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
        # By instance name (`conversation`, `conversation-2`, ...).
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

    async def numbers_behave(
        self, phone_number_id: str | None = None, *, status_flow: StatusFlow = "read", shuffle_statuses: bool = False
    ) -> None:
        """How the simulator reports statuses for the stack's numbers (all, or one): which it sends of its own
        after a send, and whether it shuffles their order as Meta may."""
        for tenant in self.tenants:
            for number in tenant.numbers:
                if phone_number_id not in (None, number.phone_number_id):
                    continue
                await self.sim.put_number(
                    number.phone_number_id,
                    display_phone_number=number.display_phone_number,
                    waba_id=number.waba_id,
                    app_id=tenant.app.app_id,
                    access_token=tenant.access_token,
                    rate_per_second=number.rate_per_second,
                    status_flow=status_flow,
                    shuffle_statuses=shuffle_statuses,
                )

    async def close(self) -> None:
        await self.sim.aclose()
        for name in reversed(list(self._processes)):
            self._stop(name)

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

    def url(self, service: str, index: int | None = None) -> str:
        """The base URL of one instance of the service; without `index`, each call gives the next instance in
        turn, so a test's REST calls go through every instance."""
        ports = self.instance_ports[service]
        if index is None:
            index = self._turn[service] % len(ports)
            self._turn[service] += 1
        return f"http://127.0.0.1:{ports[index]}"

    def urls(self, service: str) -> list[str]:
        """The base URL of every instance of the service."""
        return [f"http://127.0.0.1:{port}" for port in self.instance_ports[service]]

    def webhook_url(self, app_id: str) -> str:
        return f"{self.url('ingest', 0)}/webhooks/whatsapp/{app_id}"

    def _indexes(self, service: str, index: int | None) -> list[int]:
        count = self.instances[service]
        if index is None:
            return list(range(count))
        if not 0 <= index < count:
            raise IndexError(f"{service} runs {count} instance(s), there is no index {index}")
        return [index]

    def log_path(self, service: str, index: int = 0) -> Path:
        return self.workdir / "logs" / f"{instance_name(service, index)}.log"

    def log_tail(self, service: str, chars: int = 4000, index: int = 0) -> str:
        path = self.log_path(service, index)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def running(self, service: str, index: int | None = None) -> bool:
        """Whether that instance runs; without `index`, whether any instance of the service runs."""
        return any(self._running(instance_name(service, i)) for i in self._indexes(service, index))

    def _running(self, name: str) -> bool:
        process = self._processes.get(name)
        return process is not None and processes.alive(process.pid)

    def pids(self, service: str, index: int | None = None) -> list[int]:
        """The process ids of that instance (default: every instance) that run, e.g. to SIGSTOP a service."""
        found = (self._processes.get(instance_name(service, i)) for i in self._indexes(service, index))
        return [p.pid for p in found if p is not None and processes.alive(p.pid)]

    def start(self, service: str, index: int | None = None) -> None:
        """Starts that instance (default: every instance) unless it runs; `wait_healthy` tells when it answers."""
        spec = BY_NAME[service]
        for i in self._indexes(service, index):
            name = instance_name(service, i)
            if self._running(name):
                continue
            env = self.env | {spec.port_variable: str(self.instance_ports[service][i])}
            self._processes[name] = processes.spawn(spec, env, self.log_path(service, i))

    def kill(self, service: str, index: int | None = None) -> None:
        """SIGKILL to that instance (default: every instance): no chance to flush, commit or say goodbye."""
        for i in self._indexes(service, index):
            process = self._processes.get(instance_name(service, i))
            if process is not None:
                processes.kill(process.pid)
                process.wait()

    def stop(self, service: str, index: int | None = None) -> None:
        """SIGTERM, then SIGKILL if it does not exit (default: every instance)."""
        for i in self._indexes(service, index):
            self._stop(instance_name(service, i))

    def _stop(self, name: str) -> None:
        process = self._processes.get(name)
        if process is not None:
            processes.stop(process.pid)
            process.wait()

    async def restart(self, service: str, index: int | None = None) -> None:
        """Kills that instance (default: every instance), starts it again and waits until it answers."""
        self.kill(service, index)
        self.start(service, index)
        await self._wait([(service, i) for i in self._indexes(service, index)])

    async def wait_healthy(self, services: Iterable[str] | None = None, timeout: float = 90.0) -> None:
        """Returns once every instance of the given (default: started) services answers /healthz; raises with
        its log otherwise."""
        names = list(services) if services is not None else list(dict.fromkeys(self._started()))
        await self._wait([(name, i) for name in names for i in range(self.instances[name])], timeout)

    def _started(self) -> list[str]:
        return [
            service
            for service in SERVICES
            for i in range(self.instances[service])
            if instance_name(service, i) in self._processes
        ]

    async def _wait(self, waiting: list[tuple[str, int]], timeout: float = 90.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while waiting:
            for service, i in list(waiting):
                port = self.instance_ports[service][i]
                # An instance that exited is reported even if its port answers: another process may hold it.
                if self.running(service, i) and await asyncio.to_thread(processes.answers, port, "/healthz", 1.0):
                    waiting.remove((service, i))
                elif not self.running(service, i) or loop.time() > deadline:
                    state = "exited" if not self.running(service, i) else f"did not answer within {timeout}s"
                    name = instance_name(service, i)
                    raise RuntimeError(f"{name} {state}; its log ends:\n{self.log_tail(service, index=i)}")
            if waiting:
                await asyncio.sleep(0.2)
