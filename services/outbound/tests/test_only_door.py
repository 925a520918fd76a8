"""Outbound is the only process that calls the WhatsApp Cloud API: no other package's source can reach it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

# What calling the Graph API takes: its base URL setting, Meta's host, the send body, the template listing,
# or a `/{phone_number_id}/messages` path. Each pattern is something only a WhatsApp client writes.
GRAPH_CALLS = {
    "the WhatsApp API base URL": re.compile(r"whatsapp_api_base_url|WHATSAPP_API_BASE_URL"),
    "Meta's Graph host": re.compile(r"graph\.facebook\.com"),
    "a Graph send body": re.compile(r"[\"']messaging_product[\"']"),
    "the template listing edge": re.compile(r"message_templates"),
    "a phone number's /messages path": re.compile(r"\{[a-z_]*(phone_number_id|pnid|number)[a-z_]*\}/messages"),
}
# Where the setting is declared for everyone (reading it is what matters).
DECLARATIONS = {
    REPO / "libs" / "common" / "src" / "waflow_common" / "settings.py": {"the WhatsApp API base URL"},
    # The black-box harness points outbound's setting at the simulator; it calls nothing itself.
    REPO / "libs" / "testing" / "src" / "waflow_testing" / "stack.py": {"the WhatsApp API base URL"},
}


def other_sources() -> list[Path]:
    roots = [*REPO.glob("services/*/src"), *REPO.glob("libs/*/src")]
    return sorted(p for root in roots for p in root.rglob("*.py") if "waflow_outbound" not in p.parts)


def test_the_scan_sees_the_other_packages_and_would_catch_a_call() -> None:
    sources = other_sources()
    assert any("waflow_ingest" in p.parts for p in sources)
    assert any("waflow_common" in p.parts for p in sources)
    caught = [what for what, pattern in GRAPH_CALLS.items() if pattern.search('f"{base}/{phone_number_id}/messages"')]
    assert caught == ["a phone number's /messages path"]
    outbound = (REPO / "services/outbound/src/waflow_outbound/whatsapp.py").read_text()
    assert GRAPH_CALLS["the template listing edge"].search(outbound)


@pytest.mark.parametrize("path", other_sources(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_other_package_calls_whatsapp(path: Path) -> None:
    text = path.read_text()
    allowed = DECLARATIONS.get(path, set())
    found = [what for what, pattern in GRAPH_CALLS.items() if what not in allowed and pattern.search(text)]
    assert found == [], f"{path.relative_to(REPO)} looks like it calls WhatsApp ({found}); only outbound may"
