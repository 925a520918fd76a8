"""The contacts service's errors, each with its HTTP status and code (mapped in api.py)."""

from __future__ import annotations

from waflow_common.http import ApiError, Conflict, NotFound


class ContactNotFound(NotFound):
    code = "contact_not_found"


class ListNotFound(NotFound):
    code = "list_not_found"


class FieldNotFound(NotFound):
    code = "field_not_found"


class FieldConflict(Conflict):
    code = "field_conflict"


class ListNameTaken(Conflict):
    code = "list_name_taken"


class TooMany(ApiError):
    status_code = 422
    code = "limit_reached"


class BadCursor(ApiError):
    status_code = 422
    code = "invalid_cursor"
