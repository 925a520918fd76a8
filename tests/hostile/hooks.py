"""Schemathesis hooks for the hostile suite (loaded by `schemathesis run` through SCHEMATHESIS_HOOKS).

- Webhook deliveries are signed over the exact bytes sent, with the dev app's secret, as Meta signs them: the
  fuzzed body then reaches ingest's parser instead of stopping at the signature check.
- Path ids are, half the time, ones that exist in the dev tenant (WAFLOW_HOSTILE_IDS, JSON), so routes are
  exercised past their 404.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

import requests
import schemathesis
from hypothesis import strategies as st

SEEDED: dict[str, str] = json.loads(os.environ.get("WAFLOW_HOSTILE_IDS", "{}"))
APP_SECRET = os.environ.get("WAFLOW_HOSTILE_APP_SECRET", "").encode()


class HubSignature(requests.auth.AuthBase):
    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else body
        request.headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(APP_SECRET, raw, hashlib.sha256).hexdigest()
        return request


@schemathesis.hook
def before_call(context: Any, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    if APP_SECRET and case.operation.path.startswith("/webhooks/"):
        kwargs["auth"] = HubSignature()


@schemathesis.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    real = {name: SEEDED.get(name, value) for name, value in (path_parameters or {}).items()}
    return st.sampled_from([path_parameters, real])
