"""Typed values of jobs: the UFDL types of inputs and parameters, parsed for handlers.

``resolve_parameters`` overlays a job's ``parameter_values`` on its template's
defaults, enforces ``const`` parameters and checks types; ``parse_value`` turns
one raw value into Python (``int``, ``float``, ``bool``, ``str``, ``JSON``,
``Nothing``, ``Array<...>``, ``PK<...>``: the real server's type names; the old names
``Integer``, ``Float``, ``Boolean`` and ``String`` are read as those; other types are
passed through raw). Handlers get these through :mod:`ufdl_node.api`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import JobFailed
from ..logs import one_line
from ..ufdltypes import UfdlTypeError, canonical, fits

# The server's names of the simple types, and the names ufdl-node's handlers used before.
_TYPE_ALIASES = {"integer": "int", "float": "float", "boolean": "bool", "string": "str", "json": "JSON",
                 "int": "int", "bool": "bool", "str": "str"}
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


@dataclass(frozen=True)
class Value:
    """An input or parameter value: `raw` as the server sent it, `value` parsed for `type`.

    ``int``, ``float``, ``bool``, ``str``, ``JSON``, ``Nothing`` and ``Array<...>`` give
    the Python value; ``PK<...>`` gives the primary key as an int; other types keep `raw`.
    """

    name: str
    type: str
    raw: Any
    value: Any


def _base_type(type_: str) -> str:
    """The server's name of `type_` (``Integer`` → ``int``); other types as they are."""
    t = type_.strip()
    if t.lower() in _TYPE_ALIASES:
        return _TYPE_ALIASES[t.lower()]
    try:
        return canonical(t)
    except UfdlTypeError:
        return t


def parse_value(name: str, type_: str, raw: Any, *, kind: str = "parameter") -> Value:
    """`raw` as a :class:`Value` of UFDL type `type_`; JobFailed when it does not fit."""
    try:
        return _parse_value(name, type_, raw, kind)
    except (ValueError, OverflowError, TypeError, UfdlTypeError):  # 10**400 as a float, 5000 digits, ...
        raise JobFailed(f"{kind} {name!r}: {one_line(repr(raw), 80)} does not fit type {type_}") from None


def _scalar(base: str, raw: Any, bad: Callable[[str], JobFailed]) -> Any:
    """`raw` as an int, float or bool (`base`): JSON's, or text that reads as one."""
    if base == "int":
        if isinstance(raw, bool):
            raise bad("an integer")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str) and re.fullmatch(r"\s*[-+]?\d+\s*", raw):
            return int(raw)
        raise bad("an integer")
    if base == "float":
        if isinstance(raw, bool):
            raise bad("a number")
        try:
            value = float(raw) if isinstance(raw, (int, float, str)) else None
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            raise bad("a finite number")
        return value
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise bad("a boolean")


def _parse_value(name: str, type_: str, raw: Any, kind: str) -> Value:
    base = _base_type(type_)

    def bad(expected: str) -> JobFailed:
        return JobFailed(f"{kind} {name!r}: {one_line(repr(raw), 80)} is not {expected} "
                         f"(type {type_})")

    value: Any
    if base in ("int", "float", "bool"):
        value = _scalar(base, raw, bad)
    elif base == "str":
        if not isinstance(raw, str):
            raise bad("a string")
        value = raw
    elif base == "JSON":
        # The server carries JSON values as they are; a string holding a JSON
        # object or array (as some clients send) is decoded.
        value = raw
        if isinstance(raw, str) and raw.strip()[:1] in ("{", "["):
            try:
                value = json.loads(raw)
            except ValueError:
                raise bad("JSON") from None
    elif base == "Nothing":
        if raw is not None:
            raise bad("null")
        value = None
    elif base.startswith("Array<"):
        value = json.loads(raw) if isinstance(raw, str) and raw.strip()[:1] == "[" else raw
        if not fits(base, value):
            raise bad("an array of that type")
    elif base.startswith("PK<"):
        pk = raw.get("pk") if isinstance(raw, dict) else raw
        if isinstance(pk, bool):
            raise bad("a primary key")
        if isinstance(pk, str) and re.fullmatch(r"\s*\d{1,19}\s*", pk):
            pk = int(pk)
        if not isinstance(pk, int) or pk < 0:
            raise bad("a primary key")
        value = pk
    else:
        value = raw
    return Value(name=name, type=type_, raw=raw, value=value)


def resolve_inputs(input_values: dict[str, Any] | None) -> dict[str, Value]:
    """The job's ``input_values`` (``{name: {value, type}}``) as typed values."""
    resolved = {}
    for name, entry in (input_values or {}).items():
        if not isinstance(entry, dict) or "value" not in entry:
            raise JobFailed(f"input {name!r}: expected {{value, type}}, got {one_line(repr(entry), 80)}")
        resolved[name] = parse_value(name, str(entry.get("type") or "JSON"), entry["value"], kind="input")
    return resolved


def resolve_parameters(template_parameters: dict[str, Any] | None,
                       parameter_values: dict[str, Any] | None) -> dict[str, Value]:
    """Template defaults overlaid by the job's ``parameter_values``, typed.

    A parameter without a default that the job does not set, a value of a type
    the template does not allow, a value that does not parse, and a job that
    changes a ``const`` parameter each raise JobFailed.
    """
    declared = template_parameters or {}
    given = parameter_values or {}
    resolved: dict[str, Value] = {}
    for name, decl in declared.items():
        decl = decl if isinstance(decl, dict) else {}
        types = [str(t) for t in decl.get("types") or []]
        entry = given.get(name)
        # The default is parsed only where it matters: a job that sets its own value must not
        # fail because the template's default does not fit the first of several types.
        default = _default(name, decl, types) if entry is None or decl.get("const") else None
        if entry is None:
            if default is None:
                raise JobFailed(f"parameter {name!r} has no default and the job does not set it")
            resolved[name] = default
            continue
        value = _given_value(name, entry, types)
        if decl.get("const") and default is not None and value.value != default.value:
            raise JobFailed(f"parameter {name!r} is const ({one_line(repr(default.value), 80)}); "
                            f"the job may not set it to {one_line(repr(value.value), 80)}")
        resolved[name] = value
    for name, entry in given.items():
        if name not in declared:  # the template was not at hand, or the server allowed it
            resolved[name] = _given_value(name, entry, [])
    return resolved


def _default(name: str, decl: dict[str, Any], types: list[str]) -> Value | None:
    """The template's default for parameter `name` as a typed value (None: it has none)."""
    if "default" not in decl:
        return None
    if decl.get("default_type"):
        return parse_value(name, str(decl["default_type"]), decl["default"])
    for type_ in types or ["JSON"]:  # the first of the allowed types the default fits
        try:
            return parse_value(name, type_, decl["default"])
        except JobFailed:
            continue
    raise JobFailed(f"parameter {name!r}: the template's default {one_line(repr(decl['default']), 80)} "
                    f"fits none of its types {', '.join(types)}")


def _given_value(name: str, entry: Any, types: list[str]) -> Value:
    if not isinstance(entry, dict) or "value" not in entry:
        raise JobFailed(f"parameter {name!r}: expected {{value, type}}, got {one_line(repr(entry), 80)}")
    type_ = str(entry.get("type") or (types[0] if types else "JSON"))
    if types and _base_type(type_) not in {_base_type(t) for t in types}:
        raise JobFailed(f"parameter {name!r}: type {type_} is not one of {', '.join(types)}")
    return parse_value(name, type_, entry["value"])
