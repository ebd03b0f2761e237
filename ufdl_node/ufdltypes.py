"""The UFDL type names, as the real server knows them, and how a JSON value fits one.

The real server (``waikato-ufdl/ufdl-backend``, migration ``job_types.csv``; the type
system is ``waikato-ufdl/ufdl-job-types``) names its types ``int``, ``str``, ``float``,
``bool``, ``JSON``, ``Nothing``, ``Array<T[, n]>``, ``Map<K, V>``, ``PK<T>``,
``Name<T>``, ``JobOutput<T>``, ``Model<...>``, ``Dataset<...>``, ``Domain<'...'>``,
``Framework<'name', 'version'>``, ``DockerImage<...>``, ``PretrainedModel<...>``, ...
A template parameter lists the types it takes; its default must fit the first of them
(or its ``default_type``). Arguments are types, quoted strings (``'Image
Classification'``) or integers.

Handlers written for earlier versions of ufdl-node may say ``Integer``, ``String``,
``Float`` and ``Boolean``: :func:`canonical` translates them (anywhere in a type) to
the server's names; the server itself refuses them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Union

# The names of the real server's job_types.csv.
TYPE_NAMES = frozenset({
    "UFDLType", "UFDLJSONType", "FiniteJSONType", "ServerResidentType", "NamedServerType",
    "ValueType", "str", "int", "float", "bool", "Array", "Map", "CUDAVersion", "Dataset",
    "DockerImage", "Domain", "Framework", "Hardware", "PretrainedModel", "BLOB", "Compressed",
    "JSON", "Nothing", "JobOutput", "Model", "Name", "PK"})
# Names ufdl-node's handlers used before they followed the server: translated, never sent.
ALIASES = {"Integer": "int", "String": "str", "Float": "float", "Boolean": "bool"}
CONTRACTS = frozenset({"Train", "Predict", "Export"})

Arg = Union["UfdlType", str, int]


class UfdlTypeError(ValueError):
    """A type string that is not a UFDL type: its message is one line naming the problem."""


@dataclass(frozen=True)
class UfdlType:
    """A parsed type: its name and its arguments (types, quoted strings as str, ints)."""

    name: str
    args: tuple[Arg, ...] = ()

    def __str__(self) -> str:
        if not self.args:
            return self.name
        shown = []
        for arg in self.args:
            if isinstance(arg, UfdlType):
                shown.append(str(arg))
            elif isinstance(arg, str):
                shown.append("'" + arg.replace("'", "\\'") + "'")
            else:
                shown.append(str(arg))
        return f"{self.name}<{', '.join(shown)}>"


def _split_args(text: str, whole: str) -> list[str]:
    """The comma-separated arguments of ``<a, b<c, d>, 'e,f'>`` (the brackets included)."""
    depth, quoted, start, parts = 0, False, 1, []
    for i, ch in enumerate(text):
        if quoted:
            quoted = not (ch == "'" and text[i - 1] != "\\")
        elif ch == "'":
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
            if depth < 0 or (depth == 0 and i != len(text) - 1):
                raise UfdlTypeError(f"type {whole!r}: unbalanced '>'")
        elif ch == "," and depth == 1:
            parts.append(text[start:i].strip())
            start = i + 1
    if depth != 0 or quoted:
        raise UfdlTypeError(f"type {whole!r}: unclosed '<' or quote")
    parts.append(text[start:-1].strip())
    return parts


def parse_type(text: str, *, aliases: bool = False, names: frozenset[str] = TYPE_NAMES,
               whole: str | None = None) -> UfdlType:
    """`text` as a UfdlType; UfdlTypeError (one line) for an unknown name or bad syntax.

    With `aliases`, ``Integer``/``String``/``Float``/``Boolean`` are read as the
    server's names."""
    whole = text if whole is None else whole
    if not isinstance(text, str):
        raise UfdlTypeError(f"type {text!r} is not a string")
    text = text.strip()
    cut = text.find("<")
    name, rest = (text, "") if cut < 0 else (text[:cut].strip(), text[cut:])
    if aliases:
        name = ALIASES.get(name, name)
    if name not in names:
        hint = f" (the server calls it {ALIASES[name]})" if name in ALIASES else ""
        raise UfdlTypeError(f"unknown type name {name!r} in {whole!r}{hint}")
    if not rest:
        return UfdlType(name)
    if not rest.endswith(">"):
        raise UfdlTypeError(f"type {whole!r}: arguments must be bracketed by <>")
    args: list[Arg] = []
    for part in _split_args(rest, whole):
        if len(part) >= 2 and part[0] == part[-1] == "'":
            args.append(part[1:-1].replace("\\'", "'"))
        elif re.fullmatch(r"[-+]?\d+", part):
            args.append(int(part))
        elif part:
            args.append(parse_type(part, aliases=aliases, whole=whole))
        else:
            raise UfdlTypeError(f"type {whole!r}: an empty argument")
    return UfdlType(name, tuple(args))


def canonical(text: str) -> str:
    """`text` with the old names (``Integer`` ...) translated to the server's; UfdlTypeError
    (one line) when it is no UFDL type even so."""
    return str(parse_type(text, aliases=True))


def contract_type(text: str) -> UfdlType:
    """A template's ``job_type`` (``Train<Domain<'...'>, Framework<'...', '...'>>``, ``Export``);
    UfdlTypeError (one line) when it is none."""
    name = text.split("<", 1)[0].strip() if isinstance(text, str) else ""
    if name not in CONTRACTS:
        raise UfdlTypeError(f"unknown contract {name!r} in {text!r}; known: {sorted(CONTRACTS)}")
    return parse_type(text, names=CONTRACTS | TYPE_NAMES)


def fits(type_: UfdlType | str, value: Any) -> bool:
    """Whether JSON `value` is a value of `type_` as far as can be told without a server
    (a ``PK<...>`` is a non-negative int, a ``Name<...>`` a string)."""
    t = parse_type(type_) if isinstance(type_, str) else type_
    if t.name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if t.name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if t.name == "bool":
        return isinstance(value, bool)
    if t.name == "str":
        return isinstance(value, str)
    if t.name == "Nothing":
        return value is None
    if t.name == "PK":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if t.name == "Name":
        return isinstance(value, str)
    if t.name == "Array":
        return _fits_array(t, value)
    if t.name == "Map":
        return isinstance(value, dict) and (len(t.args) < 2 or not isinstance(t.args[1], UfdlType)
                                            or all(fits(t.args[1], v) for v in value.values()))
    return True  # JSON, and server-resident types whose values only a server can check


def _fits_array(t: UfdlType, value: Any) -> bool:
    if not isinstance(value, list):
        return False
    if len(t.args) > 1 and isinstance(t.args[1], int) and len(value) != t.args[1]:
        return False
    element = t.args[0] if t.args else None
    return not isinstance(element, UfdlType) or all(fits(element, v) for v in value)


# The data domains of a stock server: templates and records name them by code, types by name.
DOMAINS = {"ic": "Image Classification", "od": "Object Detection", "is": "Image Segmentation",
           "sp": "Speech", "sc": "Spectrum Classification"}


def domain_code(domain: str) -> str:
    """``"Image Classification"`` or ``"ic"`` → ``"ic"``; UfdlTypeError (one line) for neither."""
    for code, name in DOMAINS.items():
        if domain.strip().casefold() in (code, name.casefold()):
            return code
    raise UfdlTypeError(f"unknown data domain {domain!r}; known: "
                        + ", ".join(f"{c} ({n})" for c, n in DOMAINS.items()))
