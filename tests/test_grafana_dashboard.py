"""deploy/grafana/waflow.json: a dashboard Grafana can import or provision, every query on a metric the services
register (a renamed metric fails here, not as an empty panel), every family operators watch on some panel."""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

import pytest
from prometheus_client import REGISTRY
from waflow_testing.fixtures import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "waflow.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Every service's wiring: importing it registers each metric the process serves on /metrics.
SERVICES = ("waflow_ingest.main", "waflow_conversation.main", "waflow_contacts.main", "waflow_outbound.main")
# The families an operator of an event platform expects to find on the dashboard.
REQUIRED = (
    "waflow_ingest_webhooks_total",
    "waflow_events_consumed_total",
    "waflow_events_published_total",
    "waflow_handler_seconds_bucket",
    "waflow_dead_letters_total",
    "waflow_consumer_lag",
    "waflow_outbound_results_total",
    "waflow_outbound_permit_wait_seconds_bucket",
    "waflow_http_requests_total",
)
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "summary": ("_count", "_sum", ""),
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found += panel.get("panels", [])
    return [p for p in found if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def registered_samples() -> set[str]:
    """The sample names of every waflow family the services register (a labelled family with no series yet
    counts too)."""
    for module in SERVICES:
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("waflow_"):
            names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def test_every_metric_a_panel_queries_is_one_the_services_register(dashboard: dict[str, Any]) -> None:
    known = registered_samples()
    used = {name for expr in expressions(dashboard) for name in re.findall(r"\bwaflow_[a-z0-9_]+", expr)}
    assert used, "the dashboard queries nothing"
    assert used - known == set(), f"queried but never registered: {sorted(used - known)}"
    assert set(REQUIRED) <= used, f"not on the dashboard: {sorted(set(REQUIRED) - used)}"


def test_every_query_takes_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


def test_panels_have_unique_ids_and_histograms_are_read_as_quantiles(dashboard: dict[str, Any]) -> None:
    every = [p["id"] for p in dashboard["panels"]]
    assert len(every) == len(set(every))
    for expr in expressions(dashboard):
        if "_bucket" in expr:
            assert expr.startswith("histogram_quantile("), expr
            assert "by (le" in expr, expr
        # never one series per tenant or customer
        assert not re.search(r"\b(tenant_id|tenant|wa_id|user_id|customer)\b", expr), expr
