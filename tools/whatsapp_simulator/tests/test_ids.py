"""Wamids shaped like Meta's."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from waflow_simulator.ids import inbound_wamid, outbound_wamid, template_id, wa_id_of

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "whatsapp"


def test_generated_wamids_have_meta_layout() -> None:
    inbound, outbound = inbound_wamid("15557654321"), outbound_wamid("447700900123")

    assert inbound.startswith("wamid.HBgLMTU1NTc2NTQzMjEVAgASGBQz")  # same prefix as Meta's inbound ids
    assert outbound.startswith("wamid.HBgMNDQ3NzAwOTAwMTIzFQIAERgS")
    assert wa_id_of(inbound) == "15557654321"
    assert wa_id_of(outbound) == "447700900123"
    raw = base64.b64decode(inbound.removeprefix("wamid."))
    assert raw.endswith(b"\x00")
    assert len({inbound_wamid("15557654321") for _ in range(1000)}) == 1000


def test_wa_id_is_read_from_the_sample_wamids() -> None:
    sample = json.loads((FIXTURES / "text_message.json").read_text())
    message = sample["entry"][0]["changes"][0]["value"]["messages"][0]
    assert wa_id_of(message["id"]) == message["from"]


def test_wa_id_of_rejects_foreign_ids() -> None:
    assert wa_id_of("not-a-wamid") is None
    assert wa_id_of("wamid.!!!") is None
    assert wa_id_of("wamid." + base64.b64encode(b"hello").decode()) is None


def test_template_ids_are_stable_and_numeric() -> None:
    first = template_id("104882910347561", "open_template", "en")
    assert first == template_id("104882910347561", "open_template", "en")
    assert first.isdigit()
    assert len(first) == 16
    assert first != template_id("104882910399902", "open_template", "en")
