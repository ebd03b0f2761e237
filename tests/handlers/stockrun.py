"""Stock templates run end to end through the daemon on the embedded server (a helper).

:class:`StockRun` creates a job of a shipped handler's template (folders given as inputs
become datasets of the template's domain), runs a node until no work is left, and reads back
the job, its outputs and the dataset.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ufdl_node.cli.local import LocalRun, local_inputs
from ufdl_node.cli.localrecords import local_records
from ufdl_node.client import UfdlClient
from ufdl_node.daemon.supervisor import Supervisor
from ufdl_node.protocol import display_phase
from ufdl_node.registry import Registry
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import SHIPPED_HANDLERS_DIR, NodeSettings, ServerSettings

ADMIN_PW, WORKER_PW = "stock-admin-pw-1", "stock-worker-pw-2"


@dataclass
class StockRun:
    run: LocalRun
    tmp: Path
    registry: Registry
    node: dict[str, Any]
    records: dict[str, int] = field(default_factory=dict)  # a docker ref or a file made a record: its pk

    @property
    def admin(self) -> UfdlClient:
        return self.run.admin

    async def job(self, template: str, inputs: dict[str, Any], **params: Any) -> dict[str, Any]:
        """Create a job of `template`, run the node until idle, return the job as it ended."""
        spec = self.registry.for_template(template, 1)
        assert spec is not None and spec.description is not None, template
        template_pk = await self.run.ensure_template(spec, template)
        declared = spec.description.inputs
        values = await local_inputs(
            self.admin, {n: {"value": v, "type": declared[n]} for n, v in inputs.items()}, Console(quiet=True)
        )
        types = dict(spec.description.template_parameters())
        given: dict[str, Any] = {}
        for n, v in params.items():
            if isinstance(v, str) and v in self.records:  # made a record by an earlier job: by pk
                pk_type = next(t for t in types[n]["types"] if t.startswith("PK<"))
                given[n] = {"value": self.records[v], "type": pk_type}
            else:
                given[n] = {"value": v, "type": types[n]["types"][0]}
        typed = await local_records(self.admin, types, given)  # docker_image=REF, pretrained_model=FILE
        self.records.update({str(params[n]): int(e["value"]) for n, e in typed.items() if e is not given[n]})
        job = await self.admin.create_job(template_pk, values, typed)
        settings = NodeSettings(
            server_url=self.run.server.url,
            username="worker",
            password=WORKER_PW,
            gpu_indices=[0],
            state_dir=self.tmp / "state",
            cache_dir=self.tmp / "cache",
            handler_dirs=[SHIPPED_HANDLERS_DIR],
            poll_interval_s=0.2,
            poll_jitter_s=0.0,
            exit_when_idle=True,
            handler_io_retry_s=1.0,
            log_level="error",
            **self.node,
        )
        assert await Supervisor(settings, registry=self.registry).run() == 0
        return await self.admin.get_job(int(job["pk"]))

    async def finished(self, template: str, inputs: dict[str, Any], **params: Any) -> dict[str, Any]:
        job = await self.job(template, inputs, **params)
        assert str(display_phase(job)) == "FINISHED", job.get("error_reason")
        return job

    @staticmethod
    def output(job: dict[str, Any], name: str) -> dict[str, Any]:
        """The job's output `name` ({pk, name, type})."""
        found = [o for o in job["outputs"] if o["name"] == name]
        assert len(found) == 1, job["outputs"]
        return dict(found[0])

    async def download(self, job: dict[str, Any], name: str) -> Path:
        out = self.output(job, name)
        target = self.tmp / f"{job['pk']}-{name}.out"
        await self.admin.download_output(int(job["pk"]), name, out["type"], target)
        return target

    async def pretrained(self, name: str, data: bytes, domain: str, framework: tuple[str, str]) -> str:
        """A pretrained-model record `name` holding `data` (for a template whose
        ``pretrained_model`` is a plain ``str``: a record's name); the name."""
        made = await self.admin.request(
            "POST",
            "/v1/pretrained-models/create",
            json={
                "name": name,
                "description": name,
                "url": f"file:///{name}",
                "metadata": {},
                "framework": {"name": framework[0], "version": framework[1]},
                "domain": domain,
                "licence": "Apache 2.0",
            },
        )
        await self.admin.request(
            "POST",
            f"/v1/pretrained-models/{int(made['pk'])}/upload",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return name

    @staticmethod
    def dataset_pk(job: dict[str, Any]) -> int:
        return int(job["input_values"]["dataset"]["value"])


@asynccontextmanager
async def stock_run(tmp: Path, **node: Any) -> AsyncIterator[StockRun]:
    """A fresh embedded server; `node`: extra node settings (e.g. ``weka_python``)."""
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False, settings=_settings(tmp, node))
    settings = ServerSettings(
        data_dir=tmp / "server",
        port=0,
        admin=f"admin:{ADMIN_PW}",
        worker=f"worker:{WORKER_PW}",
        log_level="error",
    )
    async with EmbeddedServer(settings) as server, UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        yield StockRun(LocalRun(server, admin, ADMIN_PW, WORKER_PW, tmp), tmp, registry, node)


def _settings(tmp: Path, node: dict[str, Any]) -> NodeSettings:
    return NodeSettings(
        server_url="http://127.0.0.1:1",
        username="worker",
        password=WORKER_PW,
        state_dir=tmp / "state",
        cache_dir=tmp / "cache",
        **node,
    )
