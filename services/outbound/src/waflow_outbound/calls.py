"""What a job asks of WhatsApp: its kind, the `/messages` body it makes, and why it may be refused before any call."""

from __future__ import annotations

from typing import Any

from waflow_common.events.outbound import RejectReason

from waflow_outbound.catalog import TemplateCatalog
from waflow_outbound.domain import CallKind, MetaFailure
from waflow_outbound.domain_templates import TemplateParamsError, bind, meta_components
from waflow_outbound.lanes import Job


class Rejection(Exception):
    def __init__(self, reason: RejectReason, message: str, meta: MetaFailure | None = None) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason
        self.message = message
        self.meta = meta


REFUSALS: dict[RejectReason, str] = {
    "blacklisted": "the contact is blacklisted (or deleted): it is never messaged",
    "window_closed": "free-form messages need an open 24-hour window; send a template",
}


def call_kind(job: Job) -> CallKind:
    if job.kind == "read":
        return "read"
    assert job.message is not None
    kind: CallKind = "template" if job.message["type"] == "template" else "text"
    return kind


class WaitForWindow(Exception):
    """The window looks closed, but the customer's message may still be on its way (wa.inbound.v1 and
    outbound.commands.v1 are consumed independently)."""


async def message_body(job: Job, catalog: TemplateCatalog, waba_id: str) -> dict[str, Any]:
    """The `/messages` body of a send, or a Rejection (no recipient, a template not approved, wrong parameters)."""
    assert job.message is not None
    if not job.wa_id and not job.user_id:
        raise Rejection("invalid", "the request names no recipient: neither a wa_id nor a user_id")
    body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual"}
    if job.wa_id:
        body["to"] = job.wa_id
    else:  # a BSUID-only customer: Meta takes the business-scoped user id as `recipient`
        body["recipient"] = job.user_id
    if call_kind(job) == "text":
        body |= {"type": "text", "text": {"body": job.message["body"], "preview_url": job.message["preview_url"]}}
    else:
        name, language = job.message["name"], job.message["language"]
        template = await catalog.find(job.tenant_id, waba_id, name, language)
        if template is None or template["status"] != "APPROVED":
            state = "unknown" if template is None else template["status"]
            raise Rejection("template_unknown", f"template {name} ({language}) is not approved: {state}")
        shape = catalog.shape(template)
        try:
            values = bind(shape, job.message["parameters"])
        except TemplateParamsError as exc:
            raise Rejection("template_params", str(exc)) from exc
        spec: dict[str, Any] = {"name": name, "language": {"code": language}}
        if components := meta_components(shape, values):
            spec["components"] = components
        body |= {"type": "template", "template": spec}
    if job.reply_to:
        body["context"] = {"message_id": job.reply_to}
    # Meta echoes it on every status: lets anyone reconcile a message with the request that sent it.
    body["biz_opaque_callback_data"] = job.key
    return body
