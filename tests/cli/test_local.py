"""dry-run, demo, and the README's handler tutorial, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from ufdl_node.client import UfdlClient
from ufdl_node.daemon.supervisor import Supervisor
from ufdl_node.registry import Registry
from ufdl_node.settings import NodeSettings

from .conftest import ADMIN_PW, REPO, WORKER_PW, ufdl_node

pytestmark = pytest.mark.slow


def tutorial_handler(directory: Path) -> Path:
    """The README's tutorial handler, copied verbatim into `directory`."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- tutorial-handler:start -->\n```python\n(.*?)```\n<!-- tutorial-handler:end -->",
                      readme, re.S)
    assert found, "the README lost its tutorial handler block"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "word_count.py"
    path.write_text(found.group(1))
    return directory


def test_tutorial_handler_runs_through_dry_run(tmp_path):
    """The README's handler runs with the README's dry-run command; its output lands in ./dry-run/<job>/."""
    handlers = tutorial_handler(tmp_path / "my_handlers")
    result = ufdl_node("dry-run", "word_count", "--handlers", str(handlers), "--param", "passes=5",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"job \d+: FINISHED", result.stdout), result.stdout
    job_dirs = list((tmp_path / "dry-run").iterdir())
    assert len(job_dirs) == 1
    counts = json.loads((job_dirs[0] / "counts.JSON").read_text())
    assert counts["the"] == 3 and counts["fox"] == 1, counts
    log = (job_dirs[0] / "job.log").read_text()
    assert "counted" in log


async def test_tutorial_handler_runs_through_the_daemon(server, tmp_path):
    """The README's handler, in a handler directory of the daemon, finishes a job on the server."""
    handlers = tutorial_handler(tmp_path / "my_handlers")
    registry = Registry.load([handlers], entry_points=False)
    spec = registry.for_template("word_count", 1)
    assert spec is not None and spec.description is not None
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        await admin.import_template(spec.description.import_spec("word_count"))
        template = (await admin.list_templates({"expressions": [
            {"type": "exact", "field": "name", "value": "word_count"}]}))[0]
        job = await admin.create_job(template["pk"], {}, {"text": {"value": "a b a", "type": "str"}})
        settings = NodeSettings(server_url=server.url, username="worker", password=WORKER_PW,
                                gpu_indices=[0], state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
                                handler_dirs=[handlers], poll_interval_s=0.2, exit_when_idle=True)
        assert await asyncio.wait_for(Supervisor(settings, registry=registry).run(), 60) == 0
        done = await admin.get_job(job["pk"])
        assert done["end_time"] is not None and done["error_reason"] is None, done
        counts = await admin.download_output(job["pk"], "counts", "JSON", tmp_path / "counts.json")
        assert json.loads(counts.read_text()) == {"a": 2, "b": 1}


def test_dry_run_of_a_failing_job_exits_1_with_the_reason(tmp_path):
    """dry-run exits 1 when the job errors, and prints the reason."""
    result = ufdl_node("dry-run", "demo_train", "--input", "dataset=7", "--param", "fail_at_epoch=1",
                       "--param", "epoch_seconds=0.05", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ERRORED: demo failure at epoch 1" in result.stdout


def test_dry_run_of_an_unknown_template_says_which_exist(tmp_path):
    """dry-run of a template no handler serves exits 2 and lists the known ones."""
    result = ufdl_node("dry-run", "no_such_template", cwd=tmp_path)
    assert result.returncode == 2
    assert "no handler serves template 'no_such_template'" in result.stderr
    assert "demo_train" in result.stderr


def test_dry_run_without_a_required_input_names_it(tmp_path):
    """dry-run of a template whose input is not given says which --input it needs, exit 2."""
    result = ufdl_node("dry-run", "demo_train", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs --input dataset=VALUE (type PK<Dataset<Domain<'Image Classification'>>>)" in result.stderr


def test_dry_run_with_a_wrongly_typed_param_is_a_clear_error(tmp_path):
    """A parameter value that does not fit its type is one clear line before anything starts, exit 2."""
    result = ufdl_node("dry-run", "demo_train", "--input", "dataset=7", "--param", "epochs=many",
                       cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == "ufdl-node: dry-run: --param epochs=many: not a value of int\n"


def test_dry_run_with_a_bad_param_is_a_clear_error(tmp_path):
    """A --param without '=' is one clear line, exit 2."""
    result = ufdl_node("dry-run", "demo_train", "--param", "epochs", cwd=tmp_path)
    assert result.returncode == 2
    assert "--param 'epochs': expected NAME=VALUE" in result.stderr


@pytest.mark.timeout(200)  # a whole demo in a subprocess, which gets 180 s itself
def test_demo_runs_its_jobs_and_keeps_the_data(tmp_path):
    """`ufdl-node demo`: the jobs finish, one fails, one is cancelled; the data directory stays."""
    began = time.monotonic()
    result = ufdl_node("demo", "--data-dir", str(tmp_path / "demo-data"), "--jobs", "2", cwd=tmp_path,
                       timeout_s=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "3 of 5 jobs finished (expected 3)" in out, out
    assert "ERRORED" in out and "CANCELLED" in out and "demo failure at" in out
    runs = list((tmp_path / "demo-data").iterdir())
    assert len(runs) == 1 and (runs[0] / "server").is_dir()
    assert (runs[0] / "credentials.txt").stat().st_mode & 0o077 == 0
    assert time.monotonic() - began < 120
