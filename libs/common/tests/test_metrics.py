"""The shared metrics without Kafka: bounded labels, what counts as published and as a dead letter, REST calls by
route template (never by path, which holds ids)."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import REGISTRY
from waflow_common.http import install_correlation
from waflow_common.metrics import BoundedLabel, published, published_headers


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_bounded_label_keeps_the_values_it_saw_first_and_folds_the_rest() -> None:
    label = BoundedLabel(2, max_length=5)
    assert [label(v) for v in ("a", "b", "c", "a", "b", "d")] == ["a", "b", "other", "a", "b", "other"]
    assert BoundedLabel(5, max_length=5)("abcdefgh") == "abcde"


def test_a_record_on_a_dlq_topic_is_a_dead_letter_and_any_other_an_event() -> None:
    events = sample("waflow_events_published_total", topic="metrics.test.v1", event_type="thing.done")
    letters = sample("waflow_dead_letters_total", topic="metrics.test.v1", reason="BrokenThing")
    published("metrics.test.v1", "thing.done")
    published_headers("metrics.test.v1", [("tenant_id", b"t"), ("event_type", b"thing.done")])
    published_headers("metrics.test.v1.dlq", [("event_type", b"thing.done"), ("dlq_error_type", b"BrokenThing")])
    published("metrics.test.v1", None)
    assert sample("waflow_events_published_total", topic="metrics.test.v1", event_type="thing.done") == events + 2
    assert sample("waflow_events_published_total", topic="metrics.test.v1", event_type="none") >= 1
    assert sample("waflow_dead_letters_total", topic="metrics.test.v1", reason="BrokenThing") == letters + 1
    assert sample("waflow_events_published_total", topic="metrics.test.v1.dlq", event_type="thing.done") == 0


async def test_rest_calls_are_counted_by_route_template_and_status() -> None:
    app = FastAPI()

    @app.get("/v1/metric-things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"thing_id": thing_id}

    install_correlation(app)
    route = "/v1/metric-things/{thing_id}"
    ok = sample("waflow_http_requests_total", method="GET", route=route, status="200")
    missing = sample("waflow_http_requests_total", method="GET", route="unmatched", status="404")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        for thing_id in ("a1", "b2", "c3"):
            assert (await client.get(f"/v1/metric-things/{thing_id}")).status_code == 200
        assert (await client.get("/v1/no-such-route")).status_code == 404
    assert sample("waflow_http_requests_total", method="GET", route=route, status="200") == ok + 3
    assert sample("waflow_http_requests_total", method="GET", route="unmatched", status="404") == missing + 1
    assert sample("waflow_http_request_seconds_count", method="GET", route=route) >= 3
    assert sample("waflow_http_requests_total", method="GET", route="/v1/metric-things/a1", status="200") == 0
