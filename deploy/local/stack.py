"""Brings the local waflow stack up or down: topics, the dev app and tenant, the simulator and the four services.

python deploy/local/stack.py up      (after deploy/local/infra.sh start: Kafka and the database server)
python deploy/local/stack.py down
python deploy/local/stack.py status

WAFLOW_SCALE=N (`make run SCALE=N`) starts N processes of each service (the simulator stays one): instance i > 1
is named `<service>-<i>` and listens on the service's port + 100·(i-1). Instances of a service share its consumer
group, so Kafka splits the partitions between them; any of them answers any tenant's REST call.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from waflow_common import processes
from waflow_common.admin import Admin, AppFile, TenantFile
from waflow_common.kafka import ensure_topics
from waflow_common.processes import BY_NAME, PROCESSES
from waflow_common.secrets import generate_key
from waflow_common.settings import CommonSettings
from waflow_simulator.client import SimulatorClient

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("WAFLOW_DATA", REPO / ".data" / "local"))
DEV = REPO / "deploy" / "dev"
SCALED = ("ingest", "conversation", "contacts", "outbound")


@dataclass(frozen=True)
class Instance:
    spec: processes.ProcessSpec
    index: int  # 1-based

    @property
    def name(self) -> str:
        return self.spec.name if self.index == 1 else f"{self.spec.name}-{self.index}"

    def port(self) -> int:
        return self.spec.port() + 100 * (self.index - 1)

    def env(self, env: dict[str, str]) -> dict[str, str]:
        return env | {self.spec.port_variable: str(self.port())}


def scale() -> int:
    value = os.environ.get("WAFLOW_SCALE", "1")
    if not value.isdigit() or not 1 <= int(value) <= 20:
        sys.exit(f"WAFLOW_SCALE must be a whole number from 1 to 20, not {value!r}")
    return int(value)


def instances(count: int | None = None) -> list[Instance]:
    """Every process of the stack; `down` and `status` look at as many as a pid file exists for."""
    count = scale() if count is None else count
    return [
        Instance(spec, index) for spec in PROCESSES for index in range(1, (count if spec.name in SCALED else 1) + 1)
    ]


def running_instances() -> list[Instance]:
    return [i for i in instances(20) if i.index == 1 or (DATA / f"{i.name}.pid").exists()]


def secrets_key() -> str:
    """One key per local stack, made on first start and kept beside its data (never committed)."""
    path = DATA / "secrets.key"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        path.write_text(generate_key())
        path.chmod(0o600)
    return path.read_text().strip()


def stack_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}")
    env.setdefault("MONGODB_URI", f"mongodb://127.0.0.1:{os.environ.get('MONGO_PORT', '27017')}")
    env.setdefault("WHATSAPP_API_BASE_URL", f"http://127.0.0.1:{os.environ.get('SIMULATOR_PORT', '8090')}")
    env["WAFLOW_SECRETS_KEY"] = secrets_key()
    return env


def pid_of(name: str) -> int | None:
    """The pid in the process's pid file if that process still runs."""
    try:
        pid = int((DATA / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if processes.alive(pid) else None


def start_processes(env: dict[str, str]) -> None:
    for instance in instances():
        if pid_of(instance.name) is not None:
            continue
        try:
            process = processes.spawn(instance.spec, instance.env(env), DATA / "logs" / f"{instance.name}.log")
        except FileNotFoundError as exc:
            print(f"  ! {exc}")
            continue
        (DATA / f"{instance.name}.pid").write_text(str(process.pid))


def wait_healthy(timeout: float = 90.0) -> dict[str, bool]:
    deadline = time.monotonic() + timeout
    status = {instance.name: False for instance in instances()}
    while time.monotonic() < deadline and not all(status.values()):
        for instance in instances():
            if status[instance.name]:
                continue
            status[instance.name] = processes.answers(instance.port())
            if not status[instance.name] and pid_of(instance.name) is None:
                break
        time.sleep(0.3)
    return status


def database_server() -> str:
    """Which server deploy/local/infra.sh started (it writes the name beside its data)."""
    try:
        return (DATA / "mongo.server").read_text().strip() or "MongoDB"
    except OSError:
        return "MongoDB"


async def load_dev_tenant(env: dict[str, str]) -> tuple[AppFile, TenantFile]:
    settings = CommonSettings.model_validate(
        {k.lower(): v for k, v in env.items() if k.lower() in CommonSettings.model_fields}
    )
    await ensure_topics(settings)
    app = AppFile.model_validate_json((DEV / "app.json").read_text())
    tenant = TenantFile.model_validate_json((DEV / "tenant.json").read_text())
    async with Admin(settings) as admin:
        await admin.put_app(app)
        for _ in range(100):
            if admin.registry.app(app.app_id):
                break
            await asyncio.sleep(0.05)
        await admin.put_tenant(tenant)
    return app, tenant


async def configure_simulator(app: AppFile, tenant: TenantFile) -> None:
    async with SimulatorClient(f"http://127.0.0.1:{BY_NAME['simulator'].port()}") as sim:
        await sim.put_business(
            app.app_id,
            app_secret=app.app_secret,
            webhook_url=f"http://127.0.0.1:{BY_NAME['ingest'].port()}/webhooks/whatsapp/{app.app_id}",
            access_token=tenant.access_token,
            numbers=tenant.phone_numbers,
        )


def up() -> int:
    env = stack_env()
    app, tenant = asyncio.run(load_dev_tenant(env))
    start_processes(env)
    status = wait_healthy()
    if status.get("simulator"):
        asyncio.run(configure_simulator(app, tenant))
    number = tenant.phone_numbers[0]
    key = tenant.api_keys[0] if tenant.api_keys else "<the key waflow-admin printed>"
    print("\nwaflow is up:")
    print(f"  Kafka                {env['KAFKA_BOOTSTRAP_SERVERS']}")
    print(f"  Database ({database_server()})".ljust(23) + env["MONGODB_URI"])
    for instance in instances():
        state = "up" if status[instance.name] else f"NOT healthy (see {DATA / 'logs' / instance.name}.log)"
        print(f"  {instance.name:<20} http://127.0.0.1:{instance.port()}  {state}  (API docs: /docs)")
    print(
        f"\nDev tenant '{tenant.tenant_id}', API key: {key}, business number {number.display_phone_number} "
        f"(phone_number_id {number.phone_number_id})"
    )
    sim = BY_NAME["simulator"].port()
    print("\nMake a customer write in:")
    body = {
        "phone_number_id": number.phone_number_id,
        "from": "15557654321",
        "name": "Maria Lopez",
        "type": "text",
        "content": {"body": "Hi! Is my order shipped?"},
    }
    print(
        f"  curl -s -X POST http://127.0.0.1:{sim}/_sim/customers/messages -H 'Content-Type: application/json' \\\n"
        f"       -d '{json.dumps(body)}'"
    )
    print(f"  curl -s http://127.0.0.1:{BY_NAME['conversation'].port()}/v1/chats -H 'Authorization: Bearer {key}'")
    print("Watch events on a topic:  uv run waflow-admin topics tail wa.inbound.v1")
    print("Stop everything:          make down")
    return 0 if all(status.values()) else 1


def down() -> int:
    for instance in reversed(running_instances()):
        pid = pid_of(instance.name)
        if pid is not None:
            processes.stop(pid)
            print(f"{instance.name} stopped")
        (DATA / f"{instance.name}.pid").unlink(missing_ok=True)
    return 0


def status() -> int:
    for instance in running_instances():
        print(f"{instance.name}: {'running' if pid_of(instance.name) is not None else 'stopped'}")
    return 0


if __name__ == "__main__":
    commands = {"up": up, "down": down, "status": status}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]]())
