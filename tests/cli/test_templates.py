"""`ufdl-node templates import` and `templates list`: a fresh server gets its templates from the handlers."""

from __future__ import annotations

import asyncio

from ufdl_node.client import UfdlClient
from ufdl_node.errors import ExitCode

from .conftest import ADMIN_PW, WORKER_PW, ufdl_node


def env_for(url: str, user: str = "admin", password: str = ADMIN_PW) -> dict[str, str]:
    return {"UFDL_NODE_SERVER_URL": url, "UFDL_NODE_USERNAME": user, "UFDL_NODE_PASSWORD": password}


async def cli(*args: str, env: dict[str, str]):
    return await asyncio.to_thread(ufdl_node, *args, env=env)


async def test_import_creates_the_named_template_from_its_handler(server):
    """templates import NAME creates the template with the handler's parameters."""
    result = await cli("templates", "import", "demo_train", env=env_for(server.url))
    assert result.returncode == 0, result.stderr
    assert "demo_train: imported (v1" in result.stdout
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        found = await admin.list_templates({"expressions": [
            {"type": "exact", "field": "name", "value": "demo_train"}]})
        template = await admin.get_template(int(found[0]["pk"]))
    assert {"epochs", "fail_at_epoch"} <= set(template["parameters"]), template
    assert template["type"].startswith("Train<"), template


async def test_import_without_names_imports_every_handler_template_once(server):
    """templates import with no name imports each served template; a second run skips them all."""
    first = await cli("templates", "import", env=env_for(server.url))
    assert first.returncode == 0, first.stderr
    assert "demo_train: imported" in first.stdout
    second = await cli("templates", "import", env=env_for(server.url))
    assert second.returncode == 0, second.stderr
    assert "imported" not in second.stdout and "demo_train: already on the server (v1" in second.stdout


async def test_import_from_a_handlers_dir(server, tmp_path):
    """--handlers-dir names the directory whose handlers' templates are imported."""
    handlers = tmp_path / "mine"
    handlers.mkdir()
    (handlers / "echo.py").write_text(
        "from ufdl_node.api import Parameter, TemplateDescription, handler\n"
        "@handler('my_echo', description=TemplateDescription(parameters=(Parameter('n', ('Integer',), "
        "default=1),)))\n"
        "async def run(ctx):\n    pass\n")
    result = await cli("templates", "import", "--handlers-dir", str(handlers), "my_echo",
                       env=env_for(server.url))
    assert result.returncode == 0, result.stderr
    listed = await cli("templates", "list", env=env_for(server.url))
    assert listed.returncode == 0, listed.stderr
    assert "my_echo" in listed.stdout and "demo_train" not in listed.stdout


async def test_import_of_a_template_no_handler_serves_exits_2(server):
    """A name no handler serves: one line listing the known ones, exit 2, nothing imported."""
    result = await cli("templates", "import", "nope", env=env_for(server.url))
    assert result.returncode == ExitCode.CONFIG
    assert result.stderr.startswith("ufdl-node: templates: no handler serves template 'nope' (known: ")
    assert "demo_train" in result.stderr and len(result.stderr.splitlines()) == 1


async def test_import_by_an_ordinary_user_says_an_admin_is_needed(server):
    """A non-staff user gets one line saying an admin user is needed, exit 1."""
    result = await cli("templates", "import", "demo_train", env=env_for(server.url, "worker", WORKER_PW))
    assert result.returncode == ExitCode.FAILURE
    assert "may not import templates" in result.stderr and "admin" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


async def test_list_of_an_empty_server_says_how_to_import(server):
    """templates list on a fresh server says none and points at templates import."""
    result = await cli("templates", "list", env=env_for(server.url))
    assert result.returncode == 0
    assert "no job templates" in result.stdout and "templates import" in result.stdout


async def test_imported_template_takes_a_submitted_job(server):
    """After templates import, submit of that template creates a job (the README's path)."""
    await cli("templates", "import", "demo_train", env=env_for(server.url))
    result = await cli("submit", "demo_train", "--input", "dataset=1", env=env_for(server.url))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1\n" and "job 1 created from demo_train v1" in result.stderr, result
