"""Delivery statuses in MongoDB: Meta's reports merged forward-only, orphans held until their wamid is known, and
outbound's answers (send.accepted brings the wamid, send.rejected the reason).

A message's reports are a set (keyed by status and time, `report_keys`) and what it shows follows from that set
and our own lifecycle by domain.delivery_state, so any order and any duplication end in the same state. Each
change is written conditional on the `status_version` it was computed from: a writer that finds the message
changed reads it again, so two instances never lose each other's reports. A status for a wamid not known yet is
held (`orphan_statuses`, by `$push` onto one document per wamid) until the message has that wamid; whoever comes
second of the status and the wamid applies it. Held statuses expire after HELD_DAYS (a TTL index).

Meta echoes the request id we sent as `biz_opaque_callback_data` on every status of that message, so a status
also names its message when send.accepted never comes: outbound reports `outcome_unknown` for a call it cannot
tell reached WhatsApp (its process died, or lost the database, during the call). Such a status gives the message
its wamid, and what Meta reports of it shows from then on, whichever of the two arrives first.
"""

from __future__ import annotations

from waflow_common.events.envelope import Clock
from waflow_common.events.inbound import MessageStatus
from waflow_common.events.outbound import SendAccepted, SendRejected

from waflow_conversation import domain
from waflow_conversation.repository import Collections, Document, MessageNotFound, key
from waflow_conversation.repository_base import unchanged

ATTEMPTS = 50


def _report(status: MessageStatus) -> Document:
    report: Document = {"status": status.status, "at": domain.millis(status.timestamp)}
    if status.errors:
        report["errors"] = [e.model_dump(mode="json", exclude_none=True) for e in status.errors]
    if status.pricing is not None:
        report["pricing"] = status.pricing.model_dump(mode="json", exclude_none=True)
    if status.conversation is not None:
        report["conversation"] = status.conversation
    return report


def _report_key(report: Document) -> str:
    """What makes two reports the same one (Meta's duplicates)."""
    return f"{report['status']}@{report['at'].isoformat()}"


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
    def __init__(self, collections: Collections, clock: Clock) -> None:
        self._c = collections
        self._clock = clock

    async def _by_wamid(self, tenant_id: str, wamid: str) -> str | None:
        found = await self._c.messages.find_one({"tenant_id": tenant_id, "wamid": wamid}, {"_id": 1})
        return str(found["_id"]) if found else None

    async def apply_status(self, tenant_id: str, status: MessageStatus) -> None:
        """Forward-only (see domain.delivery_state); a status for an unknown wamid waits as an orphan."""
        message_key = await self._by_wamid(tenant_id, status.wamid)
        if message_key is not None:
            await self._merge_reports(message_key, [_report(status)])
            return
        if status.biz_opaque_callback_data:
            message_key = await self._wamid_from_status(tenant_id, status.biz_opaque_callback_data, status.wamid)
            if message_key is not None:
                await self._merge_reports(message_key, [_report(status)])
                await self._adopt_orphans(tenant_id, status.wamid)  # its statuses that came without the request id
                return
        await self._c.orphan_statuses.update_one(
            {"_id": key(tenant_id, status.wamid)},
            {
                "$push": {"reports": _report(status)},
                "$inc": {"held": 1},
                "$setOnInsert": {"tenant_id": tenant_id, "wamid": status.wamid, "held_at": self._clock()},
            },
            upsert=True,
        )
        # send.accepted may have stored the wamid meanwhile (another topic, another instance): look again, so one
        # of the two always sees the other.
        await self._adopt_orphans(tenant_id, status.wamid)

    async def _wamid_from_status(self, tenant_id: str, request_id: str, wamid: str) -> str | None:
        """The message of ours that request id made, given the wamid Meta reports for it if it has none yet
        (send.accepted still on its way, or never coming: `outcome_unknown`). None: no such message of ours."""
        message_id = domain.outbound_message_id(tenant_id, request_id)
        message_key = key(tenant_id, message_id)
        await self._c.messages.update_one(
            {"_id": message_key, "wamid": domain.pending_wamid(message_id)},
            {"$set": {"wamid": wamid}, "$inc": {"status_version": 1}},
        )
        found = await self._c.messages.find_one({"_id": message_key}, {"wamid": 1})
        return message_key if found is not None and found["wamid"] == wamid else None

    async def _adopt_orphans(self, tenant_id: str, wamid: str) -> None:
        """Applies the statuses held for this wamid once a message has it, then drops them: only if none was
        added meanwhile (`held` counts them), else the newcomers are applied too."""
        orphan_key = key(tenant_id, wamid)
        for _ in range(ATTEMPTS):
            held = await self._c.orphan_statuses.find_one({"_id": orphan_key})
            if held is None:
                return
            message_key = await self._by_wamid(tenant_id, wamid)
            if message_key is None:
                return
            await self._merge_reports(message_key, held["reports"])
            dropped = await self._c.orphan_statuses.delete_one({"_id": orphan_key, "held": held.get("held")})
            if dropped.deleted_count:
                return

    async def _merge_reports(self, message_key: str, new_reports: list[Document]) -> None:
        for _ in range(ATTEMPTS):
            message = await self._c.messages.find_one({"_id": message_key}, {"outbox": 0})
            if message is None:
                raise MessageNotFound(message_key)
            reports: list[Document] = list(message.get("reports", []))
            keys = {_report_key(r) for r in reports}
            added = False
            for report in new_reports:
                if _report_key(report) not in keys:
                    keys.add(_report_key(report))
                    reports.append(report)
                    added = True
            if not added:
                return
            reports.sort(key=lambda r: (r["at"], domain.STATUS_RANK.get(r["status"], 9)))
            sets = {"reports": reports, "report_keys": sorted(keys), **_visible_state(message, reports)}
            update = {"$set": sets, "$inc": {"status_version": 1}}
            if (await self._c.messages.update_one(unchanged(message, "status_version"), update)).modified_count:
                return
        raise RuntimeError(f"a message kept changing while its statuses were merged: {message_key}")

    async def accept(self, tenant_id: str, accepted: SendAccepted) -> None:
        """Outbound sent it: the wamid arrives, and any status that came first is applied now."""
        message_key = key(tenant_id, domain.outbound_message_id(tenant_id, accepted.request_id))
        for _ in range(ATTEMPTS):
            message = await self._c.messages.find_one({"_id": message_key}, {"outbox": 0})
            if message is None:
                return  # not a request of ours
            if message["lifecycle_status"] != "pending":
                break
            now = self._clock()
            changed = message | {"lifecycle_status": "accepted", "lifecycle_at": now}
            sets = {
                "wamid": accepted.wamid,
                "lifecycle_status": "accepted",
                "lifecycle_at": now,
                **_visible_state(changed, message.get("reports", [])),
            }
            update = {"$set": sets, "$inc": {"status_version": 1}}
            if (await self._c.messages.update_one(unchanged(message, "status_version"), update)).modified_count:
                break
        await self._adopt_orphans(tenant_id, accepted.wamid)

    async def reject(self, tenant_id: str, rejected: SendRejected) -> None:
        """Outbound could not send it, or (`outcome_unknown`) cannot tell: what Meta reported of the message
        meanwhile (its statuses name the request) still shows, as a later positive report beats a failure."""
        message_key = key(tenant_id, domain.outbound_message_id(tenant_id, rejected.request_id))
        rejection: Document = {"reason": rejected.reason, "message": rejected.message}
        if rejected.meta_error is not None:
            rejection |= {"code": rejected.meta_error.code, "title": rejected.meta_error.title}
        for _ in range(ATTEMPTS):
            message = await self._c.messages.find_one({"_id": message_key}, {"outbox": 0})
            if message is None or message["lifecycle_status"] != "pending":
                return
            now = self._clock()
            lifecycle: Document = {"lifecycle_status": "failed", "lifecycle_at": now, "rejection": rejection}
            sets = lifecycle | _visible_state(message | lifecycle, message.get("reports", []))
            update = {"$set": sets, "$inc": {"status_version": 1}}
            if (await self._c.messages.update_one(unchanged(message, "status_version"), update)).modified_count:
                return
        raise RuntimeError(f"a message kept changing while its rejection was stored: {message_key}")
