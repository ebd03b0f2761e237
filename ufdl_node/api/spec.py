"""What a handler declares: :func:`handler`, :class:`Needs`, :class:`Parameter`,
:class:`TemplateDescription`, :class:`VersionRange` and the :class:`HandlerSpec` it makes."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import JobFailed
from ..ufdltypes import DOMAINS, UfdlTypeError, canonical, domain_code
from .values import parse_value


class _Missing:
    """Type of :data:`MISSING`: no default was given."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
"""A parameter without a default: the job must give a value."""


# -- what a handler declares ------------------------------------------------------


@dataclass(frozen=True)
class Needs:
    """What a handler needs from the machine; the daemon offers a job only to a slot that has it."""

    gpu: bool = False
    min_gpu_mem_bytes: int = 0
    min_compute_capability: float | None = None
    min_free_disk_bytes: int = 0
    docker: bool = False  # runs containers (ctx.container): not acquired while Docker is down

    def summary(self) -> str:
        """One short line, e.g. ``"gpu, >=8.0 GiB GPU memory"`` or ``"cpu"``."""
        parts = ["gpu" if self.gpu else "cpu"]
        if self.min_gpu_mem_bytes:
            parts.append(f">={self.min_gpu_mem_bytes / 2**30:.1f} GiB GPU memory")
        if self.min_compute_capability is not None:
            parts.append(f"compute capability >={self.min_compute_capability}")
        if self.min_free_disk_bytes:
            parts.append(f">={self.min_free_disk_bytes / 2**30:.1f} GiB free disk")
        if self.docker:
            parts.append("docker")
        return ", ".join(parts)


@dataclass(frozen=True)
class Parameter:
    """A parameter of a job template: its name, allowed UFDL types, default and help.

    Types are the server's names (``int``, ``str``, ``Array<str>``, ``PK<...>`` ...); the old
    names ``Integer``, ``String``, ``Float`` and ``Boolean`` are accepted and sent as those.

    ``const`` parameters keep their default: a job that sets another value fails.
    """

    name: str
    types: tuple[str, ...]
    default: Any = MISSING
    help: str = ""
    const: bool = False

    def _default_type(self) -> str:
        """The first of the types the default fits (0.5 is a Float even where Integer comes first)."""
        for type_ in self.types:
            try:
                parse_value(self.name, type_, self.default)
            except JobFailed:
                continue
            return type_
        return self.types[0]

    def to_template(self) -> dict[str, Any]:
        """This parameter as an entry of a template's ``parameters`` object, in the server's type
        names (``Integer`` → ``int``, ...); ValueError (one line) for a type that is none."""
        try:
            types = [canonical(t) for t in self.types]
        except UfdlTypeError as e:
            raise ValueError(f"parameter {self.name!r}: {e}") from None
        entry: dict[str, Any] = {"types": types, "help": self.help}
        if self.default is not MISSING:
            entry["default"] = self.default
            entry["default_type"] = canonical(self._default_type())
        if self.const:
            entry["const"] = True
        return entry


@dataclass(frozen=True)
class TemplateDescription:
    """The job template a handler serves, so that the embedded server and ``dry-run``
    can create a matching template and jobs without hand-written JSON.

    ``job_type`` is the contract (``"Train"``, ``"Predict"``, ``"Export"``) or a
    full contract type; ``domain`` (its name, ``"Image Classification"``, or its
    code, ``"ic"``) and ``framework`` (``"name"`` or ``"name:version"``) become its
    type arguments; the import sends the domain by its code. ``inputs`` maps input names
    to UFDL types (a ``Train`` contract has ``{"dataset": "PK<Dataset<...>>"}``).
    """

    job_type: str = "Export"
    domain: str | None = None
    framework: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    parameters: tuple[Parameter, ...] = ()
    description: str = ""

    def contract_type(self) -> str:
        """The contract as a UFDL type: ``Train<Domain<'Image Classification'>, Framework<'x', '1'>>``."""
        if "<" in self.job_type or (self.domain is None and self.framework is None):
            return self.job_type
        args = []
        if self.domain is not None:
            args.append(f"Domain<'{DOMAINS.get(self.domain, self.domain)}'>")
        if self.framework is not None:
            fname, _, fversion = self.framework.partition(":")
            args.append(f"Framework<'{fname}', '{fversion or '1'}'>")
        return f"{self.job_type}<{', '.join(args)}>"

    def template_parameters(self) -> dict[str, dict[str, Any]]:
        """The ``parameters`` object of the template, as the server shows it."""
        return {p.name: p.to_template() for p in self.parameters}

    def import_spec(self, name: str, version: int = 1) -> dict[str, Any]:
        """The body for ``POST /v1/job-templates/import`` (the real server's format: the domain by
        its code, the server's type names); ValueError (one line) for an unknown type or domain."""
        spec: dict[str, Any] = {
            "name": name,
            "version": version,
            "description": self.description or f"{name} (ufdl-node handler)",
            "scope": "public",
            "licence": "Apache 2.0",
            "specific": {
                "job_type": self.contract_type(),
                "executor_class": f"ufdl_node.handler.{name}",
                "required_packages": "",
                "parameters": self.template_parameters(),
            },
        }
        if self.domain is not None:
            try:
                spec["domain"] = domain_code(self.domain)
            except UfdlTypeError as e:
                raise ValueError(str(e)) from None
        return spec


# -- version ranges -------------------------------------------------------------------

_CONSTRAINT_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+)\s*$")
_OPS: dict[str, Callable[[int, int], bool]] = {
    ">=": lambda v, n: v >= n, "<=": lambda v, n: v <= n, ">": lambda v, n: v > n,
    "<": lambda v, n: v < n, "==": lambda v, n: v == n, "!=": lambda v, n: v != n,
}


@dataclass(frozen=True)
class VersionRange:
    """A range of template versions such as ``">=1,<3"`` or ``"==2"`` (integers only).

    Comma-separated constraints with ``>=``, ``<=``, ``>``, ``<``, ``==``, ``!=``;
    all must hold. A bare number means ``==``. ``None`` or ``""`` means any version.
    """

    constraints: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> VersionRange:
        """Parse `text`; raise ValueError with the offending part on a bad range."""
        if text is None or not text.strip():
            return cls()
        parts = []
        for raw in text.split(","):
            part = raw.strip()
            if part.lstrip("-").isdigit():
                part = "==" + part
            match = _CONSTRAINT_RE.match(part)
            if match is None:
                raise ValueError(f"bad version constraint {raw.strip()!r} in {text!r} "
                                 "(expected e.g. '>=1,<3')")
            parts.append((match.group(1), int(match.group(2))))
        return cls(tuple(parts))

    def __contains__(self, version: int) -> bool:
        return all(_OPS[op](version, n) for op, n in self.constraints)

    def overlaps(self, other: VersionRange) -> bool:
        """Whether some version >= 0 lies in both ranges."""
        lo, hi = 0, math.inf
        exact: set[int] = set()
        excluded: set[int] = set()
        for op, n in (*self.constraints, *other.constraints):
            if op == ">=":
                lo = max(lo, n)
            elif op == ">":
                lo = max(lo, n + 1)
            elif op == "<=":
                hi = min(hi, n)
            elif op == "<":
                hi = min(hi, n - 1)
            elif op == "==":
                exact.add(n)
            else:
                excluded.add(n)
        if exact:
            return len(exact) == 1 and all(lo <= n <= hi and n not in excluded for n in exact)
        if hi == math.inf:
            return True
        return any(v not in excluded for v in range(lo, int(hi) + 1))

    def __str__(self) -> str:
        return ",".join(f"{op}{n}" for op, n in self.constraints) or "any"


# -- the handler spec and decorator ---------------------------------------------------

# What a handler is: ``async def run(ctx: JobContext) -> None``. The context is Any here:
# context.py names HandlerSpec, and spec.py must not import it back.
HandlerFunc = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class HandlerSpec:
    """A registered handler: what :func:`handler` returns and the registry collects.

    Calling the spec calls the handler function, so a decorated ``run`` stays
    callable as ``await run(ctx)``.
    """

    name: str
    templates: tuple[str, ...]
    func: HandlerFunc
    needs: Needs = Needs()
    versions: str | None = None
    description: TemplateDescription | None = None
    source: str = ""
    version_range: VersionRange = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "version_range", VersionRange.parse(self.versions))

    def serves(self, template_name: str, version: int) -> bool:
        """Whether this handler runs jobs of template `template_name` at `version`."""
        return template_name in self.templates and version in self.version_range

    def conflicts_with(self, other: HandlerSpec) -> str | None:
        """The first template name both claim for overlapping versions, or None."""
        for name in self.templates:
            if name in other.templates and self.version_range.overlaps(other.version_range):
                return name
        return None

    def __call__(self, ctx: Any) -> Awaitable[None]:
        return self.func(ctx)


def handler(*templates: str, versions: str | None = None, needs: Needs = Needs(),
            description: TemplateDescription | None = None,
            name: str | None = None) -> Callable[[HandlerFunc], HandlerSpec]:
    """Register ``async def run(ctx: JobContext) -> None`` for job templates `templates`.

    `versions` limits it to a range of template versions (``">=1,<3"``); `needs`
    says what the machine must have; `description` describes the template so
    that it can be created on a server; `name` defaults to the first template.
    The decorated name becomes a :class:`HandlerSpec` (still awaitable with a
    context), which the registry finds by scanning the module.
    """
    if not templates or not all(isinstance(t, str) and t for t in templates):
        raise ValueError("@handler needs at least one job-template name")
    VersionRange.parse(versions)  # fail at import time, where the plugin is named

    def decorate(func: HandlerFunc) -> HandlerSpec:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@handler({templates[0]!r}): {getattr(func, '__qualname__', func)!r} "
                            "must be an async function taking a JobContext")
        code = getattr(func, "__code__", None)
        _check_signature(func, templates[0], code)
        return HandlerSpec(name=name or templates[0], templates=tuple(templates), func=func,
                           needs=needs, versions=versions, description=description,
                           source=code.co_filename if code is not None else repr(func))

    return decorate


def _check_signature(func: HandlerFunc, template: str, code: Any) -> None:
    """TypeError, naming the handler's file and line, unless `func` can be called with the context
    alone (as the slot calls it): caught at load, not blamed on the slot when a job runs."""
    try:
        inspect.signature(func).bind(object())
    except TypeError:
        where = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
        raise TypeError(f"@handler({template!r}): {getattr(func, '__qualname__', func)}"
                        f"{inspect.signature(func)} must take one argument, the JobContext{where}") \
            from None
    except ValueError:
        pass  # no signature to read (a builtin): the call decides


def replace_spec(spec: HandlerSpec, **changes: Any) -> HandlerSpec:
    """A copy of `spec` with `changes` (e.g. ``source=...``), for plugin hooks."""
    return dataclasses.replace(spec, **changes)
