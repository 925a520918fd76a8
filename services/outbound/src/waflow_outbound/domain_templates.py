"""Template rules: Meta's components, the agents' %%NAME%% placeholders, parameter checks and rendering."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

_POSITIONAL = re.compile(r"\{\{\s*(\d+)\s*\}\}")
_NAMED = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_MEDIA = {"IMAGE": "image", "VIDEO": "video", "DOCUMENT": "document"}
MAX_PARAMETER_LENGTH = 1024

# The names agents use for the positional parameters of the templates every tenant has.
AGENT_NAMES: dict[tuple[str, str, str], str] = {("open_template", "body", "1"): "SENTENCE"}

# Present for every tenant even before (or without) a sync: the goodbye template agents use most.
OPEN_TEMPLATE: dict[str, Any] = {
    "name": "open_template",
    "language": "en",
    "status": "APPROVED",
    "category": "UTILITY",
    "parameter_format": "POSITIONAL",
    "components": [{"type": "BODY", "text": "Goodbye {{1}}. See you soon!"}],
}

Section = Literal["header", "body", "button"]


class TemplateParamsError(ValueError):
    """The parameters given do not fit the template's placeholders."""


@dataclass(frozen=True)
class Placeholder:
    name: str  # what agents write between %%...%%, upper case
    section: Section
    key: str  # Meta's: "1" for {{1}}, "customer_name" for {{customer_name}}, the media type for a media header
    button_index: int | None = None
    media: str | None = None


@dataclass(frozen=True)
class TemplateShape:
    """What outbound needs of one template: its placeholders in Meta's order, and the texts to render."""

    name: str
    language: str
    named: bool
    placeholders: tuple[Placeholder, ...]
    header_text: str | None
    header_media: str | None
    body: str
    footer: str | None
    buttons: tuple[str, ...]

    def agent_text(self) -> str:
        """The body as agents see it: "Goodbye %%SENTENCE%%. See you soon!"."""
        return self._fill("body", self.body, {p: f"%%{p.name}%%" for p in self.placeholders})

    def _fill(self, section: Section, text: str, values: Mapping[Placeholder, str]) -> str:
        by_key = {p.key: v for p, v in values.items() if p.section == section}
        pattern = _NAMED if self.named else _POSITIONAL
        return pattern.sub(lambda m: by_key.get(m.group(1), m.group(0)), text)

    def render(self, values: Mapping[Placeholder, str]) -> dict[str, Any]:
        header: str | None = None
        if self.header_text is not None:
            header = self._fill("header", self.header_text, values)
        elif self.header_media is not None:
            media = next((v for p, v in values.items() if p.section == "header"), "")
            header = f"[{self.header_media}: {media}]"
        return {
            "header": header,
            "body": self._fill("body", self.body, values),
            "footer": self.footer,
            "buttons": list(self.buttons),
        }


def _keys(text: str | None, named: bool) -> list[str]:
    if not text:
        return []
    return list(dict.fromkeys((_NAMED if named else _POSITIONAL).findall(text)))


def _agent_name(template: str, section: Section, key: str, named: bool, button_index: int | None) -> str:
    alias = AGENT_NAMES.get((template, section, key))
    if alias is not None:
        return alias
    if named:
        return key.upper()
    if section == "header":
        return f"HEADER_{key}"
    if section == "button":
        return f"BUTTON_{button_index}"
    return key


def shape_of(template: Mapping[str, Any]) -> TemplateShape:
    """Reads a template as `GET /{waba_id}/message_templates` lists it."""
    name = str(template["name"])
    named = str(template.get("parameter_format", "POSITIONAL")).upper() == "NAMED"
    placeholders: list[Placeholder] = []
    header_text: str | None = None
    header_media: str | None = None
    body = ""
    footer: str | None = None
    buttons: list[str] = []
    for component in template.get("components") or []:
        kind = str(component.get("type", "")).upper()
        if kind == "HEADER":
            fmt = str(component.get("format", "TEXT")).upper()
            if fmt in _MEDIA:
                header_media = _MEDIA[fmt]
                placeholders.append(Placeholder("HEADER", "header", header_media, media=header_media))
            elif fmt == "TEXT":
                header_text = str(component.get("text") or "")
                for key in _keys(header_text, named):
                    placeholders.append(Placeholder(_agent_name(name, "header", key, named, None), "header", key))
        elif kind == "BODY":
            body = str(component.get("text") or "")
            for key in _keys(body, named):
                placeholders.append(Placeholder(_agent_name(name, "body", key, named, None), "body", key))
        elif kind == "FOOTER":
            footer = component.get("text")
        elif kind == "BUTTONS":
            for index, button in enumerate(component.get("buttons") or []):
                buttons.append(str(button.get("text", "")))
                if str(button.get("type", "")).upper() == "URL":
                    for key in _keys(button.get("url"), named)[:1]:
                        placeholders.append(
                            Placeholder(_agent_name(name, "button", key, named, index), "button", key, index)
                        )
    return TemplateShape(
        name=name,
        language=str(template["language"]),
        named=named,
        placeholders=tuple(placeholders),
        header_text=header_text,
        header_media=header_media,
        body=body,
        footer=footer,
        buttons=tuple(buttons),
    )


def bind(shape: TemplateShape, parameters: Mapping[str, str] | Sequence[str]) -> dict[Placeholder, str]:
    """Matches the given parameters (by agent name, by Meta's key, or in order) to every placeholder, exactly."""
    expected = shape.placeholders
    if isinstance(parameters, Mapping):
        values: dict[Placeholder, str] = {}
        unknown: list[str] = []
        for given, value in parameters.items():
            wanted = given.strip().strip("%").upper()
            # The agent's name wins; Meta's own key ("1", "customer_name") is accepted when no name claims it.
            match = next((p for p in expected if p.name == wanted), None) or next(
                (p for p in expected if p.key.upper() == wanted and p not in values), None
            )
            if match is None or match in values:
                unknown.append(given)
            else:
                values[match] = value
        missing = [p.name for p in expected if p not in values]
        if unknown or missing:
            raise TemplateParamsError(
                f"{shape.name} takes {[p.name for p in expected]}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
            )
    else:
        if len(parameters) != len(expected):
            raise TemplateParamsError(f"{shape.name} takes {len(expected)} parameter(s), got {len(parameters)}")
        values = dict(zip(expected, parameters, strict=True))
    for placeholder, value in values.items():
        if not value.strip():
            raise TemplateParamsError(f"{placeholder.name} must not be empty")
        if len(value) > MAX_PARAMETER_LENGTH:
            raise TemplateParamsError(f"{placeholder.name} is longer than {MAX_PARAMETER_LENGTH} characters")
    return values


def _parameter(placeholder: Placeholder, value: str, named: bool) -> dict[str, Any]:
    if placeholder.media is not None:
        return {"type": placeholder.media, placeholder.media: {"link": value}}
    parameter: dict[str, Any] = {"type": "text", "text": value}
    if named and placeholder.section != "button":
        parameter["parameter_name"] = placeholder.key
    return parameter


def meta_components(shape: TemplateShape, values: Mapping[Placeholder, str]) -> list[dict[str, Any]]:
    """The `template.components` of a send, in Meta's format."""
    components: list[dict[str, Any]] = []
    for section in ("header", "body"):
        params = [_parameter(p, values[p], shape.named) for p in shape.placeholders if p.section == section]
        if params:
            components.append({"type": section, "parameters": params})
    for placeholder in shape.placeholders:
        if placeholder.section == "button":
            components.append(
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": str(placeholder.button_index),
                    "parameters": [_parameter(placeholder, values[placeholder], shape.named)],
                }
            )
    return components
