"""A job's log lines carry the job's template, not the name of the handler serving it."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from ufdl_node.client import UfdlClient
from ufdl_node.daemon.supervisor import Supervisor
from ufdl_node.protocol import phase
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

from .conftest import import_template, node_settings


async def test_a_command_templates_lines_name_the_template(server, admin: UfdlClient, tmp_path: Path):
    """The `command` handler serves template say_hi: every line of the job says say_hi (and the
    handler, command, as its own field)."""
    settings = node_settings(server, tmp_path, handler_dirs=[SHIPPED_HANDLERS_DIR], exit_when_idle=True,
                             command_templates={"say_hi": {"command": "echo hi"}})
    registry = Registry.load(settings.handler_dirs, entry_points=False, settings=settings)
    job = await admin.create_job(await import_template(admin, registry, "say_hi"), {}, {})
    with capture_logs() as logs:
        assert await Supervisor(settings, registry=registry).run() == 0
    assert phase(await admin.get_job(int(job["pk"]))) == "FINISHED"
    lines = [line for line in logs if line.get("job_pk") == job["pk"] and "template" in line]
    assert lines, logs
    assert {line["template"] for line in lines} == {"say_hi"}, lines
    assert any(line.get("handler") == "command" for line in lines), lines
