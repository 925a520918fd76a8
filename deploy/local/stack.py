"""Brings the local waflow stack up or down: topics, the dev app and tenant, the simulator and the four services.

python deploy/local/stack.py up      (after deploy/local/infra.sh start: Kafka and FerretDB)
python deploy/local/stack.py down
python deploy/local/stack.py status
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from waflow_common.admin import Admin, AppFile, TenantFile
from waflow_common.kafka import ensure_topics
from waflow_common.secrets import generate_key
from waflow_common.settings import CommonSettings
from waflow_simulator.client import SimulatorClient

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("WAFLOW_DATA", REPO / ".data" / "local"))
DEV = REPO / "deploy" / "dev"
BIN = Path(sys.executable).parent

# name, command, port variable, default port
PROCESSES = [
    ("simulator", "waflow-simulator", "SIMULATOR_PORT", 8090),
    ("ingest", "waflow-ingest", "INGEST_PORT", 8001),
    ("conversation", "waflow-conversation", "CONVERSATION_PORT", 8002),
    ("contacts", "waflow-contacts", "CONTACTS_PORT", 8003),
    ("outbound", "waflow-outbound", "OUTBOUND_PORT", 8004),
]


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


def port_of(var: str, default: int) -> int:
    return int(os.environ.get(var, default))


def pid_alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def start_processes(env: dict[str, str]) -> None:
    logs = DATA / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name, command, _, _ in PROCESSES:
        pid_file = DATA / f"{name}.pid"
        if pid_file.exists() and pid_alive(pid_file):
            continue
        executable = BIN / command
        if not executable.exists():
            print(f"  ! {name}: {command} is not installed (run `uv sync`)")
            continue
        with (logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [str(executable)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        pid_file.write_text(str(process.pid))


def wait_healthy(timeout: float = 90.0) -> dict[str, bool]:
    deadline = time.monotonic() + timeout
    status = {name: False for name, *_ in PROCESSES}
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline and not all(status.values()):
            for name, _, var, default in PROCESSES:
                if status[name]:
                    continue
                with contextlib.suppress(httpx.HTTPError):
                    status[name] = http.get(f"http://127.0.0.1:{port_of(var, default)}/healthz").status_code == 200
                if not status[name] and not pid_alive(DATA / f"{name}.pid"):
                    break
            time.sleep(0.3)
    return status


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
    ingest = port_of("INGEST_PORT", 8001)
    async with SimulatorClient(f"http://127.0.0.1:{port_of('SIMULATOR_PORT', 8090)}") as sim:
        await sim.put_app(
            app.app_id,
            app_secret=app.app_secret,
            webhook_url=f"http://127.0.0.1:{ingest}/webhooks/whatsapp/{app.app_id}",
        )
        for number in tenant.phone_numbers:
            await sim.put_number(
                number.phone_number_id,
                display_phone_number=number.display_phone_number,
                waba_id=number.waba_id,
                app_id=app.app_id,
                access_token=tenant.access_token,
                rate_per_second=number.rate_per_second,
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
    print(f"  MongoDB (FerretDB)   {env['MONGODB_URI']}")
    for name, _, var, default in PROCESSES:
        state = "up" if status[name] else f"NOT healthy (see {DATA / 'logs' / name}.log)"
        print(f"  {name:<20} http://127.0.0.1:{port_of(var, default)}  {state}  (API docs: /docs)")
    print(
        f"\nDev tenant '{tenant.tenant_id}', API key: {key}, business number {number.display_phone_number} "
        f"(phone_number_id {number.phone_number_id})"
    )
    sim = port_of("SIMULATOR_PORT", 8090)
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
    print(f"  curl -s http://127.0.0.1:{port_of('CONVERSATION_PORT', 8002)}/v1/chats -H 'Authorization: Bearer {key}'")
    print("Watch events on a topic:  uv run waflow-admin topics tail wa.inbound.v1")
    print("Stop everything:          make down")
    return 0 if all(status.values()) else 1


def down() -> int:
    for name, *_ in reversed(PROCESSES):
        pid_file = DATA / f"{name}.pid"
        if pid_file.exists() and pid_alive(pid_file):
            pid = int(pid_file.read_text())
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
            print(f"{name} stopped")
        pid_file.unlink(missing_ok=True)
    return 0


def status() -> int:
    for name, *_ in PROCESSES:
        pid_file = DATA / f"{name}.pid"
        print(f"{name}: {'running' if pid_file.exists() and pid_alive(pid_file) else 'stopped'}")
    return 0


if __name__ == "__main__":
    commands = {"up": up, "down": down, "status": status}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    sys.exit(commands[sys.argv[1]]())
