"""`ufdl-node submit`, `jobs` and `watch` against a server, with a daemon running the job."""

from __future__ import annotations

import asyncio
import re

from ufdl_node.client import UfdlClient
from ufdl_node.daemon.supervisor import Supervisor
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR, NodeSettings

from .conftest import ADMIN_PW, WORKER_PW, ufdl_node

DATASET_TYPE = "PK<Dataset<Domain<'Image Classification'>>>"


def as_admin(server) -> dict[str, str]:
    return {"UFDL_NODE_SERVER_URL": server.url, "UFDL_NODE_USERNAME": "admin", "UFDL_NODE_PASSWORD": ADMIN_PW}


async def test_submit_watch_and_list_a_job(server, tmp_path):
    """submit creates the job, jobs lists it, watch follows it to FINISHED while a daemon runs it."""
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False)
    spec = registry.for_template("demo_train", 1)
    assert spec is not None and spec.description is not None
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        await admin.import_template(spec.description.import_spec("demo_train"))
    env = as_admin(server)
    created = await asyncio.to_thread(
        ufdl_node, "submit", "demo_train", "--input", f"dataset=3:{DATASET_TYPE}", "--param", "epochs=3",
        "--param", "epoch_seconds=0.2", "--description", "from the test", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    pk = created.stdout.strip()
    assert pk.isdigit() and f"job {pk} created from demo_train v1" in created.stderr, created
    waiting = await asyncio.to_thread(ufdl_node, "jobs", env=env)
    assert re.search(rf"^{pk}\tdemo_train v1\tCREATED\t", waiting.stdout, re.M), waiting.stdout

    settings = NodeSettings(server_url=server.url, username="worker", password=WORKER_PW, gpu_indices=[0],
                            state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
                            handler_dirs=[SHIPPED_HANDLERS_DIR], poll_interval_s=0.2, exit_when_idle=True)
    daemon = asyncio.create_task(Supervisor(settings, registry=registry).run())
    watched = await asyncio.to_thread(ufdl_node, "watch", pk, env=env, timeout_s=60)
    assert await asyncio.wait_for(daemon, 30) == 0
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert f"job {pk}: FINISHED" in watched.stdout
    listed = await asyncio.to_thread(ufdl_node, "jobs", "--all", "--template", "demo_train", env=env)
    assert re.search(rf"^{pk}\tdemo_train v1\tFINISHED\t", listed.stdout, re.M), listed.stdout
    assert "from the test" in listed.stdout


async def test_submit_names_the_parameters_when_one_is_unknown(server):
    """A parameter the template lacks is one line naming the ones it has; exit 2."""
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False)
    spec = registry.for_template("demo_train", 1)
    assert spec is not None and spec.description is not None
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        await admin.import_template(spec.description.import_spec("demo_train"))
    result = await asyncio.to_thread(ufdl_node, "submit", "demo_train", "--param", "epoch=3",
                                     env=as_admin(server))
    assert result.returncode == 2
    assert "--param epoch: template demo_train has no such parameter (it has: epoch_seconds, epochs, " \
        "fail_at_epoch, learning_rate)" in result.stderr


async def test_submit_of_a_missing_template_exits_2(server):
    """A template the server does not have: exit 2 with its name and how to make one, on stderr."""
    result = await asyncio.to_thread(ufdl_node, "submit", "nope_template", env=as_admin(server))
    assert result.returncode == 2
    assert result.stderr.startswith(f"ufdl-node: submit: no job template 'nope_template' on {server.url}")
    assert "ufdl-node templates import" in result.stderr and len(result.stderr.splitlines()) == 1
