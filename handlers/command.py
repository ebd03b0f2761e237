"""The ``command`` handler: run an existing script for a job template, no Python needed.

Each template is configured in the node's settings::

    [command_templates.my_train]
    command = "python train.py --epochs {param.epochs} --data {input.dataset} --out {work_dir}/out"
    progress_regex = 'epoch (?P<step>\\d+)/(?P<total>\\d+) loss=(?P<loss>[\\d.]+)'
    outputs = [{ name = "model", type = "Blob", path = "out/*.pt" }]
    env = { CUDA_VISIBLE_DEVICES = "0" }
    timeout_s = 3600

or in a drop-in file ``<command_template_dir>/my_train.toml`` holding the same
keys at top level (the file name is the template name unless ``template =
"..."`` says otherwise).

Keys:

- ``command`` (a shell command line; substituted values are shell-quoted) or
  ``argv`` (a list of arguments run without a shell; values are not quoted).
- Placeholders: ``{input.NAME}``, ``{param.NAME}``, ``{work_dir}``,
  ``{cache_dir}``, ``{job_pk}``, ``{template}``, ``{python}`` (the node's
  Python); ``{{`` and ``}}`` for literal braces. In ``command`` every value is
  shell-quoted where it stands, so a placeholder must not stand inside quotes
  (that is refused at load: quoting would no longer protect it). A ``PK<...>`` input gives its
  primary key, a Boolean ``true``/``false``, JSON its JSON text.
- ``progress_regex``: searched in every output line; named group ``progress``
  (0..1), ``percent`` (0..100) or ``step`` and ``total``; other named groups are
  sent as progress data (e.g. ``loss``).
- ``outputs``: ``[{name, type, path, required = true}]``; ``path`` is relative
  to the work directory and may be a glob (``**`` too). One matching file is
  uploaded as it is; several files, or a directory, are zipped into one.
- ``env`` (placeholders allowed), ``cwd`` (default the work directory),
  ``timeout_s``, ``versions`` (``">=1,<3"``), ``needs`` (``{gpu = true,
  min_gpu_mem_bytes = ...}``).
- For ``dry-run`` and the embedded server: ``job_type``, ``domain``,
  ``framework``, ``inputs`` (``{dataset = "PK<Dataset<...>>"}``), ``parameters``
  (``{epochs = {types = ["int"], default = 5, help = "..."}}``) and
  ``description``.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ufdl_node.api import (
    HandlerFunc,
    HandlerSpec,
    JobContext,
    JobFailed,
    Needs,
    handler,
)
from ufdl_node.api.definitions import (
    NEEDS_KEYS,
    DefinitionItem,
    check_keys,
    check_tables,
    collect_output,
    definition_handlers,
    describe,
)

KEYS = {"template", "command", "argv", "progress_regex", "outputs", "env", "cwd", "timeout_s",
        "versions", "needs", "job_type", "domain", "framework", "inputs", "parameters",
        "description"}
OUTPUT_KEYS = {"name", "type", "path", "required"}
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_]+)(?:\.([^{}\s]+))?\}")
PLAIN_PLACEHOLDERS = {"work_dir", "cache_dir", "job_pk", "template", "python"}


def handlers(settings: Any) -> Iterator[DefinitionItem]:
    """One handler per template configured in the settings and the drop-in directories.

    A template whose configuration is wrong is skipped and reported as a PluginError; an unknown
    key in it is a ConfigError, which stops the node's start.
    """
    return definition_handlers(settings, "command", make_spec, __file__)


def make_spec(name: str, config: dict[str, Any]) -> HandlerSpec:
    """The handler spec for template `name` with `config`; ValueError when it is wrong."""
    check_keys(config, KEYS)
    if ("command" in config) == ("argv" in config):
        raise ValueError("set exactly one of 'command' (a shell line) and 'argv' (a list)")
    if "command" in config and not isinstance(config["command"], str):
        raise TypeError("'command' must be a string")
    if "argv" in config and (not isinstance(config["argv"], list) or not config["argv"]):
        raise TypeError("'argv' must be a non-empty list of strings")
    if "command" in config:
        quoted = _quoted_placeholders(config["command"])
        if quoted:
            # Values are shell-quoted where they stand; inside quotes that quoting no longer
            # protects anything, and a job's parameter could run commands of its own.
            raise ValueError(f"placeholder {quoted[0]} stands inside quotes in 'command': leave it "
                             "unquoted, ufdl-node quotes every value it substitutes")
    if config.get("timeout_s") is not None and not isinstance(config["timeout_s"], (int, float)):
        raise TypeError("'timeout_s' must be a number of seconds")
    if config.get("versions") is not None and not isinstance(config["versions"], str):
        raise TypeError("'versions' must be a string such as '>=1,<3'")
    check_tables(config, ("env", "parameters", "inputs", "needs"))
    texts = [config["command"]] if "command" in config else [str(a) for a in config["argv"]]
    texts += [str(v) for v in (config.get("env") or {}).values()]
    for text in texts:
        for kind, key in _placeholders(text):
            if kind not in ("input", "param") and (kind not in PLAIN_PLACEHOLDERS or key):
                raise ValueError(f"unknown placeholder {{{kind}{'.' + key if key else ''}}} in {text!r}")
    if config.get("progress_regex"):
        re.compile(config["progress_regex"])  # re.error is a ValueError
    outputs = config.get("outputs") or []
    for output in outputs:
        if not isinstance(output, dict) or not {"name", "type", "path"} <= set(output):
            raise ValueError(f"each output needs name, type and path, got {output!r}")
        check_keys(output, OUTPUT_KEYS, f"output {output['name']!r}")
    check_keys(config.get("needs") or {}, NEEDS_KEYS, "needs")
    needs = Needs(**(config.get("needs") or {}))
    description = describe(config, f"runs {texts[0]!r} (ufdl-node command handler)")
    return handler(name, versions=config.get("versions"), needs=needs, description=description,
                   name="command")(_runner(dict(config)))


def _runner(config: dict[str, Any]) -> HandlerFunc:
    async def run_command(ctx: JobContext) -> None:
        await run_configured(ctx, config)
    return run_command


async def run_configured(ctx: JobContext, config: dict[str, Any]) -> None:
    """Run the configured command for the job in `ctx`, then upload its outputs."""
    if "command" in config:
        cmd: str | list[str] = _substitute(config["command"], ctx, shlex.quote)
    else:
        cmd = [_substitute(str(a), ctx, str) for a in config["argv"]]
    env = {str(k): _substitute(str(v), ctx, str) for k, v in (config.get("env") or {}).items()}
    cwd = ctx.confined(_substitute(str(config["cwd"]), ctx, str), "cwd") if config.get("cwd") else None
    await ctx.run(cmd, cwd=cwd, env=env, progress_regex=config.get("progress_regex") or None,
                  timeout_s=config.get("timeout_s"))
    for output in config.get("outputs") or []:
        path = await collect_output(ctx, str(output["name"]), _substitute(str(output["path"]), ctx, str),
                                    required=bool(output.get("required", True)))
        if path is not None:
            await ctx.upload(str(output["name"]), str(output["type"]), path)
    ctx.progress(1.0)


def _quoted_placeholders(command: str) -> list[str]:
    """The placeholders of a shell command line that stand inside '...' or "..."."""
    inside: list[str] = []
    quote: str | None = None
    starts = {m.start(): m.group(0) for m in PLACEHOLDER.finditer(command) if m.group(1)}
    i = 0
    while i < len(command):
        ch = command[i]
        if i in starts and quote is not None:
            inside.append(starts[i])
        if ch == "\\" and quote != "'":
            i += 2  # an escaped character changes no quoting
            continue
        if quote is None and ch in ("'", '"'):
            quote = ch
        elif ch == quote:
            quote = None
        i += 1
    return inside


def _placeholders(text: str) -> Iterator[tuple[str, str]]:
    for match in PLACEHOLDER.finditer(text):
        if match.group(1):
            yield match.group(1), match.group(2) or ""


def _substitute(text: str, ctx: JobContext, quote: Callable[[str], str]) -> str:
    def replace(match: re.Match[str]) -> str:
        whole, kind, key = match.group(0), match.group(1), match.group(2)
        if whole in ("{{", "}}"):
            return whole[0]
        if kind == "input":
            if key not in ctx.inputs:
                raise JobFailed(f"the command needs input {key!r}, which the job does not have")
            return quote(_text(ctx.inputs[key].value))
        if kind == "param":
            if key not in ctx.params:
                raise JobFailed(f"the command needs parameter {key!r}, which the job does not have")
            return quote(_text(ctx.params[key]))
        plain = {"work_dir": str(ctx.work_dir), "cache_dir": str(ctx.cache_dir),
                 "job_pk": str(ctx.pk), "template": str(ctx.job.get("template", {}).get("name", "")),
                 "python": sys.executable}
        if kind in plain and not key:
            return quote(plain[kind])
        raise JobFailed(f"unknown placeholder {whole} in the command")

    return PLACEHOLDER.sub(replace, text)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)
