"""`make run`'s stack as real processes: the dev tenant is loaded, every process answers, and a customer's
message written through the simulator shows up in the conversation and contacts APIs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from waflow_testing.fixtures import REPO, Infra, free_port

pytestmark = pytest.mark.e2e

SERVICES = ("simulator", "ingest", "conversation", "contacts", "outbound")
DEV_KEY = "wf_dev_acme_key"
DEV_NUMBER = "118273645501928"


@pytest.fixture(scope="module")
def stack(infra: Infra) -> Iterator[dict[str, int]]:
    ports = {name: free_port() for name in SERVICES}
    run = uuid.uuid4().hex[:6]
    env = (
        os.environ
        | {
            "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
            "MONGODB_URI": infra.mongodb_uri,
            "WAFLOW_DATA": str(REPO / ".data" / f"stack-{run}"),
            "WAFLOW_TOPIC_PREFIX": f"stack{run}.",
            "WAFLOW_DB_PREFIX": f"stack{run}_",
            "WHATSAPP_API_BASE_URL": f"http://127.0.0.1:{ports['simulator']}",
            "LOG_LEVEL": "WARNING",
        }
        | {f"{name.upper()}_PORT": str(port) for name, port in ports.items()}
    )
    script = str(REPO / "deploy" / "local" / "stack.py")
    up = subprocess.run([sys.executable, script, "up"], env=env, capture_output=True, text=True, timeout=180)
    try:
        logs = Path(env["WAFLOW_DATA"]) / "logs"
        tails = {f.name: f.read_text()[-3000:] for f in logs.glob("*.log")} if up.returncode else {}
        assert up.returncode == 0, up.stdout + up.stderr + "\n".join(f"--- {k}\n{v}" for k, v in tails.items())
        assert "waflow is up" in up.stdout
        assert "NOT healthy" not in up.stdout
        yield ports
    finally:
        subprocess.run([sys.executable, script, "down"], env=env, capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", env["WAFLOW_DATA"]], check=False)


async def test_a_customer_message_reaches_the_agents_apis(stack: dict[str, int]) -> None:
    auth = {"Authorization": f"Bearer {DEV_KEY}"}
    wa_id = "1555" + str(uuid.uuid4().int)[:7]
    async with httpx.AsyncClient(timeout=10) as http:
        sent = await http.post(
            f"http://127.0.0.1:{stack['simulator']}/_sim/customers/messages",
            json={
                "phone_number_id": DEV_NUMBER,
                "from": wa_id,
                "name": "Stack Test",
                "type": "text",
                "content": {"body": "hello from the stack test"},
            },
        )
        assert sent.status_code == 200
        assert sent.json()["delivered"] is True
        chat = contact = None
        for _ in range(100):
            chats = (await http.get(f"http://127.0.0.1:{stack['conversation']}/v1/chats", headers=auth)).json()
            chat = next((c for c in chats["items"] if c["wa_id"] == wa_id), None)
            contacts = (await http.get(f"http://127.0.0.1:{stack['contacts']}/v1/contacts", headers=auth)).json()
            contact = next((c for c in contacts["items"] if c["wa_id"] == wa_id), None)
            # The chat can show up a moment before its first message (two writes): wait for both.
            if chat and chat["last_message"] and contact:
                break
            await asyncio.sleep(0.1)
        assert chat is not None
        assert chat["last_message"]["preview"] == "hello from the stack test"
        assert contact is not None
        assert contact["profile_name"] == "Stack Test"
        for name, port in stack.items():
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200, name
        unauthorised = await http.get(f"http://127.0.0.1:{stack['conversation']}/v1/chats")
        assert unauthorised.status_code == 401
