"""Meta's error catalogue and the exact JSON bodies of Graph API errors and webhook status errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from waflow_simulator.ids import fbtrace_id

ERROR_CODES_HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"


@dataclass(frozen=True, slots=True)
class ErrorKind:
    title: str
    http_status: int
    details: str


# HTTP statuses follow the older revisions of Meta's error table (REFERENCE.md §8); clients must branch
# on the code, so the simulator only has to be plausible here, not authoritative.
CATALOGUE: dict[int, ErrorKind] = {
    4: ErrorKind("Application request limit reached", 400, "Too many API calls from this app."),
    100: ErrorKind("Invalid parameter", 400, "Invalid parameter."),
    368: ErrorKind(
        "Temporarily blocked for policies violations",
        403,
        "The WhatsApp Business Account is restricted for violating the platform policy.",
    ),
    80007: ErrorKind("Rate limit issues", 400, "The WhatsApp Business Account has reached its rate limit."),
    130429: ErrorKind("Rate limit hit", 400, "Cloud API message throughput has been reached."),
    130472: ErrorKind(
        "User's number is part of an experiment",
        400,
        "Failed to send message because this user's phone number is part of an experiment.",
    ),
    131000: ErrorKind(
        "Something went wrong",
        500,
        "Message failed to send because of an unknown error. Please try again later.",
    ),
    131005: ErrorKind("Access denied", 403, "Permission is either not granted or has been removed."),
    131008: ErrorKind("Required parameter is missing", 400, "The request is missing a required parameter."),
    131009: ErrorKind("Parameter value is not valid", 400, "One or more parameter values are invalid."),
    131016: ErrorKind(
        "Service unavailable", 503, "A service is temporarily unavailable. Please check our status page."
    ),
    131021: ErrorKind("Recipient cannot be sender", 400, "Sender and recipient phone number is the same."),
    131026: ErrorKind("Message undeliverable", 400, "Message Undeliverable."),
    131031: ErrorKind("Account has been locked", 403, "The Business Account was locked or the two-step PIN is wrong."),
    131042: ErrorKind("Business eligibility payment issue", 400, "There was an error related to your payment method."),
    131047: ErrorKind(
        "Re-engagement message",
        400,
        "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
    ),
    131048: ErrorKind(
        "Spam rate limit hit",
        400,
        "Message failed to send because there are restrictions on how many messages can be sent from "
        "this phone number.",
    ),
    131049: ErrorKind(
        "This message was not delivered to maintain healthy ecosystem engagement.",
        400,
        "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
    ),
    131050: ErrorKind(
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages "
        "on WhatsApp from your business",
        400,
        "The recipient stopped marketing messages from this business.",
    ),
    131051: ErrorKind("Unsupported message type", 400, "Message type is not currently supported."),
    131052: ErrorKind("Media download error", 400, "Unable to download the media sent by the user."),
    131053: ErrorKind("Media upload error", 400, "Unable to upload the media used in the message."),
    131056: ErrorKind(
        "(Business Account, Consumer Account) pair rate limit hit",
        400,
        "Too many messages sent from the sender phone number to the same recipient phone number in a "
        "short period of time.",
    ),
    131057: ErrorKind(
        "Account in maintenance mode", 400, "Business Account is in maintenance mode (throughput upgrade)."
    ),
    132000: ErrorKind(
        "Number of parameters does not match the expected number of params",
        400,
        "The number of parameters does not match the expected number of params.",
    ),
    132001: ErrorKind(
        "Template name does not exist in the translation",
        404,
        "The template does not exist in the specified language or has not been approved.",
    ),
    132005: ErrorKind("Translated text too long", 400, "Translated text is too long."),
    132007: ErrorKind("Template format character policy violated", 400, "Template content violates a WhatsApp policy."),
    132012: ErrorKind(
        "Parameter format does not match format in the created template",
        400,
        "Variable parameter values formatted incorrectly.",
    ),
    132015: ErrorKind("Template is Paused", 400, "Template is paused due to low quality."),
    132016: ErrorKind("Template is Disabled", 400, "Template has been paused too many times."),
    133010: ErrorKind("Account not registered", 400, "Phone number not registered on the Cloud API."),
}

_UNKNOWN = ErrorKind("Unknown error", 400, "An unknown error occurred.")
_PACIFIC = timezone(timedelta(hours=-8))


class GraphError(Exception):
    """A Graph API error response: HTTP status plus Meta's `{"error": {...}}` body."""

    def __init__(self, http_status: int, body: dict[str, Any]) -> None:
        super().__init__(body["error"]["message"])
        self.http_status = http_status
        self.body = body

    @property
    def code(self) -> int:
        code: int = self.body["error"]["code"]
        return code


def meta_error(code: int, details: str | None = None, *, http_status: int | None = None) -> GraphError:
    """WhatsApp-level error: `(#code) title` with `error_data.details`."""
    kind = CATALOGUE.get(code, _UNKNOWN)
    return GraphError(
        http_status or kind.http_status,
        {
            "error": {
                "message": f"(#{code}) {kind.title}",
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": details or kind.details},
                "fbtrace_id": fbtrace_id(),
            }
        },
    )


def expired_token_error(now: float, *, http_status: int = 401) -> GraphError:
    """Graph-level 190/463: no `error_data`, the message quotes the expiry in Pacific time."""
    current = datetime.fromtimestamp(now, _PACIFIC)
    expired = current.replace(minute=0, second=0, microsecond=0)
    fmt = "%A, %d-%b-%y %H:%M:%S PST"
    return GraphError(
        http_status,
        {
            "error": {
                "message": f"Error validating access token: Session has expired on {expired.strftime(fmt)}. "
                f"The current time is {current.strftime(fmt)}.",
                "type": "OAuthException",
                "code": 190,
                "error_subcode": 463,
                "fbtrace_id": fbtrace_id(),
            }
        },
    )


def unknown_object_error(object_id: str, method: str) -> GraphError:
    """Graph-level 100/33 for an id the token cannot see (unknown number or WABA)."""
    return GraphError(
        400,
        {
            "error": {
                "message": f"Unsupported {method} request. Object with ID '{object_id}' does not exist, "
                "cannot be loaded due to missing permissions, or does not support this operation. "
                "Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api",
                "type": "GraphMethodException",
                "code": 100,
                "error_subcode": 33,
                "fbtrace_id": fbtrace_id(),
            }
        },
    )


def unknown_path_error(path: str) -> GraphError:
    return GraphError(
        400,
        {
            "error": {
                "message": f"Unknown path components: /{path}",
                "type": "OAuthException",
                "code": 2500,
                "fbtrace_id": fbtrace_id(),
            }
        },
    )


def transient_error(http_status: int) -> GraphError:
    """What Graph answers when it fails before reaching WhatsApp (code 2, no `error_data`)."""
    return GraphError(
        http_status,
        {
            "error": {
                "message": "An unexpected error has occurred. Please retry your request later.",
                "type": "OAuthException",
                "is_transient": True,
                "code": 2,
                "fbtrace_id": fbtrace_id(),
            }
        },
    )


def fault_error(code: int | None, http_status: int | None, now: float) -> GraphError:
    """The error an injected fault produces: a Meta code (optionally with another HTTP status) or bare HTTP."""
    if code is None:
        return transient_error(http_status or 500)
    if code == 190:
        return expired_token_error(now, http_status=http_status or 401)
    return meta_error(code, http_status=http_status)


def status_error(code: int, details: str | None = None) -> dict[str, Any]:
    """An entry of `statuses[].errors` (async form: no type/fbtrace, has title and href)."""
    kind = CATALOGUE.get(code, _UNKNOWN)
    return {
        "code": code,
        "title": kind.title,
        "message": kind.title,
        "error_data": {"details": details or kind.details},
        "href": ERROR_CODES_HREF,
    }
