"""The pure rules of a customer's edits and revokes: any order and any duplication end in the same message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from waflow_conversation import domain
from waflow_conversation.domain_amendments import Amendment, Version, amended_state, amends_another, edited_content

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
TEXT = {"type": "text", "body": "I ordered 2"}


def edit(wamid: str, seconds: int, body: str) -> Amendment:
    return Amendment(wamid, "edit", T0 + timedelta(seconds=seconds), {"type": "text", "text": {"body": body}})


def revoke(wamid: str, seconds: int) -> Amendment:
    return Amendment(wamid, "revoke", T0 + timedelta(seconds=seconds))


def test_an_edit_shows_the_new_text_and_keeps_the_old_one() -> None:
    state = amended_state(TEXT, T0, [edit("e1", 30, "I ordered 3")])
    assert state.content == {"type": "text", "body": "I ordered 3"}
    assert state.edited_at == T0 + timedelta(seconds=30)
    assert state.history == [Version(TEXT, T0)]
    assert state.revoked_at is None


def test_edits_apply_in_timestamp_order_whatever_order_they_arrive_in() -> None:
    older, newer = edit("e1", 10, "three"), edit("e2", 20, "four")
    for arrivals in ([older, newer], [newer, older], [newer, older, newer, older]):
        state = amended_state(TEXT, T0, arrivals)
        assert state.content["body"] == "four"  # a late older edit never overwrites a newer one
        assert state.edited_at == newer.at
        assert [v.content["body"] for v in state.history] == ["I ordered 2", "three"]
        assert [v.at for v in state.history] == [T0, older.at]


def test_a_caption_edit_changes_the_caption_and_keeps_the_media() -> None:
    image = {"type": "image", "id": "1479", "mime_type": "image/jpeg", "caption": "the box"}
    change = Amendment("e1", "edit", T0, {"type": "image", "image": {"id": "1479", "caption": "the lid"}})
    assert amended_state(image, T0, [change]).content == image | {"caption": "the lid"}


def test_an_edit_that_cannot_be_read_changes_nothing_visible() -> None:
    assert edited_content(TEXT, None) == TEXT
    assert edited_content(TEXT, {"type": "image", "image": {"caption": "x"}}) == TEXT
    assert edited_content(TEXT, {"type": "text", "text": "not an object"}) == TEXT
    assert edited_content(TEXT, {"type": "text", "text": {"body": 5}}) == TEXT
    location = {"type": "location", "latitude": 1.0, "longitude": 2.0}
    assert edited_content(location, {"type": "location", "location": {"latitude": 9.0}}) == location


def test_a_revoke_marks_the_message_revoked_from_the_first_one() -> None:
    state = amended_state(TEXT, T0, [revoke("r2", 50), edit("e1", 10, "three"), revoke("r1", 40)])
    assert state.revoked_at == T0 + timedelta(seconds=40)
    assert state.content["body"] == "three"  # kept (for audit); the API hides it


amendments = st.one_of(
    st.builds(
        edit,
        wamid=st.sampled_from(["e1", "e2", "e3", "e4"]),
        seconds=st.integers(0, 100),
        body=st.sampled_from(["a", "b", "c"]),
    ),
    st.builds(revoke, wamid=st.sampled_from(["r1", "r2"]), seconds=st.integers(0, 100)),
)


@given(st.lists(amendments, max_size=8), st.randoms())
def test_any_order_and_any_duplication_end_in_the_same_state(arrivals: list[Amendment], rnd: Any) -> None:
    # One amendment per wamid (Meta's duplicates are the same record again).
    unique = list({a.wamid: a for a in arrivals}.values())
    shuffled = unique + unique[: len(unique) // 2]
    rnd.shuffle(shuffled)
    assert amended_state(TEXT, T0, shuffled) == amended_state(TEXT, T0, unique)


def test_edits_and_revokes_are_not_messages_of_their_own() -> None:
    for kind in ("edit", "revoke"):
        assert amends_another(kind)
        assert not domain.counts_as_unread(kind)
        assert not domain.shown_as_own_entry(kind)
    assert not amends_another("text")
    assert not amends_another("unsupported")


def test_a_revoked_message_is_previewed_as_deleted() -> None:
    message: dict[str, Any] = {
        "message_id": "msg_1",
        "wamid": "wamid.1",
        "direction": "in",
        "type": "text",
        "content": TEXT,
        "at": T0,
    }
    assert domain.last_message_view(message)["preview"] == "I ordered 2"
    revoked = domain.last_message_view(message | {"revoked_at": T0})
    assert revoked == {
        "message_id": "msg_1",
        "wamid": "wamid.1",
        "direction": "in",
        "type": "text",
        "preview": domain.REVOKED_PREVIEW,
        "at": T0,
    }
    assert domain.last_message_view(message | {"wamid": "pending:msg_1", "direction": "out"})["wamid"] is None
