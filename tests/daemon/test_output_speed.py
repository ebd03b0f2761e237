"""A big output never stalls the daemon (issue 20): its event loop answers /healthz while a
job writes, zips, stages and uploads a model of random bytes.

A real daemon process (``ufdl-node run``) against the embedded server; the probe is a thread
of this process that GETs the daemon's status endpoint every 50 ms. Before the zip moved to a
thread, ``collect_output`` deflated the model on the event loop: /healthz went silent for as
long as the zip took (18 s for 1 GiB).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.daemon.conftest import DaemonProcess, Jobs, free_port, import_template, node_settings, write_config
from ufdl_node.client import UfdlClient
from ufdl_node.protocol import phase
from ufdl_node.registry import Registry
from ufdl_node.server import EmbeddedServer
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

SIZE_MIB = 96  # a few seconds of work on a loaded 2-core machine, ~3 s of deflate on the loop before
PROBE_INTERVAL_S = 0.05
MAX_LATENCY_S = 0.5  # loose: the machine is shared; a blocked loop is seconds
TEMPLATE = "big_model_output"
# The command handler (no Docker needed) zips the directory through collect_output, the
# path the docker definitions' model outputs take.
DEFINITION = f"""
command = '''mkdir -p out/model && head -c {SIZE_MIB}M /dev/urandom > out/model/weights.bin &&
             echo lr=0.1 > out/model/config.py'''
outputs = [{{ name = "model", type = "Blob", path = "out/model" }}]
"""


class Probe(threading.Thread):
    """GETs `url` every PROBE_INTERVAL_S; the time each took to answer (any HTTP status)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            began = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as reply:
                    reply.read()
            except urllib.error.HTTPError as e:  # 503 "unhealthy" is an answer too
                e.read()
            except OSError as e:
                self.errors.append(str(e))
            self.latencies.append(time.monotonic() - began)
            self.done.wait(PROBE_INTERVAL_S)


@pytest.mark.slow
async def test_healthz_answers_while_a_big_output_is_zipped_and_uploaded(
        server: EmbeddedServer, admin: UfdlClient, tmp_path: Path,
        spawn: Callable[..., DaemonProcess]) -> None:
    definitions = tmp_path / "command.d"
    definitions.mkdir()
    (definitions / f"{TEMPLATE}.toml").write_text(DEFINITION)
    settings = node_settings(server, tmp_path, handler_dirs=[SHIPPED_HANDLERS_DIR],
                             command_template_dirs=[definitions])
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False, settings=settings)
    jobs = Jobs(admin, await import_template(admin, registry, TEMPLATE), tmp_path)
    port = free_port()
    config = write_config(tmp_path / "node.toml", server.url, tmp_path, log_level="info",
                          handler_dirs=[str(SHIPPED_HANDLERS_DIR)],
                          command_template_dirs=[str(definitions)], status_listen=f"127.0.0.1:{port}")
    spawn(config)
    probe = Probe(f"http://127.0.0.1:{port}/healthz")

    def answers() -> bool:
        try:
            with urllib.request.urlopen(probe.url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    await wait_for(answers, timeout_s=30, what="the daemon's /healthz")
    probe.start()
    try:
        job = await admin.create_job(jobs.template_pk, {}, {}, description="big output")
        ended = await jobs.wait(job, lambda j: phase(j) in ("FINISHED", "ERRORED"), timeout_s=90)
    finally:
        probe.done.set()
        probe.join()

    assert phase(ended) == "FINISHED", ended["error_reason"]
    model = tmp_path / "model.zip"
    await admin.download_output(int(job["pk"]), "model", "Blob", model)
    with zipfile.ZipFile(model) as zf:
        info = zf.getinfo("weights.bin")
        assert (info.file_size, info.compress_type) == (SIZE_MIB * 2**20, zipfile.ZIP_STORED)
    assert not probe.errors, probe.errors[:3]
    assert len(probe.latencies) >= 10, "the probe did not overlap the job"
    slowest = max(probe.latencies)
    assert slowest < MAX_LATENCY_S, f"/healthz took {slowest:.2f} s during the output " \
                                    f"({len(probe.latencies)} probes)"
