"""Delivery statuses in MongoDB: Meta's reports merged forward-only, orphans held until their wamid is known, and
outbound's answers (send.accepted brings the wamid, send.rejected the reason).

Same rules as the other repositories here: documents by `_id` alone, each write under its document's lock.
"""

from __future__ import annotations

from waflow_common.events.envelope import Clock
from waflow_common.events.inbound import MessageStatus
from waflow_common.events.outbound import SendAccepted, SendRejected

from waflow_conversation import domain
from waflow_conversation.repository import Collections, Document, MessageNotFound, key
from waflow_conversation.timeline_index import TimelineIndex


def _report(status: MessageStatus) -> Document:
    report: Document = {"status": status.status, "at": domain.millis(status.timestamp)}
    if status.errors:
        report["errors"] = [e.model_dump(mode="json", exclude_none=True) for e in status.errors]
    if status.pricing is not None:
        report["pricing"] = status.pricing.model_dump(mode="json", exclude_none=True)
    if status.conversation is not None:
        report["conversation"] = status.conversation
    return report


def _same_report(a: Document, b: Document) -> bool:
    return bool(a["status"] == b["status"] and a["at"] == b["at"])


def _visible_state(message: Document, reports: list[Document]) -> Document:
    """status, status_at and failure as they follow from the lifecycle and every report (domain rule)."""
    lifecycle = domain.DeliveryState(message["lifecycle_status"], message.get("lifecycle_at"))
    state = domain.delivery_state(lifecycle, [domain.StatusReport(r["status"], r["at"]) for r in reports])
    failure: Document | None = None
    if state.status == "failed":
        meta_failure = [r for r in reports if r["status"] == "failed" and r["at"] == state.at]
        if meta_failure:
            error = (meta_failure[0].get("errors") or [{}])[0]
            failure = {
                "reason": "window_closed" if error.get("code") == 131047 else "meta_error",
                "message": error.get("message") or error.get("title") or "WhatsApp reported the message failed",
                "code": error.get("code"),
                "title": error.get("title"),
            }
        else:
            failure = message.get("rejection")
    sets: Document = {"status": state.status, "status_at": state.at, "failure": failure}
    for field in ("pricing", "conversation"):
        carried = [r[field] for r in sorted(reports, key=lambda r: r["at"]) if field in r]
        if carried:
            sets[field] = carried[-1]
    return sets


class StatusRepository:
    def __init__(self, collections: Collections, clock: Clock, index: TimelineIndex) -> None:
        self._c = collections
        self._clock = clock
        self._index = index

    async def _by_wamid(self, tenant_id: str, wamid: str) -> str | None:
        return self._index.message_for(tenant_id, wamid)

    async def apply_status(self, tenant_id: str, status: MessageStatus) -> None:
        """Forward-only (see domain.delivery_state); a status for an unknown wamid waits as an orphan."""
        message_key = await self._by_wamid(tenant_id, status.wamid)
        if message_key is not None:
            await self._merge_reports(message_key, [_report(status)])
            return
        orphan_key = key(tenant_id, status.wamid)
        async with self._c.hold("orphan_statuses", orphan_key):
            held = await self._c.orphan_statuses.find_one({"_id": orphan_key})
            if held is None:
                await self._c.orphan_statuses.insert_one({"_id": orphan_key, "reports": [_report(status)]})
            else:
                await self._c.orphan_statuses.update_one({"_id": orphan_key}, {"$push": {"reports": _report(status)}})
        # send.accepted may have stored the wamid meanwhile (another topic, another worker): look again, so one
        # of the two always sees the other.
        if await self._by_wamid(tenant_id, status.wamid) is not None:
            await self._adopt_orphans(tenant_id, status.wamid)

    async def _adopt_orphans(self, tenant_id: str, wamid: str) -> None:
        message_key = await self._by_wamid(tenant_id, wamid)
        orphan_key = key(tenant_id, wamid)
        if message_key is None:
            return
        async with self._c.hold("orphan_statuses", orphan_key):
            held = await self._c.orphan_statuses.find_one({"_id": orphan_key})
            if held is None:
                return
            await self._merge_reports(message_key, held["reports"])
            await self._c.orphan_statuses.delete_one({"_id": orphan_key})

    async def _merge_reports(self, message_key: str, new_reports: list[Document]) -> None:
        async with self._c.hold("messages", message_key):
            message = await self._c.messages.find_one({"_id": message_key})
            if message is None:
                raise MessageNotFound(message_key)
            reports: list[Document] = list(message.get("reports", []))
            added = False
            for report in new_reports:
                if not any(_same_report(report, r) for r in reports):
                    reports.append(report)
                    added = True
            if not added:
                return
            reports.sort(key=lambda r: (r["at"], domain.STATUS_RANK.get(r["status"], 9)))
            await self._c.messages.update_one(
                {"_id": message_key}, {"$set": {"reports": reports, **_visible_state(message, reports)}}
            )

    async def accept(self, tenant_id: str, accepted: SendAccepted) -> None:
        """Outbound sent it: the wamid arrives, and any status that came first is applied now."""
        message_id = domain.outbound_message_id(tenant_id, accepted.request_id)
        message_key = key(tenant_id, message_id)
        async with self._c.hold("messages", message_key):
            message = await self._c.messages.find_one({"_id": message_key})
            if message is None:
                return  # not a request of ours
            if message["lifecycle_status"] == "pending":
                now = self._clock()
                changed = message | {"lifecycle_status": "accepted", "lifecycle_at": now}
                await self._c.messages.update_one(
                    {"_id": message_key},
                    {
                        "$set": {
                            "wamid": accepted.wamid,
                            "lifecycle_status": "accepted",
                            "lifecycle_at": now,
                            **_visible_state(changed, message.get("reports", [])),
                        }
                    },
                )
        self._index.know_wamid(tenant_id, accepted.wamid, message_key)
        await self._adopt_orphans(tenant_id, accepted.wamid)

    async def reject(self, tenant_id: str, rejected: SendRejected) -> None:
        message_key = key(tenant_id, domain.outbound_message_id(tenant_id, rejected.request_id))
        rejection: Document = {"reason": rejected.reason, "message": rejected.message}
        if rejected.meta_error is not None:
            rejection |= {"code": rejected.meta_error.code, "title": rejected.meta_error.title}
        async with self._c.hold("messages", message_key):
            message = await self._c.messages.find_one({"_id": message_key})
            if message is None or message["lifecycle_status"] != "pending":
                return
            now = self._clock()
            await self._c.messages.update_one(
                {"_id": message_key},
                {
                    "$set": {
                        "lifecycle_status": "failed",
                        "lifecycle_at": now,
                        "rejection": rejection,
                        "status": "failed",
                        "status_at": now,
                        "failure": rejection,
                    }
                },
            )
