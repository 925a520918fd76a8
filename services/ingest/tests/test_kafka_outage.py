"""Ingest on a broker of its own that the test stops: 503 while Kafka is down, and Meta's retry then succeeds."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest
from waflow_common import topics
from waflow_common.admin import Admin, AppFile
from waflow_common.kafka import ensure_topics
from waflow_common.settings import CommonSettings
from waflow_ingest.main import IngestSettings, create_app
from waflow_ingest.signature import sign
from waflow_testing.fixtures import INFRA, REPO, TENANT_A, TopicReader, free_port, put_test_tenant, serve, settings_for

pytestmark = pytest.mark.integration


class DedicatedKafka:
    """A single-node Kafka started from the project's jars, on free ports, that a test may stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.env = os.environ | {
            "WAFLOW_DATA": str(REPO / ".data" / f"outage-{uuid.uuid4().hex[:6]}"),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(free_port()),
            "KAFKA_HEAP": "256m",
        }

    def run(self, action: str) -> None:
        subprocess.run(["bash", str(INFRA), action, "kafka"], env=self.env, check=True)


@pytest.fixture(scope="module")
def kafka() -> Iterator[DedicatedKafka]:
    broker = DedicatedKafka()
    broker.run("start")
    try:
        yield broker
    finally:
        subprocess.run(["bash", str(INFRA), "wipe"], env=broker.env, check=False)


async def test_503_while_kafka_is_down_then_the_retry_is_accepted(
    kafka: DedicatedKafka, settings_env: dict[str, str]
) -> None:
    env = settings_env | {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka.port}"}
    settings = settings_for(IngestSettings, env, kafka_publish_timeout_seconds=2.0)
    await ensure_topics(settings)
    async with Admin(settings_for(CommonSettings, env)) as admin:
        await admin.put_app(
            AppFile(
                app_id=TENANT_A.app_id, name="t", app_secret=TENANT_A.app_secret, verify_token=TENANT_A.verify_token
            )
        )
        while admin.registry.app(TENANT_A.app_id) is None:
            await admin.registry.stop()
            await admin.registry.start()
        await put_test_tenant(admin, TENANT_A)

    body = (REPO / "tests" / "fixtures" / "whatsapp" / "text_message.json").read_bytes()
    headers = {"X-Hub-Signature-256": sign(TENANT_A.app_secret, body), "X-Correlation-Id": str(uuid.uuid4())}
    async with serve(create_app(settings)) as url, httpx.AsyncClient(timeout=30) as http:
        endpoint = f"{url}/webhooks/whatsapp/{TENANT_A.app_id}"
        assert (await http.post(endpoint, content=body, headers=headers)).status_code == 200

        kafka.run("stop")
        down = await http.post(endpoint, content=body, headers=headers)
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "unavailable"
        assert (await http.get(f"{url}/readyz")).status_code == 503

        kafka.run("start")
        async with TopicReader(settings, topics.INBOUND, from_beginning=True) as inbound:
            retried = await http.post(endpoint, content=body, headers=headers)
            assert retried.status_code == 200, retried.text
            events = await inbound.read(10, timeout=5.0)
    # Every delivery that got a 200 is on the topic, with one event id: consumers see one message.
    assert len(events) >= 2
    assert len({e["event_id"] for e in events}) == 1
