"""Pure rules for a customer's edits and deletions ("revokes") of their own messages (REFERENCE §5).

Meta reports each as a message of its own (`edit{original_message_id, message}`, `revoke{original_message_id}`)
with its own wamid and timestamp. They are not timeline items: they change the message they name. What that
message shows is a function of the *set* of amendments that reached it, so duplicates and any arrival order
(an older edit arriving after a newer one, an edit before its original) end in the same state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

AMENDMENT_TYPES = frozenset({"edit", "revoke"})

# The fields a customer can change by editing (WhatsApp lets them edit a text or a media caption).
EDITABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("body",),
    "image": ("caption",),
    "video": ("caption",),
    "document": ("caption",),
}


def amends_another(content_type: str) -> bool:
    """An edit or a revoke changes an earlier message instead of being one."""
    return content_type in AMENDMENT_TYPES


@dataclass(frozen=True)
class Amendment:
    """One edit or revoke as Meta reported it; `message` is an edit's new content in Meta's shape."""

    wamid: str
    kind: str  # edit | revoke
    at: datetime
    message: dict[str, Any] | None = None


@dataclass(frozen=True)
class Version:
    content: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class AmendedState:
    content: dict[str, Any]  # what the message shows now (the original when never edited)
    edited_at: datetime | None
    history: list[Version] = field(default_factory=list)  # the earlier versions, oldest first
    revoked_at: datetime | None = None


def edited_content(current: dict[str, Any], message: dict[str, Any] | None) -> dict[str, Any]:
    """`current` with what an edit changed: a text's body or a media caption. An edit of another type, or one
    whose content cannot be read, changes nothing visible (it is kept in the message's amendments for audit)."""
    if not isinstance(message, dict):
        return current
    kind = current.get("type")
    if message.get("type") != kind or not isinstance(kind, str):
        return current
    changed = message.get(kind)
    if not isinstance(changed, dict):
        return current
    updates = {name: changed[name] for name in EDITABLE_FIELDS.get(kind, ()) if isinstance(changed.get(name), str)}
    return current | updates if updates else current


def amended_state(original: dict[str, Any], original_at: datetime, amendments: Iterable[Amendment]) -> AmendedState:
    """The message after every amendment that reached it: edits applied in timestamp order (ties broken by
    wamid, so the result never depends on arrival order), each earlier version kept in the history; revoked
    from the earliest revoke on (the content stays in the document for audit, the caller hides it)."""
    unique = {a.wamid: a for a in amendments}
    ordered = sorted(unique.values(), key=lambda a: (a.at, a.wamid))
    content, version_at = original, original_at
    history: list[Version] = []
    edited_at: datetime | None = None
    for edit in (a for a in ordered if a.kind == "edit"):
        history.append(Version(content, version_at))
        content, version_at, edited_at = edited_content(content, edit.message), edit.at, edit.at
    revokes = [a.at for a in ordered if a.kind == "revoke"]
    return AmendedState(content, edited_at, history, min(revokes) if revokes else None)
