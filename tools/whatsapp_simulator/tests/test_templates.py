"""`GET /{version}/{waba_id}/message_templates`: defaults, custom templates, filters and paging."""

from __future__ import annotations

from typing import Any

import httpx
from waflow_simulator.client import SimulatorClient


async def _list(http: httpx.AsyncClient, ids, query: str = "", token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or ids.token}"}
    return await http.get(f"/v23.0/{ids.waba_id}/message_templates{query}", headers=headers)


async def test_every_waba_has_the_defaults(sim: SimulatorClient, http, ids) -> None:
    response = await _list(http, ids)

    assert response.status_code == 200
    data = response.json()["data"]
    by_name = {t["name"]: t for t in data}
    assert by_name["open_template"] == {
        "name": "open_template",
        "status": "APPROVED",
        "category": "UTILITY",
        "language": "en",
        "components": by_name["open_template"]["components"],
        "parameter_format": "POSITIONAL",
        "id": by_name["open_template"]["id"],
    }
    assert by_name["open_template"]["components"][0]["text"] == "Goodbye {{1}}. See you soon!"
    assert {t["status"] for t in data} >= {"APPROVED", "PENDING", "REJECTED"}
    assert any(t["category"] == "MARKETING" and t["status"] == "APPROVED" for t in data)
    assert any(t["parameter_format"] == "NAMED" for t in data)
    assert all(
        list(t) == ["name", "status", "category", "language", "components", "parameter_format", "id"] for t in data
    )


async def test_put_replaces_custom_templates_and_keeps_defaults(sim: SimulatorClient, http, ids) -> None:
    custom: dict[str, Any] = {"name": "custom_a", "language": "en", "components": [{"type": "BODY", "text": "A"}]}
    listed = await sim.put_templates(ids.waba_id, [custom, {**custom, "name": "open_template", "id": "42"}])
    assert [t.name for t in listed[:2]] == ["custom_a", "open_template"]
    assert listed[1].id == "42"
    assert sum(t.name == "open_template" for t in listed) == 1

    await sim.put_templates(ids.waba_id, [{**custom, "name": "custom_b"}])

    names = [t["name"] for t in (await _list(http, ids)).json()["data"]]
    assert "custom_b" in names
    assert "custom_a" not in names
    assert "open_template" in names


async def test_paging_follows_cursors_through_everything(sim: SimulatorClient, http, ids) -> None:
    everything = [t["name"] for t in (await _list(http, ids)).json()["data"]]
    seen: list[str] = []
    response = await _list(http, ids, "?limit=2")
    pages = 0
    while True:
        body = response.json()
        pages += 1
        seen.extend(t["name"] for t in body["data"])
        assert set(body["paging"]["cursors"]) == {"before", "after"}
        if "next" not in body["paging"]:
            break
        response = await http.get(body["paging"]["next"], headers={"Authorization": f"Bearer {ids.token}"})
    assert seen == everything
    assert pages == (len(everything) + 1) // 2

    second = (await _list(http, ids, "?limit=2")).json()["paging"]["next"]
    page = (await http.get(second, headers={"Authorization": f"Bearer {ids.token}"})).json()
    back = (await http.get(page["paging"]["previous"], headers={"Authorization": f"Bearer {ids.token}"})).json()
    assert [t["name"] for t in back["data"]] == everything[:2]


async def test_filters_and_fields(sim: SimulatorClient, http, ids) -> None:
    approved = (await _list(http, ids, "?status=APPROVED")).json()["data"]
    assert approved
    assert {t["status"] for t in approved} == {"APPROVED"}

    named = (await _list(http, ids, "?name=open&fields=name,status")).json()["data"]
    assert named == [{"name": "open_template", "status": "APPROVED", "id": named[0]["id"]}]

    assert (await _list(http, ids, "?name=does_not_exist")).json() == {"data": []}


async def test_listing_needs_a_token_of_that_waba(sim: SimulatorClient, http, ids) -> None:
    await sim.put_number(
        "2", display_phone_number="15550000002", waba_id="other", app_id=ids.app_id, access_token="other-t"
    )

    wrong = await _list(http, ids, token="other-t")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, 190)

    unknown = await http.get("/v23.0/nowhere/message_templates", headers={"Authorization": f"Bearer {ids.token}"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, 100)

    by_query = await http.get(f"/v23.0/{ids.waba_id}/message_templates?access_token={ids.token}")
    assert by_query.status_code == 200


async def test_bad_paging_parameters_are_100(sim: SimulatorClient, http, ids) -> None:
    assert (await _list(http, ids, "?limit=0")).json()["error"]["code"] == 100
    assert (await _list(http, ids, "?after=bogus")).json()["error"]["code"] == 100
