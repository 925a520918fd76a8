"""waflow-admin dlq: a record a consumer gave up on, redriven once its consumer is fixed, is applied once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import pytest
from waflow_common import dlq, topics
from waflow_common.admin import main
from waflow_common.events.conversation import NoteAdded, conversation_adapter
from waflow_common.events.envelope import Envelope
from waflow_common.kafka import Consumer, EventPublisher, ensure_topics, make_broker
from waflow_common.settings import CommonSettings
from waflow_testing.fixtures import eventually, note_event

pytestmark = pytest.mark.integration


async def test_a_fixed_record_redriven_is_applied_once_and_a_purge_empties_the_dlq(
    topics_ready: CommonSettings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = topics_ready.model_copy(update={"waflow_topic_prefix": f"dlq{uuid.uuid4().hex[:6]}."})
    await ensure_topics(settings, [s for s in topics.all_topics() if s.name.startswith(topics.CONVERSATION)])
    fixed = False
    applied: Counter[str] = Counter()

    async def handle(event: Envelope[NoteAdded]) -> None:
        if event.payload.text == "fragile" and not fixed:
            raise RuntimeError("this version cannot cope with it")
        applied[event.payload.text] += 1

    broker = make_broker(settings, client_id="dlq-test")
    Consumer(broker, settings, group_id="notes", retry_delay_seconds=0.01).subscribe(
        topics.CONVERSATION, conversation_adapter, handle
    )
    publisher = EventPublisher(broker, settings)
    await broker.start()
    try:
        await publisher.publish(note_event("fragile"))
        await publisher.publish(note_event("fine"))
        await eventually(lambda: applied["fine"] == 1, what="the record after the poison applied")

        async def lettered() -> bool:
            found = {s["topic"]: s for s in await dlq.summary(settings)}
            return bool(found[topics.dlq(topics.CONVERSATION)]["not_redriven"] == 1)

        await eventually(lettered, what="the record dead-lettered")
        fixed = True  # the consumer's fix is deployed

        dry = await dlq.redrive(settings, topics.CONVERSATION, dry_run=True)
        assert [(d["consumer"], d["error_type"], d["redriven"]) for d in dry] == [("notes", "RuntimeError", False)]
        await asyncio.sleep(1)
        assert applied["fragile"] == 0

        done = await dlq.redrive(settings, topics.dlq(topics.CONVERSATION))
        assert [(d["to"], d["redriven"]) for d in done] == [(settings.topic(topics.CONVERSATION), True)]
        await eventually(lambda: applied["fragile"] == 1, what="the redriven record applied")
        assert await dlq.redrive(settings, topics.CONVERSATION) == []  # redriven once: nothing left to redrive
        held = {s["topic"]: s for s in await dlq.summary(settings)}[topics.dlq(topics.CONVERSATION)]
        assert (held["letters"], held["not_redriven"]) == (1, 0)
        await asyncio.sleep(1)
        assert applied == Counter({"fine": 1, "fragile": 1})
    finally:
        await broker.stop()

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    monkeypatch.setenv("WAFLOW_TOPIC_PREFIX", settings.waflow_topic_prefix)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["dlq", "show", topics.CONVERSATION]) == 0
    [shown] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (shown["consumer"], shown["error_type"]) == ("notes", "RuntimeError")
    assert "cannot cope" in shown["error"]
    assert json.loads(shown["value"])["payload"]["text"] == "fragile"

    assert await dlq.purge(settings, topics.CONVERSATION) == 1
    assert await dlq.show(settings, topics.CONVERSATION) == []
    assert await asyncio.to_thread(main, ["dlq", "show", "no.such.topic"]) == 2
