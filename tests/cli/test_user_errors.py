"""`jobs`, `submit`, `watch` as a user meets them: one line and an exit code on every fault, no traceback."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from ufdl_node.client import UfdlClient
from ufdl_node.errors import ExitCode
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

from .conftest import ADMIN_PW, WORKER_PW, ufdl_node

DATASET = {"dataset": {"value": 1, "type": "PK<Dataset<Domain<'Image Classification'>>>"}}


def as_admin(url: str, password: str = ADMIN_PW) -> dict[str, str]:
    return {"UFDL_NODE_SERVER_URL": url, "UFDL_NODE_USERNAME": "admin", "UFDL_NODE_PASSWORD": password}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_one_line(stderr: str, *expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    for text in expected:
        assert text in lines[0], stderr


async def import_demo_train(url: str) -> int:
    """Import demo_train's template; its pk."""
    spec = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False).for_template("demo_train", 1)
    assert spec is not None and spec.description is not None
    async with UfdlClient(url, "admin", ADMIN_PW) as admin:
        await admin.import_template(spec.description.import_spec("demo_train"))
        found = await admin.list_templates({"expressions": [
            {"type": "exact", "field": "name", "value": "demo_train"}]})
    return int(found[0]["pk"])


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    result = await asyncio.to_thread(ufdl_node, *args, env=env)
    return result.returncode, result.stdout, result.stderr


async def test_jobs_with_a_wrong_password_is_one_line_and_exit_3(server):
    """A refused password: one line naming the user, exit 3, the password nowhere."""
    code, out, err = await run_cli("jobs", env=as_admin(server.url, "not-the-password"))
    assert code == ExitCode.AUTH
    assert_one_line(err, "ufdl-node: jobs:", "refused the credentials of user 'admin'")
    assert "not-the-password" not in out + err


async def test_submit_with_a_wrong_password_is_one_line_and_exit_3(server):
    """submit with a refused password: one line, exit 3."""
    code, _, err = await run_cli("submit", "demo_train", env=as_admin(server.url, "nope"))
    assert code == ExitCode.AUTH
    assert_one_line(err, "ufdl-node: submit:", "wrong username or password")


async def test_watch_with_a_wrong_password_is_one_line_and_exit_3(server):
    """watch with a refused password: one line, exit 3."""
    code, _, err = await run_cli("watch", "1", env=as_admin(server.url, "nope"))
    assert code == ExitCode.AUTH
    assert_one_line(err, "ufdl-node: watch:", "refused the credentials")


def test_jobs_against_an_unreachable_server_is_one_line_and_exit_1():
    """Nothing listening at server_url: one line saying so and how to check, exit 1."""
    url = f"http://127.0.0.1:{free_port()}"
    result = ufdl_node("jobs", env=as_admin(url))
    assert result.returncode == ExitCode.FAILURE
    assert_one_line(result.stderr, "ufdl-node: jobs: cannot reach", url, "ufdl-node check-config")


def test_watch_against_an_unreachable_server_is_one_line_and_exit_1():
    """watch with nothing listening: one line, exit 1."""
    result = ufdl_node("watch", "3", env=as_admin(f"http://127.0.0.1:{free_port()}"))
    assert result.returncode == ExitCode.FAILURE
    assert_one_line(result.stderr, "ufdl-node: watch: cannot reach")


async def test_jobs_against_a_wrong_url_is_one_line_and_exit_1(server):
    """A server_url with a wrong path (a 404 to the login): one line asking whether it is a UFDL server."""
    code, _, err = await run_cli("jobs", env=as_admin(server.url + "/not-ufdl"))
    assert code == ExitCode.FAILURE
    assert_one_line(err, "answered 404 to the login: is it the address of a UFDL server?")


async def test_watch_of_a_job_that_does_not_exist_is_one_line_and_exit_1(server):
    """watch of a job the server does not have: one line naming it, exit 1."""
    code, _, err = await run_cli("watch", "4242", env=as_admin(server.url))
    assert code == ExitCode.FAILURE
    assert_one_line(err, f"ufdl-node: watch: no job 4242 on {server.url}")


async def test_watch_of_an_ended_job_shows_its_final_state(server):
    """watch of a job that already ended prints its final phase and reason, not '0.0 % waiting'."""
    template = await import_demo_train(server.url)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        job = await admin.create_job(template, DATASET, {})
        await admin.cancel(int(job["pk"]))
    code, out, err = await run_cli("watch", str(job["pk"]), env=as_admin(server.url))
    assert code == ExitCode.FAILURE, out + err
    assert out == f"job {job['pk']}: CANCELLED: Cancelled\n"


async def test_jobs_without_all_leaves_out_cancelled_jobs(server):
    """`jobs` lists a waiting job but not a cancelled one (the real server leaves end_time null)."""
    template = await import_demo_train(server.url)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        waiting = await admin.create_job(template, DATASET, {}, description="still waiting")
        cancelled = await admin.create_job(template, DATASET, {}, description="was cancelled")
        await admin.cancel(int(cancelled["pk"]))
    code, out, err = await run_cli("jobs", env=as_admin(server.url))
    assert code == 0, err
    assert "still waiting" in out and "was cancelled" not in out, out
    code, out, _ = await run_cli("jobs", "--all", env=as_admin(server.url))
    assert "was cancelled" in out and "CANCELLED" in out, out
    assert int(waiting["pk"]) != int(cancelled["pk"])


async def test_watch_shows_progress_of_a_submitted_job_on_a_server_like_the_real_one(embedded_servers,
                                                                                   tmp_path, wait_for):
    """On a server that refuses the web socket unless a job asked for it (the real one), a job made by
    submit shows its handler's progress in watch, not 0 % throughout."""
    from ufdl_node.daemon.supervisor import Supervisor
    from ufdl_node.server.ws import HUB
    from ufdl_node.settings import NodeSettings, ServerSettings

    server = await embedded_servers(ServerSettings(data_dir=tmp_path / "server", port=0,
                                                   admin=f"admin:{ADMIN_PW}", worker=f"worker:{WORKER_PW}",
                                                   log_level="warning", real_server_quirks=True))
    await import_demo_train(server.url)
    code, out, err = await run_cli("submit", "demo_train", "--input", "dataset=1", "--param", "epochs=3",
                                   "--param", "epoch_seconds=0.5", env=as_admin(server.url))
    assert code == 0, err
    settings = NodeSettings(server_url=server.url, username="worker", password=WORKER_PW, gpu_indices=[0],
                            state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
                            handler_dirs=[SHIPPED_HANDLERS_DIR], poll_interval_s=0.2, exit_when_idle=True)
    # watch first, and the daemon only once watch's socket is open on the job: started together, a
    # loaded machine let the 1.5 s job end before watch (a fresh interpreter) looked, and no progress showed.
    watch = asyncio.create_task(run_cli("watch", "1", env=as_admin(server.url)))
    await wait_for(lambda: server.app[HUB].sockets.get(1) or watch.done(), timeout_s=30,
                   what="watch's web socket on job 1")
    daemon = asyncio.create_task(Supervisor(settings).run())
    code, out, err = await watch
    assert await asyncio.wait_for(daemon, 60) == 0
    assert code == 0, out + err
    assert "loss=" in out and "job 1: FINISHED" in out, out
    assert "job 1 demo_train: 100% finished" in out, out  # done, though no final progress call is made


async def test_watch_rides_out_a_server_restart(embedded_servers, tmp_path, wait_for):
    """watch keeps following a job while its server is down for a few seconds, then sees it end."""
    from ufdl_node.server import EmbeddedServer
    from ufdl_node.settings import ServerSettings

    settings = ServerSettings(data_dir=tmp_path / "server", port=free_port(), admin=f"admin:{ADMIN_PW}",
                              log_level="warning")
    server: EmbeddedServer = await embedded_servers(settings)
    template = await import_demo_train(server.url)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        job = await admin.create_job(template, DATASET, {})
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")} | as_admin(server.url)
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ufdl_node", "watch", str(job["pk"]), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    assert watcher.stdout is not None
    lines: list[str] = []

    async def read_lines() -> None:
        assert watcher.stdout is not None
        async for raw in watcher.stdout:
            lines.append(raw.decode())

    reader = asyncio.create_task(read_lines())
    await wait_for(lambda: any("created" in line for line in lines), what="watch's first line")
    await server.stop()
    await wait_for(lambda: any("server unreachable" in line for line in lines), what="watch noticing")
    restarted = await embedded_servers(settings)
    async with UfdlClient(restarted.url, "admin", ADMIN_PW) as admin:
        await admin.cancel(int(job["pk"]))
    code = await asyncio.wait_for(watcher.wait(), 60)
    await reader
    assert watcher.stderr is not None
    err = (await watcher.stderr.read()).decode()
    assert code == ExitCode.FAILURE, "".join(lines) + err
    assert lines[-1] == f"job {job['pk']}: CANCELLED: Cancelled\n", lines
    assert "Traceback" not in err, err


def test_jobs_without_a_password_says_how_to_give_one():
    """No password anywhere: one `config:` line naming the three ways to give one, exit 2."""
    result = ufdl_node("jobs", env={"UFDL_NODE_SERVER_URL": "http://127.0.0.1:9"})
    assert result.returncode == ExitCode.CONFIG
    assert_one_line(result.stderr, "ufdl-node: config: no password: set password, password_file or "
                    "UFDL_NODE_PASSWORD")
