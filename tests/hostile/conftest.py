"""The whole stack as real processes (deploy/local/stack.py), on topics and databases of its own, with the dev
tenant loaded and a little of its data in place, so schemathesis reaches past authentication into real work.

Nothing here imports a service: the suite sees only what a client sees (HTTP and the OpenAPI documents).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from waflow_testing.fixtures import REPO, Infra, free_port

SERVICES = ("simulator", "ingest", "conversation", "contacts", "outbound")
DEV = REPO / "deploy" / "dev"
SCRIPT = REPO / "deploy" / "local" / "stack.py"


@dataclass(frozen=True)
class Stack:
    ports: dict[str, int]
    data: Path
    api_key: str
    app_id: str
    app_secret: str
    phone_number_id: str
    seeded: dict[str, str]

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def log_tail(self, service: str, chars: int = 4000) -> str:
        path = self.data / "logs" / f"{service}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _dev(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DEV / name).read_text())
    return loaded


@pytest.fixture(scope="session")
def stack(infra: Infra) -> Iterator[Stack]:
    ports = {name: free_port() for name in SERVICES}
    run = uuid.uuid4().hex[:6]
    data = REPO / ".data" / f"hostile-{run}"
    env = (
        os.environ
        | {
            "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
            "MONGODB_URI": infra.mongodb_uri,
            "WAFLOW_DATA": str(data),
            "WAFLOW_TOPIC_PREFIX": f"hostile{run}.",
            "WAFLOW_DB_PREFIX": f"hostile{run}_",
            "WHATSAPP_API_BASE_URL": f"http://127.0.0.1:{ports['simulator']}",
            "LOG_LEVEL": "WARNING",
        }
        | {f"{name.upper()}_PORT": str(port) for name, port in ports.items()}
    )
    up = subprocess.run([sys.executable, str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        app, tenant = _dev("app.json"), _dev("tenant.json")
        stack = Stack(
            ports=ports,
            data=data,
            api_key=tenant["api_keys"][0],
            app_id=app["app_id"],
            app_secret=app["app_secret"],
            phone_number_id=tenant["phone_numbers"][0]["phone_number_id"],
            seeded={},
        )
        stack.seeded.update(_seed(stack))
        yield stack
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "down"], env=env, capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", str(data)], check=False)


def _seed(stack: Stack) -> dict[str, str]:
    """A customer who wrote (a chat with a message, a contact), a list, a field and a note: ids that exist."""
    wa_id = "1555" + str(uuid.uuid4().int)[:7]
    with httpx.Client(timeout=10, headers=stack.auth) as http:
        sent = http.post(
            stack.url("simulator") + "/_sim/customers/messages",
            json={
                "phone_number_id": stack.phone_number_id,
                "from": wa_id,
                "name": "Hostile Seed",
                "type": "text",
                "content": {"body": "hello"},
            },
        )
        assert sent.status_code == 200, sent.text
        chat = contact = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (chat and chat["last_message"] and contact):
            chats = http.get(stack.url("conversation") + "/v1/chats").json()["items"]
            chat = next((c for c in chats if c["wa_id"] == wa_id), None)
            found = http.get(stack.url("contacts") + f"/v1/contacts/by-phone/{wa_id}")
            contact = found.json() if found.status_code == 200 else None
            time.sleep(0.1)
        assert chat is not None, "the seed customer's chat never appeared"
        assert chat["last_message"], "the seed customer's message never appeared"
        assert contact is not None, "the seed customer's contact never appeared"
        note = http.post(
            stack.url("conversation") + f"/v1/chats/{chat['chat_id']}/notes", json={"author": "seed", "text": "n"}
        )
        assert note.status_code == 201, note.text
        listed = http.post(stack.url("contacts") + "/v1/lists", json={"name": "seeded list"})
        assert listed.status_code == 201, listed.text
        field = http.post(stack.url("contacts") + "/v1/fields", json={"key": "city", "label": "City", "type": "text"})
        assert field.status_code == 201, field.text
        templates = http.get(stack.url("outbound") + "/v1/templates").json()["templates"]
    return {
        "wa_id": wa_id,
        "chat_id": chat["chat_id"],
        "message_id": chat["last_message"]["message_id"],
        "note_id": note.json()["note_id"],
        "contact_id": contact["contact_id"],
        "list_id": listed.json()["list_id"],
        "template_id": templates[0]["template_id"] if templates else "",
        "phone_number_id": stack.phone_number_id,
    }
