"""Per-WABA message templates: the built-in defaults, custom ones, lookup for sends and paged listing."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from waflow_simulator.ids import template_id
from waflow_simulator.models import TemplateDef
from waflow_simulator.template_params import Requirements, requirements_of

_DEFAULTS: tuple[TemplateDef, ...] = (
    TemplateDef(
        name="open_template",
        language="en",
        category="UTILITY",
        components=[{"type": "BODY", "text": "Goodbye {{1}}. See you soon!", "example": {"body_text": [["Maria"]]}}],
    ),
    TemplateDef(
        name="order_shipped_v2",
        language="en_US",
        category="UTILITY",
        components=[
            {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["4::aW1hZ2UvanBlZw==:ARb"]}},
            {
                "type": "BODY",
                "text": "Hi {{1}}, your order {{2}} of {{3}} has shipped and arrives on {{4}}.",
                "example": {"body_text": [["Maria", "#4471", "$42.50", "Saturday, January 3, 2026"]]},
            },
            {"type": "FOOTER", "text": "Example Shop"},
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "QUICK_REPLY", "text": "Track my parcel"},
                    {
                        "type": "URL",
                        "text": "Track online",
                        "url": "https://shop.example.com/track/{{1}}",
                        "example": ["https://shop.example.com/track/4471"],
                    },
                ],
            },
        ],
    ),
    TemplateDef(
        name="spring_sale",
        language="en",
        category="MARKETING",
        components=[
            {
                "type": "HEADER",
                "format": "TEXT",
                "text": "Spring sale for {{1}}",
                "example": {"header_text": ["Maria"]},
            },
            {
                "type": "BODY",
                "text": "Hi {{1}}, take {{2}} off everything until {{3}}.",
                "example": {"body_text": [["Maria", "20%", "March 31"]]},
            },
            {"type": "FOOTER", "text": "Reply STOP to opt out"},
            {
                "type": "BUTTONS",
                "buttons": [
                    {"type": "QUICK_REPLY", "text": "Shop now"},
                    {"type": "QUICK_REPLY", "text": "Stop promotions"},
                ],
            },
        ],
    ),
    TemplateDef(
        name="appointment_reminder",
        language="es_MX",
        category="UTILITY",
        parameter_format="NAMED",
        components=[
            {
                "type": "BODY",
                "text": "Hola {{customer_name}}, te esperamos mañana a las {{appointment_time}}.",
                "example": {
                    "body_text_named_params": [
                        {"param_name": "customer_name", "example": "Maria"},
                        {"param_name": "appointment_time", "example": "10:30"},
                    ]
                },
            }
        ],
    ),
    TemplateDef(
        name="loyalty_welcome",
        language="en",
        status="PENDING",
        category="MARKETING",
        components=[{"type": "BODY", "text": "Welcome to our loyalty club, {{1}}!"}],
    ),
    TemplateDef(
        name="win_back_offer",
        language="en",
        status="REJECTED",
        category="MARKETING",
        components=[{"type": "BODY", "text": "We miss you {{1}}! Come back for a FREE gift!!!"}],
    ),
)


@dataclass(frozen=True, slots=True)
class Template:
    definition: TemplateDef
    requirements: Requirements
    listing: dict[str, Any]


def _template(waba_id: str, definition: TemplateDef) -> Template:
    if definition.id is None:
        definition = definition.model_copy(update={"id": template_id(waba_id, definition.name, definition.language)})
    listing = {
        "name": definition.name,
        "status": definition.status,
        "category": definition.category,
        "language": definition.language,
        "components": definition.components,
        "parameter_format": definition.parameter_format,
        "id": definition.id,
    }
    return Template(definition, requirements_of(definition), listing)


def _keyed(waba_id: str, definitions: Iterable[TemplateDef]) -> dict[tuple[str, str], Template]:
    return {(d.name, d.language): _template(waba_id, d) for d in definitions}


class TemplateStore:
    """Custom templates replace defaults that share their name and language."""

    def __init__(self) -> None:
        self._custom: dict[str, dict[tuple[str, str], Template]] = {}
        self._defaults: dict[str, dict[tuple[str, str], Template]] = {}

    def _defaults_of(self, waba_id: str) -> dict[tuple[str, str], Template]:
        defaults = self._defaults.get(waba_id)
        if defaults is None:
            defaults = self._defaults[waba_id] = _keyed(waba_id, _DEFAULTS)
        return defaults

    def replace(self, waba_id: str, definitions: Sequence[TemplateDef]) -> list[Template]:
        self._custom[waba_id] = _keyed(waba_id, definitions)
        return self.all(waba_id)

    def all(self, waba_id: str) -> list[Template]:
        custom = self._custom.get(waba_id, {})
        defaults = [t for key, t in self._defaults_of(waba_id).items() if key not in custom]
        return [*custom.values(), *defaults]

    def find(self, waba_id: str, name: str, language: str) -> Template | None:
        key = (name, language)
        custom = self._custom.get(waba_id)
        if custom is not None and key in custom:
            return custom[key]
        return self._defaults_of(waba_id).get(key)

    def clear(self) -> None:
        self._custom.clear()


def encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"tpl:{index}".encode()).decode("ascii")


def decode_cursor(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    prefix, _, index = text.partition(":")
    return int(index) if prefix == "tpl" and index.isdigit() else None


def matching(
    templates: Iterable[Template],
    *,
    status: str | None = None,
    name: str | None = None,
    category: str | None = None,
    language: str | None = None,
) -> list[Template]:
    """Meta's list filters: `status`/`category` take comma-separated values, `name` matches a substring."""
    statuses = {s.strip().upper() for s in status.split(",")} if status else None
    categories = {c.strip().upper() for c in category.split(",")} if category else None
    needle = name.lower() if name else None
    return [
        t
        for t in templates
        if (statuses is None or t.definition.status.upper() in statuses)
        and (categories is None or t.definition.category.upper() in categories)
        and (needle is None or needle in t.definition.name.lower())
        and (language is None or t.definition.language == language)
    ]
