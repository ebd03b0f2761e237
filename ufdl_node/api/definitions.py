"""Handlers made from TOML definitions: what the built-in ``command`` and ``docker`` handlers share.

A definition-driven handler module reads one table per job template from the node's
settings (``<kind>_templates``) and from drop-in files (``<kind>_template_dirs/*.toml``,
the same keys at top level, ``template = "..."`` overriding the file name), checks each,
and makes one :class:`HandlerSpec` per template; a wrong definition becomes a
:class:`PluginError` and the others still load. The helpers here are that loading, the
checks every such definition makes, its description for dry-run and the embedded server,
and the collecting of a job's output files.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import JobFailed, PluginError
from ..ufdltypes import DOMAINS
from ..work.archives import DEFAULT_COMPRESSION, zip_entries, zip_files
from .context import JobContext
from .spec import MISSING, HandlerSpec, Parameter, TemplateDescription, replace_spec

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef,unused-ignore]

MakeSpec = Callable[[str, dict[str, Any]], HandlerSpec]


def definition_handlers(settings: Any, kind: str, make_spec: MakeSpec,
                        source: str) -> Iterator[HandlerSpec | PluginError]:
    """One handler per definition in the settings' ``<kind>_templates`` and ``<kind>_template_dirs``.

    `make_spec(name, config)` raises on a wrong definition, which is yielded as a PluginError
    naming the template and where it came from; `source` (the handler module's file) starts
    each spec's source.
    """
    for name, config in (getattr(settings, f"{kind}_templates", None) or {}).items():
        yield _spec_or_problem(kind, name, config, f"settings {kind}_templates", make_spec, source)
    for directory in getattr(settings, f"{kind}_template_dirs", None) or []:
        directory = Path(directory)
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            if path.name.startswith("_"):  # a base that others extend, no template
                continue
            try:
                config = load_definition(path)
            except (OSError, ValueError) as e:  # TOMLDecodeError is a ValueError
                yield PluginError(f"{kind} template file {path}: {e}")
                continue
            name = str(config.get("template") or path.stem)
            yield _spec_or_problem(kind, name, config, str(path), make_spec, source)


MAX_EXTENDS = 8  # how deep ``extends`` may chain


def load_definition(path: Path) -> dict[str, Any]:
    """The definition in the TOML file `path`, with what its ``extends`` (a file of the same
    directory, itself possibly extending another) gives merged under it: the file's keys win,
    tables merge key by key. ValueError (one line, naming the file and ``extends``) for a
    base that is missing, outside the directory, or a cycle."""
    chain: list[dict[str, Any]] = []
    seen: list[Path] = []
    current = path
    while True:
        with current.open("rb") as f:
            config = tomllib.load(f)
        seen.append(current.resolve())
        chain.append(config)
        base = config.pop("extends", None)
        if base is None:
            break
        if not isinstance(base, str) or not base or "/" in base or "\\" in base or base in (".", ".."):
            raise ValueError(f"extends: {base!r} must be the name of a file in {path.parent}")
        current = current.parent / base
        if current.resolve() in seen or len(seen) > MAX_EXTENDS:
            raise ValueError(f"extends: {base!r} makes a cycle (or a chain deeper than {MAX_EXTENDS})")
        if not current.is_file():
            raise ValueError(f"extends: {base!r} is not a file in {path.parent}")
    merged: dict[str, Any] = {}
    for config in reversed(chain):
        if config is not chain[0]:
            config.pop("template", None)  # a base's own name is not inherited
        merged = merge_tables(merged, config)
    return merged


def merge_tables(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s keys: tables merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(value: Any, what: str) -> int:
    """A size as Docker's ``--shm-size`` takes it (``8G``, ``512m``, ``1.5GiB``, or bytes);
    ValueError naming `what` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(str(value)) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"{what}: {value!r} is not a size (say 8G, 512m or a number of bytes)")
    return int(float(match.group(1)) * 1024 ** "bkmgt".index((match.group(2) or "b").lower()))


def model_type(config: dict[str, Any], what: str) -> str:
    """The stock contract's model type for a definition's ``domain`` and ``framework``
    (``name:version``): ``Model<Domain<'...'>, Framework<'name', 'version'>>``."""
    domain, framework = config.get("domain"), config.get("framework")
    if not isinstance(domain, str) or not isinstance(framework, str) or ":" not in framework:
        raise ValueError(f"{what}: type \"Model\" needs domain and framework (\"name:version\")")
    name, version = framework.split(":", 1)
    domain = DOMAINS.get(domain, domain)
    return f"Model<Domain<'{domain}'>, Framework<'{name}', '{version}'>>"



def _spec_or_problem(kind: str, name: str, config: Any, origin: str, make_spec: MakeSpec,
                     source: str) -> HandlerSpec | PluginError:
    try:
        spec = make_spec(name, config)
    except Exception as e:  # one bad template must not take the others with it
        return PluginError(f"{kind} template {name!r} from {origin}: {e}")
    return replace_spec(spec, source=f"{source} [template {name} from {origin}]")


def check_keys(config: Any, keys: Iterable[str]) -> None:
    """TypeError unless `config` is a table; ValueError naming the keys it has beyond `keys`."""
    if not isinstance(config, dict):
        raise TypeError("expected a table of settings")
    unknown = set(config) - set(keys)
    if unknown:
        raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")


def check_tables(config: dict[str, Any], keys: Iterable[str]) -> None:
    """TypeError naming the first of `keys` that `config` sets to something other than a table."""
    for key in keys:
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise TypeError(f"'{key}' must be a table")


def parameter(name: str, decl: Any) -> Parameter:
    """The template parameter `name` a definition's ``parameters`` table declares (``types``,
    ``default``, ``help``, ``const``; ``default_type = "Nothing"`` without a ``default``: the
    default is null, which TOML cannot write)."""
    if not isinstance(decl, dict) or "types" not in decl:
        raise ValueError(f"parameter {name!r} needs 'types'")
    types = decl["types"]
    types = (types,) if isinstance(types, str) else tuple(str(t) for t in types)
    default = decl.get("default", MISSING)
    if default is MISSING and decl.get("default_type") == "Nothing":  # TOML has no null
        default = None
    return Parameter(name=name, types=types, default=default,
                     help=str(decl.get("help", "")), const=bool(decl.get("const", False)))


def describe(config: dict[str, Any], default_description: str) -> TemplateDescription:
    """The template a definition describes (``job_type``, ``domain``, ``framework``, ``inputs``,
    ``parameters``, ``description``), for dry-run and the embedded server."""
    parameters = tuple(parameter(p, d) for p, d in (config.get("parameters") or {}).items())
    return TemplateDescription(
        job_type=config.get("job_type", "Export"), domain=config.get("domain"),
        framework=config.get("framework"), inputs=dict(config.get("inputs") or {}),
        parameters=parameters, description=config.get("description", default_description))


async def collect_output(ctx: JobContext, name: str, patterns: str | list[str], *, required: bool = True,
                         zip_: bool = False, flat: bool = False,
                         compression: str = DEFAULT_COMPRESSION) -> Path | None:
    """The file to upload as output `name`: the one match of `patterns` (globs in the work
    directory), or a zip of what matches (always with `zip_`; under base names with `flat`),
    its members stored or deflated as `compression` says.

    JobFailed when nothing matches and the output is required, or a match leaves the work
    directory; None when an optional output is absent. The globbing and the zip run in a
    thread (a model is GiBs: the event loop must not wait on it), and the zip is hashed as
    it is written, so that staging it does not read it again.
    """
    patterns = patterns if isinstance(patterns, list) else [patterns]
    pattern = ", ".join(map(str, patterns))
    collected = await asyncio.to_thread(_collect, ctx, name, patterns, zip_, flat, compression)
    if collected is None:
        if required:
            raise JobFailed(f"output {name!r}: nothing matches {pattern!r} in the work directory")
        ctx.log.info("optional output absent", output=name, path=pattern)
        return None
    path, zipped = collected
    if zipped:
        ctx.log.info("output zipped", output=name, files=zipped, compression=compression)
    return path


def _collect(ctx: JobContext, name: str, patterns: list[str], zip_: bool, flat: bool,
             compression: str) -> tuple[Path, int] | None:
    """collect_output's blocking part: the file, and how many files were zipped into it (0
    for a single file uploaded as it is); None when nothing matches."""
    pattern = ", ".join(map(str, patterns))
    matches = sorted({Path(p) for glob_ in patterns
                      for p in glob.glob(str(ctx.work_dir / str(glob_)), recursive=True)})
    for match in matches:  # a pattern (or a job's parameter in it) must not reach other files
        ctx.confined(match, f"output {name!r}")
    if not matches:
        return None
    if len(matches) == 1 and matches[0].is_file() and not zip_:
        return matches[0], 0
    files = [f for m in matches for f in ([m] if m.is_file() else sorted(m.rglob("*"))) if f.is_file()]
    for f in files:  # a symbolic link inside a matched directory must not reach out either
        ctx.confined(f, f"output {name!r}")
    if not files:
        raise JobFailed(f"output {name!r}: {pattern!r} matches only empty directories")
    archive = ctx.work_dir / ".outputs" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.zip"
    if flat:
        return zip_files(files, archive, compression=compression), len(files)
    base = Path(os.path.commonpath([m if m.is_dir() else m.parent for m in matches]))
    entries = [(f.relative_to(base).as_posix(), f) for f in files]
    return zip_entries(entries, archive, compression=compression), len(files)
