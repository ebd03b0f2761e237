"""`--param NAME=VALUE` and `--input NAME=VALUE[:TYPE]` of `submit` and `dry-run`, typed by the template.

A value takes the first of the declared types it fits, read as JSON first and as text
second: for ``docker_image`` declared ``["Name<DockerImage<...>>", "PK<DockerImage<...>>"]``
``4`` is a ``PK`` and ``mmcls`` a ``Name``; ``3`` for ``int`` is 3, ``true`` for ``bool``
True, ``null`` for ``JSON`` null. A parameter or input the template does not declare, and
a value that fits none of the declared types, is a one-line ConfigError before anything is
created. An input that names something local (a folder for a dataset, a file or
``job:N[/NAME]`` for a job output) stays text here: ``local.local_inputs`` puts it on the
server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..logs import one_line
from ..ufdltypes import UfdlTypeError, canonical, fits, parse_type

_NO_VALUE = object()
# Input types whose value may name something local, resolved before the job is created.
_LOCAL = re.compile(r"^(PK<Dataset<|Name<Dataset<|JobOutput<)")


def _fits(type_: str, value: Any) -> bool:
    try:
        return fits(parse_type(type_, aliases=True), value)
    except UfdlTypeError:
        return True  # a type this node does not know: the server decides


def typed_value(text: str, types: Sequence[str]) -> tuple[Any, str] | None:
    """Command-line `text` as a value of the first of `types` it fits (as JSON, else as
    text), with that type in the server's name; None when it fits none."""
    try:
        decoded: Any = json.loads(text)
    except ValueError:
        decoded = _NO_VALUE
    for candidate in (decoded, text):
        if candidate is _NO_VALUE:
            continue
        for type_ in types:
            if _fits(type_, candidate):
                return candidate, _server_name(type_)
    return None


def _server_name(type_: str) -> str:
    try:
        return canonical(type_)
    except UfdlTypeError:
        return type_


def _declared_text(types: Sequence[str]) -> str:
    return " or ".join(types) or "no type"


def _declared_name(item: str, flag: str, syntax: str, what: str, template_name: str,
                   declared: Mapping[str, Any]) -> tuple[str, str]:
    """``NAME=REST`` of a `flag` item, NAME one the template declares; else one ConfigError line."""
    name, sep, rest = item.partition("=")
    if not sep or not name:
        raise ConfigError(f"{flag} {item!r}: expected {syntax}")
    if name not in declared:
        known = ", ".join(sorted(declared)) or "none"
        raise ConfigError(f"{flag} {name}: template {template_name} has no such {what} (it has: {known})")
    return name, rest


def parse_params(items: list[str], template_name: str, declared: Mapping[str, Any]) -> dict[str, Any]:
    """--param NAME=VALUE into parameter_values, typed by the template's parameter.

    `declared` is a template's ``parameters`` (``{name: {types, ...}}``), from the server
    or from a handler's TemplateDescription.
    """
    values: dict[str, Any] = {}
    for item in items:
        name, raw = _declared_name(item, "--param", "NAME=VALUE", "parameter", template_name, declared)
        types = [str(t) for t in (declared[name] or {}).get("types") or ["JSON"]]
        typed = typed_value(raw, types)
        if typed is None:
            raise ConfigError(f"--param {name}={one_line(raw, 80)}: not a value of {_declared_text(types)}")
        values[name] = {"value": typed[0], "type": typed[1]}
    return values


def _split_type(rest: str) -> tuple[str, str | None]:
    """``VALUE:TYPE`` → (VALUE, TYPE); a type may hold ':' only inside <...>, and starts with
    a capital or holds '<' (``C:/dir`` is a value)."""
    depth, cut = 0, -1
    for i, ch in enumerate(rest):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == ":" and depth == 0:
            cut = i
    tail = rest[cut + 1:] if cut >= 0 else ""
    if tail and (tail[0].isupper() or "<" in tail or tail in ("int", "str", "float", "bool")):
        return rest[:cut], tail
    return rest, None


def parse_inputs(items: list[str], template_name: str, declared: Mapping[str, str | None]) -> dict[str, Any]:
    """--input NAME=VALUE[:TYPE] into input_values; `declared` maps the template's inputs to
    their types (None: the template does not say, so the command line must)."""
    values: dict[str, Any] = {}
    for item in items:
        name, rest = _declared_name(item, "--input", "NAME=VALUE[:TYPE]", "input", template_name, declared)
        text, type_ = _split_type(rest)
        type_ = type_ or declared[name]
        if type_ is None:
            raise ConfigError(f"--input {name}: template {template_name} does not say the type of input "
                              f"{name!r}: give it as {name}=VALUE:TYPE")
        typed = typed_value(text, [type_])
        if typed is None and not _LOCAL.match(type_):
            raise ConfigError(f"--input {name}={one_line(text, 80)}: not a value of {type_}")
        values[name] = {"value": typed[0] if typed is not None else text, "type": _server_name(type_)}
    return values
