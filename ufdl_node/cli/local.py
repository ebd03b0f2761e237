"""Everything on one machine: `ufdl-node dry-run` and `ufdl-node demo`.

Both start the embedded server in-process, create templates from the handlers'
own descriptions, create jobs, and run the real daemon (``Supervisor``) against
it, with a live view of the jobs' progress drawn by rich.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..api import HandlerSpec, TemplateDescription, safe_file_name
from ..client import UfdlClient
from ..daemon.supervisor import Supervisor
from ..daemon.workdirs import job_log, job_root
from ..errors import ConfigError, ExitCode, ServerError
from ..logs import configure_logging, one_line
from ..protocol import Phase
from ..protocol import phase as server_phase
from ..registry import Registry
from ..server import EmbeddedServer
from ..settings import SHIPPED_HANDLERS_DIR, NodeSettings, ServerSettings
from ..work.records import domain_of_type
from .args import parse_inputs, parse_params
from .localdata import upload_dataset
from .localrecords import config_settings, local_records
from .progress import JobProgress, phase_text
from .terminal import CommandFailed, error_line, live_view, make_console

DEMO_SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "sample_counter.py"
# The demo's `command` template: a plain script, no Python handler (see handlers/command.py).
DEMO_COMMAND_TEMPLATE: dict[str, Any] = {
    "command": "{python} " + shlex.quote(str(DEMO_SCRIPT)) + " --steps {param.steps} --out {work_dir}/out",
    "progress_regex": r"step (?P<step>\d+)/(?P<total>\d+) value=(?P<value>[\d.]+)",
    "outputs": [{"name": "report", "type": "JSON", "path": "out/report.json"},
                {"name": "samples", "type": "Compressed<Blob>", "path": "out/samples/*.txt"}],
    "parameters": {"steps": {"types": ["int"], "default": 6, "help": "how many steps the script runs"}},
    "description": "demo: a plain script run by the command handler",
}


@dataclass
class LocalRun:
    """An in-process embedded server with an admin client and a worker's settings."""

    server: EmbeddedServer
    admin: UfdlClient
    admin_password: str
    worker_password: str
    scratch: Path
    templates: dict[str, int] = field(default_factory=dict)
    carrier_node: int | None = None  # the admin's node that holds files given as job outputs

    def node_settings(self, handler_dirs: list[Path], **overrides: Any) -> NodeSettings:
        values: dict[str, Any] = {
            "server_url": self.server.url, "username": "worker", "password": self.worker_password,
            "state_dir": self.scratch / "node-state", "cache_dir": self.scratch / "node-cache",
            "handler_dirs": handler_dirs, "poll_interval_s": 0.5, "poll_jitter_s": 0.1,
            "progress_interval_s": 0.2, "cancel_check_interval_s": 0.5, "cancel_grace_s": 5.0,
            "grace_period_s": 30.0, "log_level": "warning",
        }
        values.update(overrides)
        return NodeSettings(**values)

    async def ensure_template(self, spec: HandlerSpec, name: str) -> int:
        """Import a template for `name` from the handler's description (once)."""
        if name in self.templates:
            return self.templates[name]
        self.templates[name] = int((await import_handler_template(self.admin, spec, name))["pk"])
        return self.templates[name]


async def import_handler_template(client: UfdlClient, spec: HandlerSpec, name: str) -> dict[str, Any]:
    """Create job template `name` on the server from the handler's TemplateDescription, at the first
    version the handler serves; the server's row of it. `ufdl-node templates import`, dry-run and
    the demo all make their templates this way (an admin client)."""
    description = spec.description or TemplateDescription(description=f"{name} (no description)")
    version = next((v for v in range(1, 1000) if spec.serves(name, v)), 1)
    try:
        body = description.import_spec(name, version)  # a type the server does not know: say so here
    except ValueError as e:
        raise ConfigError(f"handler {spec.name} ({spec.source}): template {name}: {e}") from None
    return await client.import_template(body)


@contextlib.asynccontextmanager
async def local_server(data_dir: Path | None = None) -> AsyncIterator[LocalRun]:
    """Start an embedded server on a free loopback port; stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="ufdl-node-") as tmp:
        scratch = Path(tmp)
        admin_pw, worker_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        settings = ServerSettings(data_dir=data_dir or scratch / "server", port=0,
                                  admin=f"admin:{admin_pw}", worker=f"worker:{worker_pw}",
                                  log_level="warning")
        async with EmbeddedServer(settings) as server:
            async with UfdlClient(server.url, "admin", admin_pw) as admin:
                yield LocalRun(server=server, admin=admin, admin_password=admin_pw,
                               worker_password=worker_pw, scratch=scratch)


# -- inputs from local files: a folder as a dataset, a file as a job output ------------------------

CONTRACT_INPUTS = {"Train": ("dataset",), "Predict": ("model", "dataset")}  # UFDL-API.md section 4
CARRIER_TEMPLATE = "ufdl-node-local-files"  # the jobs that hold files given on a command line
_JOB_OUTPUT = re.compile(r"^job:(?P<job>\d+)(?:/(?P<name>.+))?$")
OutputFromFile = Callable[[Path, str, str], Awaitable[int]]


def contract_input_types(template_type: str | None) -> dict[str, str | None]:
    """The inputs of a stock contract (``Train<Domain<'X'>, Framework<...>>``) and their types: a
    ``dataset`` of its domain, a Predict job's ``model`` of its domain and framework (None where
    the contract does not say: a bare ``Train``)."""
    match = re.fullmatch(r"\s*(?P<base>\w+)\s*(?:<(?P<args>.*)>)?\s*", template_type or "")
    if match is None or match["base"] not in CONTRACT_INPUTS:
        return {}
    domain = domain_of_type(template_type)
    types: dict[str, str | None] = {name: None for name in CONTRACT_INPUTS[match["base"]]}
    if domain:
        types["dataset"] = f"PK<Dataset<Domain<'{domain}'>>>"
    if match["base"] == "Predict" and match["args"]:
        types["model"] = f"JobOutput<Model<{match['args']}>>"
    return types


async def local_inputs(client: UfdlClient, input_values: dict[str, Any], console: Console, *,
                       output_from_file: OutputFromFile | None = None) -> dict[str, Any]:
    """`input_values` with local things put on the server first: a folder given for a
    dataset input becomes a new dataset (its pk), ``job:N[/NAME]`` for a job-output input
    the pk of job N's output NAME (default: the input's name), and, with
    `output_from_file`, a file for a job-output input a job output holding it."""
    resolved = dict(input_values)
    for name, entry in input_values.items():
        value, type_ = entry["value"], str(entry["type"])
        if not isinstance(value, str):
            continue
        if "Dataset<" in type_ and Path(value).is_dir():
            # A folder for a job may hold images yet to be labelled (a Predict job's): taken as is.
            record = await upload_dataset(client, Path(value), domain=domain_of_type(type_) or "ic",
                                          allow_unlabelled=True)
            console.print(f"dataset {record['pk']} ({record['name']} v{record['version']}) "
                          f"created from {value}")
            resolved[name] = {"value": int(record["pk"]), "type": type_}
        elif type_.startswith("JobOutput<") and (found := _JOB_OUTPUT.match(value.strip())):
            pk = await _output_pk(client, int(found["job"]), found["name"] or name)
            resolved[name] = {"value": pk, "type": type_}
        elif type_.startswith("JobOutput<") and output_from_file is not None and Path(value).is_file():
            output_type = type_[len("JobOutput<"):-1]
            resolved[name] = {"value": await output_from_file(Path(value), name, output_type),
                              "type": type_}
        elif not value.strip().isdigit():
            _refuse_local(name, value, type_, files=output_from_file is not None)
    return resolved


def _refuse_local(name: str, value: str, type_: str, *, files: bool) -> None:
    """A value that names nothing local for an input that needs a pk: say so before the job."""
    if type_.startswith("PK<Dataset<"):
        raise ConfigError(f"--input {name}={value}: no such folder, and not the pk of a dataset")
    if type_.startswith("JobOutput<"):
        local = "no such file, and " if files else ""
        raise ConfigError(f"--input {name}={value}: {local}not job:N[/NAME] nor the pk of a job output")


async def _output_pk(client: UfdlClient, job_pk: int, name: str) -> int:
    job = await client.get_job(job_pk)
    for output in job.get("outputs") or []:
        if output.get("name") == name:
            return int(output["pk"])
    have = ", ".join(str(o.get("name")) for o in job.get("outputs") or []) or "none"
    raise ConfigError(f"--input job:{job_pk}/{name}: job {job_pk} has no output {name!r} (it has: {have})")


async def output_from_file(run: LocalRun, path: Path, name: str, type_: str) -> int:
    """Output NAME/TYPE holding file `path`, of a job finished on the throw-away server for
    the purpose (by a node of the admin's): what a job-output input names, by pk."""
    admin = run.admin
    if CARRIER_TEMPLATE not in run.templates:
        carrier = TemplateDescription(description="holds files given on the ufdl-node command line")
        await admin.import_template(carrier.import_spec(CARRIER_TEMPLATE))
        found = await admin.list_templates(
            {"expressions": [{"type": "exact", "field": "name", "value": CARRIER_TEMPLATE}]})
        run.templates[CARRIER_TEMPLATE] = int(found[0]["pk"])
    if run.carrier_node is None:
        run.carrier_node = int((await admin.create_node({"ip": "127.0.0.1", "index": 999,
                                                         "cpu_mem": 0}))["pk"])
    node_pk = run.carrier_node
    job = await admin.create_job(run.templates[CARRIER_TEMPLATE], {}, {},
                                 description=f"{name} from {path.name}")
    pk = int(job["pk"])
    await admin.acquire(pk, node_pk)
    await admin.start(pk, node_pk)
    await admin.upload_output(pk, node_pk, name, type_, path)
    await admin.finish(pk, node_pk)
    return await _output_pk(admin, pk, name)


async def save_outputs(client: UfdlClient, job: dict[str, Any], dest: Path) -> list[Path]:
    """Download every output of `job` into `dest`, under safe file names."""
    dest.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    for output in job.get("outputs") or []:
        target = dest / safe_file_name(f"{output['name']}.{output['type']}")
        await client.download_output(int(job["pk"]), output["name"], output["type"], target)
        saved.append(target)
    return saved


def _dry_run_spec(registry: Registry, template: str) -> HandlerSpec:
    """The handler serving `template`, and a description the server will accept a job of."""
    spec = next((s for s in registry.specs() if template in s.templates), None)
    if spec is None:
        known = ", ".join(sorted(t for s in registry.specs() for t in s.templates)) or "none"
        raise CommandFailed(f"no handler serves template {template!r} (known: {known}; --handlers-dir "
                            "adds a directory)", ExitCode.CONFIG)
    description = spec.description
    contract = (description.job_type if description else "Export").split("<")[0]
    undeclared = [name for name in CONTRACT_INPUTS.get(contract, ())
                  if description is None or name not in description.inputs]
    if undeclared:
        raise CommandFailed(f"handler {spec.name} serves {template} as a {contract} template, whose "
                            f"contract takes the input(s) {', '.join(undeclared)}, but its "
                            f"TemplateDescription declares none: add inputs={{{undeclared[0]!r}: "
                            "\"PK<Dataset<Domain<'Image Classification'>>>\"}} (or the type it takes)",
                            ExitCode.CONFIG)
    return spec


async def _check_runs_here(spec: HandlerSpec, template: str) -> None:
    """CommandFailed saying why, when this machine's slot (GPU 0, or a CPU slot) cannot meet the
    handler's needs, or it runs containers and Docker is away: the job would wait for ever, never
    acquired, with no reason shown."""
    from ..daemon.containers import probe_docker
    from ..hardware import detect_hardware, unmet_gpu_needs

    if spec.needs.docker and not (facts := await probe_docker()).reachable:
        raise CommandFailed(f"template {template} cannot run here: its handler {spec.name} runs "
                            f"containers, and {facts.summary()}", ExitCode.FAILURE)

    hardware = detect_hardware()
    gpu = hardware.gpu(0) if hardware.gpus else None
    unmet = unmet_gpu_needs(spec.needs, gpu)
    if unmet is not None:
        have = f"GPU 0 is a {gpu.name}" if gpu is not None else \
            f"this machine has no GPU{f' ({hardware.note})' if hardware.note else ''}"
        raise CommandFailed(f"template {template} cannot run here: its handler {spec.name} {unmet} "
                            f"({spec.needs.summary()}), and {have}", ExitCode.FAILURE)


def _run_dir(out_dir: Path, pk: int) -> Path:
    """`out_dir/<job>-<time>`, new for each run: two runs never mix their files."""
    base = out_dir / f"{pk}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")


async def _follow_dry_run(supervisor: Supervisor, admin: UfdlClient, job: dict[str, Any],
                          console: Console, timeout_s: float | None) -> bool:
    """Run the daemon until the job ends; True when Ctrl-C stopped it (at once, the log kept)."""
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()

    def on_sigint() -> None:
        interrupted.set()
        configure_logging("error", "console")  # one message from dry-run, not the daemon's two
        supervisor.handle_exit(signal.SIGINT)
        supervisor.handle_exit(signal.SIGINT)  # a second: stop the handler now

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    view = JobProgress(admin, console)
    try:
        with live_view(console, view.progress):
            view.follow_in_background(job)
            try:
                await asyncio.wait_for(supervisor.run(), timeout_s)
            except asyncio.TimeoutError:
                console.print(f"[red]dry-run: gave up after {timeout_s:g} s[/]")
            await view.close()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    return interrupted.is_set()


async def dry_run(template: str, *, inputs: list[str], params: list[str], handler_dirs: list[Path],
                  out_dir: Path, timeout_s: float | None = None,
                  docker_template_dirs: list[Path] | None = None, config: Path | None = None) -> ExitCode:
    """Run one job of `template` through its handler; 0 only if the job FINISHED, 130 on Ctrl-C
    (which stops and removes a docker template's container, as the daemon's drain does).

    The shipped docker definitions load, and those of `config` (the node's settings file:
    its handlers and docker settings) and `docker_template_dirs`; a docker image or a
    pretrained model given as a local reference or file becomes a record on the throw-away
    server (:mod:`.localrecords`)."""
    console = make_console()
    configure_logging("warning", "console")
    taken, dirs, plugin_settings = config_settings(config, handler_dirs, list(docker_template_dirs or []))
    registry = Registry.load(dirs, settings=plugin_settings)
    for problem in registry.problems:
        error_line("plugin skipped", problem)
    spec = _dry_run_spec(registry, template)
    await _check_runs_here(spec, template)
    input_values = parse_inputs(inputs, template, dict(spec.description.inputs) if spec.description else {})
    param_values = parse_params(params, template,
                                spec.description.template_parameters() if spec.description else {})
    missing = [f"--input {name}=VALUE (type {type_})" for name, type_ in
               (spec.description.inputs.items() if spec.description else []) if name not in input_values]
    if missing:
        raise CommandFailed(f"template {template} needs {', '.join(missing)}", ExitCode.CONFIG)
    async with local_server() as run:
        template_pk = await run.ensure_template(spec, template)
        input_values = await local_inputs(run.admin, input_values, console, output_from_file=lambda path,
                                          name, type_: output_from_file(run, path, name, type_))
        param_values = await local_records(
            run.admin, spec.description.template_parameters() if spec.description else {}, param_values)
        try:
            job = await run.admin.create_job(template_pk, input_values, param_values, description="dry-run")
        except ServerError as e:
            raise CommandFailed(f"the server refused the job: {one_line(e, 300)}", ExitCode.CONFIG) from None
        run_dir = _run_dir(out_dir, int(job["pk"]))
        console.print(f"dry-run: job {job['pk']} of template {template} on {run.server.url}; "
                      f"outputs and log go to {run_dir}")
        settings = run.node_settings(dirs, gpu_indices=[0], exit_when_idle=True, keep_work_dirs=True,
                                     **taken)
        alone = Registry()  # the job's handler only: Docker matters to this run only if it needs it
        alone.add(spec)
        interrupted = await _follow_dry_run(Supervisor(settings, registry=alone), run.admin, job,
                                            console, timeout_s)
        job = await run.admin.get_job(int(job["pk"]))
        saved = await save_outputs(run.admin, job, run_dir)
        local_log = job_log(job_root(settings.job_work_root, int(job["pk"])))
        if local_log.is_file():  # readable beside the uploaded log output (a zip of JSON)
            saved.append(Path(shutil.copyfile(local_log, run_dir / "job.log")))
    if interrupted:
        error_line("dry-run", f"interrupted; the job's log and outputs are in {run_dir}")
        return ExitCode.INTERRUPTED
    outcome = phase_text(job)
    colour = "green" if outcome == "FINISHED" else "red"
    reason = f": {job['error_reason']}" if job.get("error_reason") else ""
    console.print(f"job {job['pk']}: {outcome}{reason}", style=colour, markup=False)
    for path in saved:
        console.print(f"  saved {path} ({path.stat().st_size} bytes)", markup=False)
    return ExitCode.OK if outcome == "FINISHED" else ExitCode.FAILURE


async def _create_demo_jobs(run: LocalRun, train: HandlerSpec, script: HandlerSpec,
                            jobs: int) -> list[dict[str, Any]]:
    """`jobs` training jobs, a plain script, one that fails and one to cancel mid-run."""
    train_pk = await run.ensure_template(train, "demo_train")
    script_pk = await run.ensure_template(script, "demo_script")
    dataset_type = train.description.inputs["dataset"] if train.description else "PK<Dataset>"
    dataset = {"dataset": {"value": 1, "type": dataset_type}}
    plan: list[tuple[int, dict[str, Any], dict[str, Any], str]] = [
        (train_pk, dataset, {"epochs": {"value": 4 + i, "type": "int"}}, f"train model {i + 1}")
        for i in range(jobs)]
    plan.append((script_pk, {}, {"steps": {"value": 6, "type": "int"}}, "plain script (command)"))
    plan.append((train_pk, dataset, {"fail_at_epoch": {"value": 2, "type": "int"}},
                 "fails at epoch 2"))
    plan.append((train_pk, dataset, {"epochs": {"value": 40, "type": "int"}}, "cancelled mid-run"))
    return [await run.admin.create_job(pk, inputs, params, description=text)
            for pk, inputs, params, text in plan]


async def demo(data_dir: Path, *, jobs: int = 4) -> ExitCode:
    """Server + two-slot worker + a handful of jobs (one fails, one is cancelled), live."""
    console = make_console()
    configure_logging("error", "console")  # the live view and the summary say what happened
    run_dir = (data_dir / time.strftime("run-%Y%m%d-%H%M%S")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    async with local_server(run_dir / "server") as run:
        credentials = run_dir / "credentials.txt"
        credentials.touch(mode=0o600)
        credentials.write_text(f"admin:{run.admin_password}\nworker:{run.worker_password}\n",
                               encoding="utf-8")
        settings = run.node_settings([SHIPPED_HANDLERS_DIR], gpu_indices=[0, 1], exit_when_idle=True,
                                     command_templates={"demo_script": DEMO_COMMAND_TEMPLATE})
        registry = Registry.load(settings.handler_dirs, settings=settings)
        train, script = registry.for_template("demo_train", 1), registry.for_template("demo_script", 1)
        if train is None or script is None:
            console.print(f"[red]the demo's handlers are missing:[/] {registry.problems}")
            return ExitCode.CONFIG
        created = await _create_demo_jobs(run, train, script, jobs)
        console.print("demo: templates demo_train and demo_script made from their handlers "
                      "(what `ufdl-node templates import` does on any server)")
        console.print(f"demo: embedded server at {run.server.url}, data in {run_dir / 'server'}")
        console.print(f"demo: {len(created)} jobs; a worker with two slots picks them up")
        supervisor = Supervisor(settings, registry=registry)
        view = JobProgress(run.admin, console)
        with live_view(console, view.progress):
            for job in created:
                view.follow_in_background(job)
            canceller = asyncio.create_task(_cancel_when_running(run.admin, int(created[-1]["pk"])))
            code = await supervisor.run()
            canceller.cancel()
            await asyncio.gather(canceller, return_exceptions=True)
            await view.close()
        table = Table(title="demo: outcome")
        for column in ("job", "description", "outcome", "reason", "outputs"):
            table.add_column(column)
        finished = 0
        for job in created:
            job = await run.admin.get_job(int(job["pk"]))
            outcome = phase_text(job)
            finished += outcome == "FINISHED"
            saved = await save_outputs(run.admin, job, run_dir / "outputs" / str(job["pk"]))
            table.add_row(str(job["pk"]), job["description"], outcome, job.get("error_reason") or "",
                          ", ".join(p.name for p in saved))
        console.print(table)
    expected = jobs + 1
    console.print(f"demo: {finished} of {len(created)} jobs finished (expected {expected}); "
                  f"daemon exit code {code}")
    console.print(f"demo: outputs in {run_dir / 'outputs'}")
    console.print(f"demo: server data kept in {run_dir / 'server'}; browse it with "
                  f"`ufdl-node server --data-dir {run_dir / 'server'}` (users in {credentials})")
    return ExitCode.OK if code == 0 and finished == expected else ExitCode.FAILURE


async def _cancel_when_running(admin: UfdlClient, pk: int) -> None:
    """Cancel job `pk` once it has started and made some progress (as a user would)."""
    while True:
        await asyncio.sleep(0.5)
        job = await admin.get_job(pk)
        if server_phase(job) is not Phase.CREATED:  # started (protocol.py reads the fields)
            await asyncio.sleep(2.0)
            await admin.cancel(pk)
            return
