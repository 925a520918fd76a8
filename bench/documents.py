"""Documents shaped like the ones the services store, for benchmarks that exercise storage directly."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any


def chat_document(n: int, now: datetime, *, contact: bool = False) -> dict[str, Any]:
    """Conversation's chat number `n` of tenant "tenant_bench", last active n seconds after `now`; with `contact`,
    it shows a contact of two tags, one list and one field."""
    wamid = "wamid.BENCH" + uuid.uuid4().hex
    shown = {
        "contact_id": f"ct_{n:024x}",
        "name": f"Name {n}",
        "profile_name": f"Customer {n}",
        "phone_e164": f"+1555{n:07d}",
        "tags": ["vip", "lead"],
        "lists": [{"list_id": "l_news", "name": "Newsletter"}],
        "fields": {"city": "Milan"},
        "deleted": False,
        "blacklisted": False,
    }
    return {
        "_id": f"tenant_bench:ch_{n:024x}",
        "chat_id": f"ch_{n:024x}",
        "tenant_id": "tenant_bench",
        "phone_number_id": "900000000000091",
        "wa_id": f"1555{n:07d}",
        "profile_name": f"Customer {n}",
        "created_at": now,
        "contact": shown if contact else None,
        "contact_version": 3 if contact else 0,
        "last_activity_at": now + timedelta(seconds=n),
        "last_message": {"message_id": f"msg_{n:024x}", "wamid": wamid, "direction": "in", "type": "text"}
        | {"preview": "a message preview of some length", "at": now},
        "last_message_at": now,
        "unread_count": n % 3,
        "manual_unread": False,
        "manual_unread_ids": [],
        "last_inbound_wamid": wamid,
        "last_inbound_at": now,
        "window_opened_at": now,
        "window_expires_at": now,
        "window_state": "open",
        "applied": [f"msg_{uuid.uuid4().hex[:24]}" for _ in range(8)],
        "outbox": [],
    }
