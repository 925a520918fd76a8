"""What parameters a template expects, and the 132000 check of a send's `template.components`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from waflow_simulator.errors import GraphError, meta_error
from waflow_simulator.models import TemplateDef

_POSITIONAL = re.compile(r"\{\{\s*(\d+)\s*\}\}")
_NAMED = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")
_MEDIA_FORMATS = frozenset({"IMAGE", "VIDEO", "DOCUMENT", "LOCATION"})
# Buttons whose single parameter is mandatory; quick replies and flows accept an optional one.
_REQUIRED_BUTTONS = frozenset({"COPY_CODE", "OTP"})
_NO_PARAM_BUTTONS = frozenset({"PHONE_NUMBER", "VOICE_CALL"})


@dataclass(frozen=True, slots=True)
class Slot:
    """Parameters one component takes: `names` when they are named, else only `count` matters."""

    count: int
    names: frozenset[str] = frozenset()
    optional: bool = False


@dataclass(frozen=True, slots=True)
class Requirements:
    named: bool
    header: Slot
    body: Slot
    buttons: dict[int, Slot]


def _placeholders(text: str, named: bool) -> list[str]:
    found = (_NAMED if named else _POSITIONAL).findall(text)
    return list(dict.fromkeys(found))


def _text_slot(text: Any, named: bool) -> Slot:
    names = _placeholders(text, named) if isinstance(text, str) else []
    return Slot(len(names), frozenset(names) if named else frozenset())


def _button_slot(button: dict[str, Any], named: bool) -> Slot:
    kind = str(button.get("type", "")).upper()
    if kind == "URL":
        return _text_slot(button.get("url"), named)
    if kind in _REQUIRED_BUTTONS:
        return Slot(1)
    if kind in _NO_PARAM_BUTTONS:
        return Slot(0)
    return Slot(1, optional=True)


def requirements_of(template: TemplateDef) -> Requirements:
    named = template.parameter_format == "NAMED"
    header, body = Slot(0), Slot(0)
    buttons: dict[int, Slot] = {}
    for component in template.components:
        kind = str(component.get("type", "")).upper()
        if kind == "HEADER":
            fmt = str(component.get("format", "TEXT")).upper()
            header = Slot(1) if fmt in _MEDIA_FORMATS else _text_slot(component.get("text"), named)
        elif kind == "BODY":
            body = _text_slot(component.get("text"), named)
        elif kind == "BUTTONS":
            for index, button in enumerate(component.get("buttons") or []):
                buttons[index] = _button_slot(button, named)
    return Requirements(named, header, body, buttons)


def _mismatch(section: str, given: int, expected: int) -> GraphError:
    return meta_error(
        132000,
        f"{section}: number of localizable_params ({given}) does not match the expected number of params ({expected})",
    )


def _check_slot(section: str, slot: Slot, params: Sequence[Any], named: bool) -> None:
    if slot.optional and len(params) <= 1:
        return
    if len(params) != slot.count:
        raise _mismatch(section, len(params), slot.count)
    if named and slot.names:
        given = {p.get("parameter_name") for p in params if isinstance(p, dict)}
        if given != slot.names:
            raise meta_error(
                132000,
                f"{section}: parameter names {sorted(str(n) for n in given)} do not match the expected "
                f"names {sorted(slot.names)}",
            )


def _index(component: dict[str, Any]) -> int:
    raw = component.get("index")
    if raw is None:
        raise meta_error(131008, "The parameter template['components'][]['index'] is required.")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise meta_error(100, f"Param index must be a number between 0 and 9 - got {raw!r}.") from None


def check_parameters(requirements: Requirements, components: Any) -> None:
    """Raise like Meta when the parameters given per component do not fit the approved template."""
    if components is None:
        components = []
    if not isinstance(components, list):
        raise meta_error(100, "Param template['components'] must be an array.")
    header: list[Any] = []
    body: list[Any] = []
    buttons: dict[int, list[Any]] = {}
    for component in components:
        if not isinstance(component, dict):
            raise meta_error(100, "Param template['components'][] must be an object.")
        params = component.get("parameters") or []
        if not isinstance(params, list):
            raise meta_error(100, "Param template['components'][]['parameters'] must be an array.")
        kind = str(component.get("type", "")).lower()
        if kind == "header":
            header = params
        elif kind == "body":
            body = params
        elif kind == "button":
            buttons[_index(component)] = params
        else:
            raise meta_error(100, f"Invalid component type {component.get('type')!r}.")
    _check_slot("header", requirements.header, header, requirements.named)
    _check_slot("body", requirements.body, body, requirements.named)
    for index in buttons:
        if index not in requirements.buttons:
            raise meta_error(132000, f"buttons: button at index {index} does not exist in the template")
    for index, slot in requirements.buttons.items():
        _check_slot(f"button at index {index}", slot, buttons.get(index, []), requirements.named)
