"""Finding handlers: handler directories and entry points, and lookup by template.

Sources, in order: each handler directory (every ``*.py`` not starting with
``_``, imported under a unique module name), then entry points in the group
``ufdl_node.handlers``. An entry point may name a module, a :class:`HandlerSpec`,
a list of them, or a callable ``(settings) -> Iterable[HandlerSpec]``.

In a module, every :class:`HandlerSpec` attribute is a handler; a module-level
``def handlers(settings)`` is called as well and may yield more specs (and
:class:`PluginError` instances for entries it skipped, which become problems).

A plugin that fails to load is reported on one line in ``Registry.problems``
(which plugin, which file, what broke) and skipped. Two handlers claiming one
template name for overlapping versions raise :class:`PluginError` naming both.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from .api import HandlerSpec, replace_spec
from .errors import ConfigError, PluginError
from .logs import get_logger, one_line

ENTRY_POINT_GROUP = "ufdl_node.handlers"
HOOK_NAME = "handlers"
FOUND_MAX = 1024  # template versions remembered by for_template (names come from the server)

log = get_logger("ufdl_node.registry")
_IMPORTLIB_DIR = Path(importlib.util.__file__).parent


class Registry:
    """The handlers this node can run, and the plugins that failed to load."""

    def __init__(self) -> None:
        self._specs: list[HandlerSpec] = []
        self._found: dict[tuple[str, int], HandlerSpec | None] = {}  # for_template's answers
        self.problems: list[str] = []
        self.errors: list[str] = []  # settings to fix (a definition's unknown key): raised by load

    @classmethod
    def load(cls, handler_dirs: Iterable[Path | str] = (), *, entry_points: bool = True,
             settings: Any = None) -> Registry:
        """Load every handler from `handler_dirs` and (optionally) the entry points.

        Raises PluginError when two handlers claim one template, ConfigError (every line) when
        a definition in the settings or a drop-in names a key nothing reads; a plugin that does
        not load is recorded in ``problems`` and skipped.
        """
        registry = cls()
        seen: set[Path] = set()
        for directory in map(Path, handler_dirs):
            if directory.resolve() not in seen:  # one directory named twice loads once
                seen.add(directory.resolve())
                registry.load_dir(directory, settings=settings)
        if entry_points:
            registry.load_entry_points(settings=settings)
        if registry.errors:
            raise ConfigError(registry.errors)
        for problem in registry.problems:
            log.warning("handler plugin skipped", problem=problem)
        return registry

    def load_dir(self, directory: Path, *, settings: Any = None) -> None:
        """Load the handler files of one directory; a missing directory is skipped."""
        if not directory.is_dir():
            log.debug("handler directory absent", path=str(directory))
            return
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            what = f"handler file {path}"
            try:
                module = load_module_file(path)
                specs = _specs_from(module, settings, str(path), self, what)
            except (Exception, SystemExit) as e:  # any error of foreign code (a script's
                # argparse exiting, say) is a problem of that plugin, never the daemon's end
                self.problems.append(f"{what}: {_error_line(e, path)}")
                continue
            self._add_all(specs)

    def load_entry_points(self, *, settings: Any = None) -> None:
        """Load the plugins of the entry-point group ``ufdl_node.handlers``."""
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            source = f"entry point {ep.name} = {ep.value}"
            dist = getattr(ep, "dist", None)
            what = f"handler {source}" + (f" (package {dist.name})" if dist is not None else "")
            try:
                obj = ep.load()
                specs = _specs_from(obj, settings, source, self, what)
            except (Exception, SystemExit) as e:
                self.problems.append(f"{what}: {_error_line(e, None)}")
                continue
            self._add_all(specs)

    def add(self, spec: HandlerSpec) -> None:
        """Register `spec`; PluginError when it claims a template another handler serves."""
        for other in self._specs:
            template = spec.conflicts_with(other)
            if template is not None:
                raise PluginError(
                    f"template {template!r} is claimed by two handlers: {other.name} "
                    f"(versions {other.version_range}, from {other.source}) and {spec.name} "
                    f"(versions {spec.version_range}, from {spec.source})")
        self._specs.append(spec)
        self._found.clear()

    def _add_all(self, specs: Iterable[HandlerSpec]) -> None:
        for spec in specs:
            if spec in self._specs:  # the same object reached twice (a module re-exporting one)
                continue
            self.add(spec)

    def for_template(self, name: str, version: int) -> HandlerSpec | None:
        """The handler for jobs of template `name` at `version`, or None (remembered: asked
        for every candidate job, of a few templates, against every handler)."""
        key = (name, version)
        try:
            return self._found[key]
        except KeyError:
            pass
        found = next((spec for spec in self._specs if spec.serves(name, version)), None)
        if len(self._found) >= FOUND_MAX:
            self._found.clear()
        self._found[key] = found
        return found

    def get(self, name: str) -> HandlerSpec | None:
        """The first handler called `name`, or None."""
        return next((spec for spec in self._specs if spec.name == name), None)

    def specs(self) -> list[HandlerSpec]:
        """Every handler, in load order."""
        return list(self._specs)

    def templates(self) -> list[str]:
        """Every template name some handler serves."""
        return sorted({t for spec in self._specs for t in spec.templates})


def load_module_file(path: Path) -> ModuleType:
    """Import the Python file `path` under a module name unique to that path."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"ufdl_node_handlers_{digest}.{path.stem}".replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # In sys.modules while it runs: dataclasses and pickling look a module up by name.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _specs_from(obj: Any, settings: Any, source: str, registry: Registry,
                what: str) -> list[HandlerSpec]:
    """The handler specs an imported plugin object provides; the PluginErrors it yields go to
    the registry's problems, the ConfigErrors to its errors."""
    found: list[Any] = []
    if isinstance(obj, ModuleType):
        found.extend(v for v in vars(obj).values() if isinstance(v, HandlerSpec))
        hook = getattr(obj, HOOK_NAME, None)
        if callable(hook) and not isinstance(hook, HandlerSpec):
            found.extend(hook(settings))
    elif isinstance(obj, HandlerSpec):
        found.append(obj)
    elif isinstance(obj, (list, tuple)):
        found.extend(obj)
    elif callable(obj):
        found.extend(obj(settings))
    else:
        raise TypeError(f"expected a module, a HandlerSpec, a list of them or a callable, "
                        f"got {type(obj).__name__}")
    specs = []
    for item in found:
        if isinstance(item, PluginError):
            registry.problems.append(f"{what}: {item}")
        elif isinstance(item, ConfigError):
            registry.errors.extend(item.problems)
        elif isinstance(item, HandlerSpec):
            # An entry point is named by the entry point; a file keeps its path.
            specs.append(item if not source.startswith("entry point")
                         else replace_spec(item, source=source))
        else:
            raise TypeError(f"expected HandlerSpec objects, got {type(item).__name__}")
    return specs


def _error_line(exc: BaseException, path: Path | None) -> str:
    """`exc` on one line, with the plugin's line where it happened when that is known."""
    text = f"{type(exc).__name__}: {one_line(exc, 300)}"
    if isinstance(exc, SyntaxError):
        return text  # its message already names file and line
    # The plugin's own frames: not the import machinery's, not ours.
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<") and not Path(f.filename).is_relative_to(_IMPORTLIB_DIR)
              and f.filename != __file__]
    if path is not None:
        frames = [f for f in frames if Path(f.filename) == path] or frames
    if frames:
        where = Path(frames[-1].filename).name if path is not None else frames[-1].filename
        text += f" (at {where}:{frames[-1].lineno})"
    return text


def describe(registry: Registry) -> list[dict[str, Any]]:
    """One row per handler for ``ufdl-node handlers``: name, templates, versions, source, needs."""
    return [{"name": spec.name, "templates": list(spec.templates),
             "versions": str(spec.version_range), "source": spec.source,
             "needs": spec.needs.summary()}
            for spec in registry.specs()]
