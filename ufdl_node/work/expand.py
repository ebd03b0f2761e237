"""``${name}`` expansion of a template's ``body``, as the UFDL job launcher does it.

The stock templates (mmclassification, mmdetection, yolo ...) carry their
configuration file in a ``body`` parameter (``str`` or ``Array<str>``) with
placeholders, expanded by the launcher's ``_expand_template``:

- ``${name}`` becomes ``str(value)`` of the parameter ``name`` (so a list or a
  dict comes out as a Python literal: the stock bodies are Python config files);
- ``${+name:TEXT}`` becomes TEXT when the boolean parameter ``name`` is true,
  else nothing; ``${-name:TEXT}`` the other way round; a line of an
  ``Array<str>`` body that such a placeholder leaves empty is dropped;
- every template parameter is available, and extra values (the dataset's
  directory, the number of classes ...) are added without overriding one.

Where the launcher leaves an unknown placeholder in the text (and the job
fails later in a way that is hard to read), :func:`expand` fails the job at
once with a one-line :class:`~ufdl_node.errors.JobFailed` naming every
placeholder without a value. Replacement is one pass: a value that itself
holds ``${...}`` is not expanded again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, overload

from ..errors import JobFailed
from ..logs import one_line

_PLACEHOLDER = re.compile(r"\$\{(?:(?P<sign>[+-])(?P<flag>[^:{}]+):(?P<text>[^{}]*)|(?P<name>[^{}]*))\}")


class _Expansion:
    def __init__(self, values: Mapping[str, Any], what: str) -> None:
        self.values = values
        self.what = what
        self.unknown: list[str] = []
        self.misused: list[str] = []

    def line(self, text: str) -> tuple[str, bool]:
        """`text` expanded, and whether a boolean placeholder was in it."""
        had_flag = False

        def replace(match: re.Match[str]) -> str:
            nonlocal had_flag
            if match.group("sign") is not None:
                had_flag = True
                return self._flag(match)
            name = match.group("name")
            if name not in self.values:
                self.unknown.append(match.group(0))
                return match.group(0)
            value = self.values[name]
            if isinstance(value, bool):
                self.misused.append(f"${{{name}}} (a boolean: write ${{+{name}:TEXT}} or ${{-{name}:TEXT}})")
                return match.group(0)
            return str(value)

        return _PLACEHOLDER.sub(replace, text), had_flag

    def _flag(self, match: re.Match[str]) -> str:
        name = match.group("flag")
        if name not in self.values:
            self.unknown.append(match.group(0))
            return match.group(0)
        value = self.values[name]
        if not isinstance(value, bool):
            self.misused.append(f"{match.group(0)} ({name} is not a boolean)")
            return match.group(0)
        return match.group("text") if value == (match.group("sign") == "+") else ""

    def check(self) -> None:
        problems = []
        if self.unknown:
            problems.append("no value for " + ", ".join(dict.fromkeys(self.unknown)))
        if self.misused:
            problems.append("cannot expand " + ", ".join(dict.fromkeys(self.misused)))
        if problems:
            raise JobFailed(one_line(f"{self.what}: {'; '.join(problems)}", 400))


@overload
def expand(body: str, params: Mapping[str, Any],  # type: ignore[overload-overlap]
           extra: Mapping[str, Any] | None = None, *, what: str = "body") -> str: ...


@overload
def expand(body: Sequence[str], params: Mapping[str, Any], extra: Mapping[str, Any] | None = None, *,
           what: str = "body") -> list[str]: ...


def expand(body: str | Sequence[str], params: Mapping[str, Any], extra: Mapping[str, Any] | None = None,
           *, what: str = "body") -> str | list[str]:
    """`body` (a text, or the lines of an ``Array<str>``) with its placeholders expanded.

    `params` are the job's parameter values by name; `extra` adds values that do not
    override a parameter of the same name. JobFailed names every placeholder without a
    value, and every misuse (``${flag}`` of a boolean, ``${+x:...}`` of a non-boolean).
    """
    values = {**(extra or {}), **params}
    expansion = _Expansion(values, what)
    if isinstance(body, str):
        text, _ = expansion.line(body)
        expansion.check()
        return text
    lines = []
    for item in body:
        if not isinstance(item, str):
            raise JobFailed(f"{what}: a line is {one_line(repr(item), 60)}, not a string")
        text, had_flag = expansion.line(item)
        if had_flag and text == "":
            continue  # a line that exists only for one value of a flag
        lines.append(text)
    expansion.check()
    return lines


def placeholders(body: str | Sequence[str]) -> list[str]:
    """The names that `body` refers to, in order of first use (for checking a template)."""
    texts = [body] if isinstance(body, str) else list(body)
    names: dict[str, None] = {}
    for text in texts:
        for match in _PLACEHOLDER.finditer(str(text)):
            names[match.group("flag") or match.group("name")] = None
    return list(names)
