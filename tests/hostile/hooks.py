"""Schemathesis hooks for the hostile suite (loaded by `schemathesis run` through SCHEMATHESIS_HOOKS).

- Webhook deliveries whose X-Hub-Signature-256 is well formed are signed over the exact bytes sent, with the
  dev app's secret, as Meta signs them: the fuzzed body then reaches ingest's parser. A missing or malformed
  signature is sent as generated (and must be refused).
- Path ids are, half the time, ones that exist in the dev tenant (WAFLOW_HOSTILE_IDS, JSON), so routes are
  exercised past their 404.
- The few refusals of schema-valid input that JSON Schema cannot express are let through, each named below
  with the reason; every other refusal of schema-valid input fails the run (the schema would be lying).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from typing import Any

import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.openapi.checks import RejectedPositiveData, UseAfterFree

SEEDED: dict[str, str] = json.loads(os.environ.get("WAFLOW_HOSTILE_IDS", "{}"))
APP_SECRET = os.environ.get("WAFLOW_HOSTILE_APP_SECRET", "").encode()
SIGNATURE = re.compile(r"^sha256=[0-9a-f]{64}$")

# 422s that a schema-valid request may get: rules that depend on data or on more than JSON Schema can say.
INEXPRESSIBLE: dict[str, re.Pattern[str]] = {
    # Cursors are opaque tokens the API issued; any other string is refused.
    "invalid_cursor": re.compile(""),
    # A real number of a real numbering plan (libphonenumber), not a character pattern.
    "invalid_phone": re.compile(""),
    # The parameters a template takes are the template's own.
    "template_params": re.compile(""),
    # Field values are checked against the tenant's own field definitions; a choice field needs options and
    # only it has them; tags are compared after Unicode normalisation and case folding (which can change
    # their length and characters); "blank" includes Unicode spaces no JSON Schema pattern engine agrees on.
    "invalid_field": re.compile(
        r"no such field is defined|this field is retired|expected |only choice fields have options"
        r"|a choice field needs|a tag |only letters, digits|cannot be empty|a contact has at most"
    ),
}


class HubSignature(requests.auth.AuthBase):
    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else body
        request.headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(APP_SECRET, raw, hashlib.sha256).hexdigest()
        return request


@schemathesis.hook
def before_call(context: Any, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    if not APP_SECRET or not case.operation.path.startswith("/webhooks/") or case.method.upper() != "POST":
        return
    signature = next((v for k, v in (case.headers or {}).items() if k.lower() == "x-hub-signature-256"), None)
    if isinstance(signature, str) and SIGNATURE.match(signature):
        kwargs["auth"] = HubSignature()


@schemathesis.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    real = {name: SEEDED.get(name, value) for name, value in (path_parameters or {}).items()}
    return st.sampled_from([path_parameters, real])


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: schemathesis.Case, response: Any) -> bool:
    """True keeps the failure."""
    if isinstance(failure, UseAfterFree) and failure.operation == "DELETE /v1/contacts/{contact_id}":
        # Deleting a contact keeps it, blacklisted and marked deleted (documented): it and its lists stay
        # readable.
        return False
    if isinstance(failure, RejectedPositiveData) and response.status_code == 422:
        try:
            error = json.loads(response.content)["error"]
        except (ValueError, KeyError, TypeError):
            return True
        allowed = INEXPRESSIBLE.get(error.get("code"))
        return not (allowed is not None and allowed.search(error.get("message", "")))
    return True
