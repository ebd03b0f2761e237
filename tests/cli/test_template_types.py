"""Handler templates in the real server's terms: `templates import` of every built-in handler and
of the README's example, a type no server knows, and `submit --param/--input` choosing the
declared type a value fits (against the embedded server on loopback, real processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ufdl_node.cli.local import import_handler_template
from ufdl_node.client import UfdlClient
from ufdl_node.errors import ExitCode
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR, NodeSettings
from ufdl_node.ufdltypes import DOMAINS, parse_type

from .conftest import ADMIN_PW
from .test_local import tutorial_handler
from .test_templates import cli, env_for

DOCKER = "DockerImage<Domain<'Image Classification'>, Framework<'mmclassification', '0.25.0'>>"
TYPED_HANDLER = f"""
from ufdl_node.api import Parameter, TemplateDescription, handler
@handler('typed', description=TemplateDescription(domain='ic', parameters=(
    Parameter('docker_image', ("Name<{DOCKER}>", "PK<{DOCKER}>"), help='the image'),
    Parameter('epochs', ('Integer',), default=3, help='how many'),
    Parameter('flag', ('bool',), default=False, help='a switch'),
    Parameter('names', ('Array<str>', 'str'), default=['a'], help='some names'),
)))
async def run(ctx):
    pass
"""


def _check_parity(template: dict[str, Any]) -> None:
    """What the real server shows: the domain as its code, the licence as a pk, each parameter's
    types in its names, default_type and const with a default and neither without."""
    assert template["domain"] in (*DOMAINS, None), template
    assert isinstance(template["licence"], int), template
    for name, parameter in template["parameters"].items():
        for type_ in parameter["types"]:
            parse_type(type_)  # a name the server knows, not an alias
        if "default" in parameter:
            assert parameter["default_type"] in parameter["types"] and parameter["const"] in (True, False)
        else:
            assert "default_type" not in parameter and "const" not in parameter, (name, parameter)


async def test_every_built_in_handler_template_imports_as_the_real_server_wants(server, tmp_path):
    """Each template of the shipped handlers (Docker definitions included) imports with status 200
    and reads back by the parity rules; dogs_dummy's frontend_metadata is required."""
    settings = NodeSettings(server_url=server.url, username="admin", password=ADMIN_PW,
                            state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
                            docker_template_dirs=[SHIPPED_HANDLERS_DIR / "docker.d"])
    registry = Registry.load([SHIPPED_HANDLERS_DIR], settings=settings)
    assert registry.problems == []
    names = {name: spec for spec in registry.specs() for name in spec.templates}
    assert {"demo_train", "dogs_dummy_image_class_train",
            "mmclassification_0.25.0_resnet18_train"} <= set(names)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        for name, spec in sorted(names.items()):
            template = await import_handler_template(admin, spec, name)
            assert template["name"] == name and template == await admin.get_template(int(template["pk"]))
            _check_parity(template)
            if name.startswith("dogs_dummy_"):
                assert template["domain"] == "ic"
                assert template["parameters"]["frontend_metadata"] == {
                    "types": ["JSON"], "help": "Metadata to upload to the job-launcher."}


@pytest.mark.slow
async def test_the_readme_example_handler_imports(server, tmp_path):
    """The README's word_count handler, verbatim, imports with `templates import`."""
    handlers = tutorial_handler(tmp_path / "my_handlers")
    result = await cli("templates", "import", "--handlers-dir", str(handlers), "word_count",
                       env=env_for(server.url))
    assert result.returncode == 0, result.stderr
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        found = await admin.list_templates({"expressions": [
            {"type": "exact", "field": "name", "value": "word_count"}]})
    assert len(found) == 1
    _check_parity(found[0])
    assert found[0]["parameters"]["passes"]["types"] == ["int"]


async def test_a_type_no_server_knows_is_one_line_before_the_server_is_asked(server, tmp_path):
    """A handler parameter of type Integr: `templates import` exits 2 with one line naming the type,
    and the server holds no template (not even the other, good ones)."""
    handlers = tmp_path / "bad"
    handlers.mkdir()
    (handlers / "bad.py").write_text(
        "from ufdl_node.api import Parameter, TemplateDescription, handler\n"
        "@handler('good_one', description=TemplateDescription())\n"
        "async def good(ctx):\n    pass\n"
        "@handler('bad_one', description=TemplateDescription(parameters=(Parameter('n', ('Integr',), "
        "default=1, help='n'),)))\n"
        "async def run(ctx):\n    pass\n")
    result = await cli("templates", "import", "--handlers-dir", str(handlers), "good_one", "bad_one",
                       env=env_for(server.url))
    assert result.returncode == ExitCode.CONFIG, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "unknown type name 'Integr'" in result.stderr, result.stderr
    assert "bad_one" in result.stderr and "Traceback" not in result.stderr
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        assert await admin.list_templates({"expressions": []}) == []


@pytest.fixture
async def typed(server, tmp_path: Path) -> tuple[Any, dict[str, str]]:
    """The server with template `typed` imported from a handler; the worker's environment."""
    handlers = tmp_path / "typed"
    handlers.mkdir()
    (handlers / "typed.py").write_text(TYPED_HANDLER)
    result = await cli("templates", "import", "--handlers-dir", str(handlers), "typed",
                       env=env_for(server.url))
    assert result.returncode == 0, result.stderr
    return server, env_for(server.url)


async def _parameter_values(url: str) -> dict[str, Any]:
    async with UfdlClient(url, "admin", ADMIN_PW) as admin:
        jobs = await admin.list_jobs({"expressions": [], "order_by": [{"field": "pk", "ascending": False}]})
    return dict(jobs[0]["parameter_values"])


@pytest.mark.parametrize("args, expected", [
    (["docker_image=4", "epochs=3", "flag=true"],
     {"docker_image": {"value": 4, "type": f"PK<{DOCKER}>"}, "epochs": {"value": 3, "type": "int"},
      "flag": {"value": True, "type": "bool"}}),
    (["docker_image=mmcls", "names=[\"x\", \"y\"]"],
     {"docker_image": {"value": "mmcls", "type": f"Name<{DOCKER}>"},
      "names": {"value": ["x", "y"], "type": "Array<str>"}}),
    (["docker_image=5", "names=x"],
     {"docker_image": {"value": 5, "type": f"PK<{DOCKER}>"}, "names": {"value": "x", "type": "str"}}),
])
async def test_submit_param_takes_the_first_declared_type_the_value_fits(typed, args, expected):
    """`4` for Name<..>|PK<..> is a PK and `mmcls` a Name; `3` an int (declared Integer: the
    server's int), `true` a bool, a JSON list an Array<str> and `x` the str after it."""
    server, env = typed
    params = [arg for item in args for arg in ("--param", item)]
    result = await cli("submit", "typed", *params, env=env)
    assert result.returncode == 0, result.stderr
    assert await _parameter_values(server.url) == expected


@pytest.mark.parametrize("args, message", [
    (["--param", "docker_image=4", "--param", "nope=1"],
     "ufdl-node: submit: --param nope: template typed has no such parameter "
     "(it has: docker_image, epochs, flag, names)\n"),
    (["--param", "docker_image=4", "--param", "epochs=many"],
     "ufdl-node: submit: --param epochs=many: not a value of int\n"),
    (["--param", "docker_image=4", "--param", "flag=maybe"],
     "ufdl-node: submit: --param flag=maybe: not a value of bool\n"),
    (["--param", "docker_image=4", "--input", "dataset=3"],
     "ufdl-node: submit: --input dataset: template typed has no such input (it has: none)\n"),
])
async def test_submit_refuses_what_the_template_does_not_declare_in_one_line(typed, args, message):
    """An undeclared parameter or input, or a value that fits none of the declared types, is one
    line naming what is declared, exit 2, and no job."""
    server, env = typed
    result = await cli("submit", "typed", *args, env=env)
    assert (result.returncode, result.stderr) == (ExitCode.CONFIG, message)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        assert await admin.list_jobs({"expressions": []}) == []


async def test_submit_dogs_dummy_needs_frontend_metadata_as_a_real_server_does(server, tmp_path):
    """The stock train template requires frontend_metadata: without it the server refuses the job
    (one line); with `--param frontend_metadata=null` it is created, as the README says."""
    env = env_for(server.url)
    assert (await cli("templates", "import", "dogs_dummy_image_class_train", env=env)).returncode == 0
    refused = await cli("submit", "dogs_dummy_image_class_train", "--input", "dataset=1",
                        "--param", "factor=16", env=env)
    assert refused.returncode == ExitCode.CONFIG and "frontend_metadata" in refused.stderr, refused.stderr
    made = await cli("submit", "dogs_dummy_image_class_train", "--input", "dataset=1", "--param", "factor=16",
                     "--param", "frontend_metadata=null", env=env)
    assert made.returncode == 0, made.stderr
    assert await _parameter_values(server.url) == {"factor": {"value": 16, "type": "int"},
                                                   "frontend_metadata": {"value": None, "type": "JSON"}}
