"""The fuzzer's target: one embedded server per test module, a plain HTTP client, and state snapshots.

The server runs on its own event loop in a thread (as the server tests' shared
server does), so that hypothesis drives plain synchronous tests: each example
is one real HTTP request over loopback, on a fresh connection, so a request
the server answers by closing the connection cannot disturb the next one.

Hypothesis profiles: ``ci`` (the default: a fixed example count, fewer per route
for the test run once per route, derandomized, no example database, so every run
is the same run) and ``deep`` (ten times the
examples and a fresh seed each run, for a local hunt):
``UFDL_FUZZ_PROFILE=deep pytest tests/fuzz``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, settings

from tests.server.conftest import ADMIN, TEMPLATE, WORKER, _ThreadedServer, server_settings
from ufdl_node.server.auth import hash_password, load_signing_key
from ufdl_node.server.common import store_of
from ufdl_node.server.records_store import DATASETS_DIR
from ufdl_node.server.store import DB_FILE

from .strategies import segment

_COMMON = {"deadline": None, "database": None, "derandomize": True, "print_blob": False,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much,
                                     # one server per module, checked after each test on purpose
                                     HealthCheck.function_scoped_fixture]}
settings.register_profile("ci", max_examples=50, **_COMMON)
# A hunt: ten times the examples, and a new random seed each run (a failure prints its seed).
settings.register_profile("deep", max_examples=500, **{**_COMMON, "derandomize": False, "print_blob": True})
PROFILE = os.environ.get("UFDL_FUZZ_PROFILE", "ci")
settings.load_profile(PROFILE)
# Examples per route for the test run once per route: the datasets and records routes doubled
# the routes, and the ci run must stay under a minute on a quiet 2-core machine.
PER_ROUTE_EXAMPLES = 30 if PROFILE == "ci" else settings.default.max_examples

OTHER = ("other", "other-password")
# The files a data directory may hold: the database (with SQLite's WAL companions), the
# signing key, one file per output under outputs/ and one per dataset file under datasets/,
# each named by its row's pk.
KNOWN_FILES = {DB_FILE, DB_FILE + "-wal", DB_FILE + "-shm", "jwt-signing.key"}
OUTPUTS_DIR = "outputs"
# The tables of store migrations 3 and 4: a refused call must leave each of them as it was.
RECORD_TABLES = {"datasets", "dataset_files", "categories", "cuda_versions", "frameworks",
                 "docker_images", "pretrained_models", "od_files", "transcriptions", "teams", "projects"}
# Each domain's dataset routes, by the domain's code.
DOMAIN_PREFIXES = {"ic": "/v1/classify/datasets", "od": "/v1/objdet/datasets", "sp": "/v1/speech/datasets",
                   "sc": "/v1/spectra/datasets"}
# Valid records, as the server tests make them (tests/server/test_records.py).
DOCKER = {"name": "fuzz-image", "version": "1", "url": "example.org/fuzz:1", "registry_url": "example.org",
          "registry_username": "public", "registry_password": "public", "cuda_version": "11.1",
          "framework": {"name": "fuzzwork", "version": "1"}, "domain": "ic", "tasks": ["Train", "Predict"],
          "min_hardware_generation": "Pascal", "cpu": False, "licence": "Apache 2.0"}
PRETRAINED = {"name": "fuzz-model", "description": "d", "url": "https://example.org/m.pth",
              "metadata": {"epochs": 1}, "framework": {"name": "fuzzwork", "version": "1"},
              "domain": "ic", "licence": "MIT"}
FILE_NAMES = ("dog.png", "cat 2.jpg")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as strict JSON: NaN and Infinity are not JSON, and no client must meet them."""
        def refuse(constant: str) -> Any:
            raise ValueError(f"{constant} is not JSON")
        return json.loads(self.body, parse_constant=refuse)


@dataclass
class Target:
    """The server under fuzzing, its callers' tokens, and pks of rows it holds."""

    port: int
    data_dir: Path
    key: bytes = field(repr=False)
    tokens: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)
    nodes: dict[str, int] = field(default_factory=dict)
    jobs: list[int] = field(default_factory=list)
    template: int = 0
    # by owner: "worker" (image classification, with FILE_NAMES), "admin", "worker_od" (not ic)
    datasets: dict[str, int] = field(default_factory=dict)
    docker: int = 0
    pretrained: int = 0
    outputs: list[int] = field(default_factory=list)
    # What snapshot() reads, kept between examples (see _db, _tables, _sha256).
    _read: sqlite3.Connection | None = field(default=None, repr=False)
    _rows: tuple[int, dict[str, list[tuple[Any, ...]]]] | None = field(default=None, repr=False)
    _columns: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _hashes: dict[tuple[str, int, int, int], str] = field(default_factory=dict, repr=False)

    def request(self, method: str, path: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout_s: float = 30.0) -> Reply:
        """One request on a fresh connection. `path` is sent as given (already percent-encoded)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            hdrs = dict(headers or {})
            if body is not None:
                hdrs.setdefault("Content-Length", str(len(body)))
            for name, value in hdrs.items():
                conn.putheader(name, value)
            conn.endheaders()
            if body:
                try:
                    conn.send(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server answered early (a 413, say) and closed: read that answer
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def call(self, method: str, path: str, *, as_: str | None = "worker", json_body: Any = None,
             node: str | None = None) -> Reply:
        headers = {"Content-Type": "application/json"}
        if as_ is not None:
            headers["Authorization"] = f"Bearer {self.tokens[as_]['access']}"
        if node is not None:
            headers["Node-Id"] = str(self.nodes[node])
        body = None if json_body is None else json.dumps(json_body).encode()
        return self.request(method, path, body=body, headers=headers)

    def ok(self, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        reply = self.call(method, path, **kw)
        assert reply.status == status, (method, path, reply.status, reply.body[:300])
        return reply.json() if reply.body else None

    def forge(self, **claims: Any) -> str:
        """A token signed with this server's own key, carrying whatever claims a test wants."""
        now = int(time.time())
        body = {"token_type": "access", "user_id": 1, "iat": now, "exp": now + 600, "jti": "f"}
        body.update(claims)
        return jwt.encode(body, self.key, algorithm="HS256")

    # -- what must not change --------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """One read-only connection for the module: outside a transaction each SELECT reads the
        last commit, and ``PRAGMA data_version`` tells whether another connection committed since."""
        if self._read is None:
            self._read = sqlite3.connect(f"file:{self.data_dir / DB_FILE}?mode=ro", uri=True)
        return self._read

    def close(self) -> None:
        if self._read is not None:
            self._read.close()
            self._read = None

    def _tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, read again only once the server committed something."""
        db = self._db()
        version = db.execute("PRAGMA data_version").fetchall()[0][0]  # all: no statement left open
        if self._rows is not None and self._rows[0] == version:
            return self._rows[1]
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        snap = {}
        for table in sorted(tables):
            cursor = db.execute(f'SELECT * FROM "{table}" ORDER BY rowid')
            columns = [d[0] for d in cursor.description]
            skip = {i for i, c in enumerate(columns) if table == "nodes" and c == "last_seen"}
            snap[table] = [tuple(v for i, v in enumerate(row) if i not in skip) for row in cursor] \
                if skip else cursor.fetchall()
            self._columns[table] = [c for i, c in enumerate(columns) if i not in skip]
        self._rows = (version, snap)
        return snap

    def _sha256(self, path: Path) -> str:
        """A file's sha256, hashed again when its inode, size or mtime changed, or while its mtime
        is recent (as git's racy-clean check: a clock tick may hold two writes of one size)."""
        st = path.stat()
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        if key in self._hashes:
            return self._hashes[key]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if time.time_ns() - st.st_mtime_ns > 2 * 10**9:
            self._hashes[key] = digest
        return digest

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table (a node's last_seen aside: any request with its Node-Id
        refreshes it, a refused one included, as on the real server), and under ``files`` the
        path and sha256 of every file below the data directory's outputs and datasets."""
        snap = dict(self._tables())
        assert "files" not in snap  # the key below must not hide a table
        snap["files"] = [(f"{folder}/{name}", self._sha256(self.data_dir / folder / name))
                         for folder in (OUTPUTS_DIR, DATASETS_DIR)
                         for name in _file_names(self.data_dir / folder)]
        return snap

    def pks(self, table: str) -> set[str]:
        """The pks of a table's rows, as text (as files are named)."""
        rows = self._tables()[table]
        at = self._columns[table].index("pk")
        return {str(row[at]) for row in rows}

    def stray_files(self) -> list[str]:
        """Anything in the data directory that is neither a known file nor the bytes of a row:
        ``outputs/<pk>`` for an output's row, ``datasets/<pk>`` for a dataset file's row,
        ``pretrained/<pk>`` for a pretrained model's."""
        owners = {OUTPUTS_DIR: self.pks("outputs"), DATASETS_DIR: self.pks("dataset_files"),
                  "pretrained": self.pks("pretrained_models")}  # a pretrained model's file
        stray = []
        for parts in _tree(self.data_dir):
            path = os.path.join(self.data_dir, *parts)
            if len(parts) == 1 and (parts[0] in KNOWN_FILES or parts[0] in owners) \
                    and os.path.isfile(path) == (parts[0] in KNOWN_FILES):
                continue
            if len(parts) == 2 and parts[1] in owners.get(parts[0], ()) and os.path.isfile(path):
                continue
            stray.append("/".join(parts))
        return stray

    def restock(self) -> None:
        """Give the worker's dataset its files and a category again: the worker may change its
        own dataset, so a test that fuzzes its routes may have removed them. The worker's
        datasets of the other domains get the files too, and the object-detection one a
        file type and an annotation for the first file."""
        for key in ("worker", "worker_od", "worker_sp", "worker_sc"):
            dataset = self.datasets[key]
            have = self.ok("GET", f"/v1/datasets/{dataset}")["files"]
            for name in FILE_NAMES:
                if name in have:
                    continue
                reply = self.request("POST", f"/v1/datasets/{dataset}/files/{segment(name)}",
                                     body=name.encode(), headers={
                                         "Authorization": f"Bearer {self.tokens['worker']['access']}",
                                         "Content-Type": "application/data",
                                         "Content-Disposition": "attachment; filename=upload"})
                assert reply.status == 200, reply.body[:300]
        self.ok("PATCH", f"/v1/classify/datasets/{self.datasets['worker']}/categories", json_body={
            "method": "add", "images": [FILE_NAMES[0]], "categories": ["dog"]})
        self.ok("POST", f"/v1/objdet/datasets/{self.datasets['worker_od']}/annotations", json_body={
            FILE_NAMES[0]: {"format": "png", "dimensions": [2, 2],
                            "annotations": [{"x": 0, "y": 0, "width": 1, "height": 1, "label": "dog"}]}})

    def responsive(self) -> None:
        """The server still answers a plain list call promptly, with a 200."""
        reply = self.call("POST", "/v1/jobs/list", json_body={}, as_="worker")
        assert reply.status == 200, (reply.status, reply.body[:300])


def _file_names(folder: Path) -> list[str]:
    """The names of the files in `folder`, sorted (none where it does not exist)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.is_file())
    except FileNotFoundError:
        return []


def _tree(top: Path) -> list[tuple[str, ...]]:
    """Everything below `top` (folders and files), as path parts, sorted as paths sort
    (os.walk and plain strings: pathlib's rglob costs several times as much per example)."""
    found = []
    for root, dirs, files in os.walk(top):
        base = Path(root).relative_to(top).parts
        found += [(*base, name) for name in (*dirs, *files)]
    return sorted(found)


def check(target: Target, before: dict[str, Any], reply: Reply) -> None:
    """The properties every answer must have."""
    assert reply.status < 500, (reply.status, reply.body[:500])
    if reply.status >= 400:
        assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
        body = reply.json()
        assert isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"], body
        assert target.snapshot() == before, f"a refused call ({reply.status}) changed the state"
    elif reply.body and reply.headers.get("content-type", "").startswith("application/json"):
        reply.json()  # strict: no NaN or Infinity in what we send back
    assert target.stray_files() == []


def _populate(target: Target) -> None:
    """Rows to aim at: the test template, a node for each user, and jobs in every phase."""
    for who, (user, password) in (("admin", ADMIN), ("worker", WORKER), ("other", OTHER)):
        target.tokens[who] = target.ok("POST", "/v1/auth/obtain", as_=None,
                                       json_body={"username": user, "password": password})
    target.template = target.ok("POST", "/v1/job-templates/import", 200, as_="admin",
                                json_body=TEMPLATE)["pk"]
    for who, ip in (("worker", "10.77.0.1"), ("worker2", "10.77.0.2"), ("admin", "10.77.0.3")):
        as_ = "admin" if who == "admin" else "worker"
        target.nodes[who] = target.ok("POST", "/v1/nodes/create", 201, as_=as_,
                                      json_body={"ip": ip, "index": 0, "cpu_mem": 2**30})["pk"]
    create = f"/v1/job-templates/{target.template}/create-job"
    body = {"input_values": {}, "parameter_values": {}, "description": "fuzz"}
    for _ in range(4):
        target.jobs.append(target.ok("POST", create, as_="admin", json_body=body)["pk"])
    held, started, errored = target.jobs[1:]
    target.ok("GET", f"/v1/jobs/{held}/acquire", node="worker2")
    target.ok("GET", f"/v1/jobs/{started}/acquire", node="worker")
    target.ok("POST", f"/v1/jobs/{started}/start", node="worker", json_body={"send_notification": "x"})
    reply = target.request("POST", f"/v1/jobs/{started}/outputs/model/json", body=b"{}", headers={
        "Authorization": f"Bearer {target.tokens['worker']['access']}",
        "Node-Id": str(target.nodes["worker"]), "Content-Type": "application/data",
        "Content-Disposition": "attachment; filename=model"})
    assert reply.status == 200, reply.body[:300]
    target.ok("GET", f"/v1/jobs/{errored}/acquire", node="admin", as_="admin")
    target.ok("POST", f"/v1/jobs/{errored}/start", node="admin", as_="admin",
              json_body={"send_notification": "x"})
    target.ok("POST", f"/v1/jobs/{errored}/finish", node="admin", as_="admin",
              json_body={"success": False, "send_notification": "x", "error": "boom"})
    target.outputs = sorted(int(pk) for pk in target.pks("outputs"))
    _populate_records(target)


def _populate_records(target: Target) -> None:
    """Datasets (the worker's and the admin's of each domain, the worker's with files, the image
    classification one with a category), and a Docker-image and a pretrained-model record."""
    for domain, prefix in DOMAIN_PREFIXES.items():
        for who in ("worker", "admin"):
            key = who if domain == "ic" else f"{who}_{domain}"
            target.datasets[key] = target.ok("POST", f"{prefix}/create", 201, as_=who, json_body={
                "name": f"fuzz-{key}", "project": 1, "licence": 1, "tags": ""})["pk"]
    target.restock()
    target.docker = target.ok("POST", "/v1/docker/create", 201, as_="admin", json_body=DOCKER)["pk"]
    target.pretrained = target.ok("POST", "/v1/pretrained-models/create", 201, as_="admin",
                                  json_body=PRETRAINED)["pk"]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A fresh embedded server (strict mode) for one test module, with rows to aim at."""
    data_dir = tmp_path_factory.mktemp("fuzz") / "data"
    # Tokens must outlive the module's run on a slow, shared machine; a small upload limit makes
    # over-limit uploads cheap to send.
    settings = server_settings(data_dir, access_lifetime_s=3600, max_upload_bytes=4096)
    with _ThreadedServer(settings) as server:
        assert server.port is not None
        target = Target(port=server.port, data_dir=data_dir, key=load_signing_key(data_dir))
        assert server.app is not None
        # A second ordinary user, before any request: the server's loop is idle.
        store_of(server.app).put_user(OTHER[0], hash_password(OTHER[1]), False)
        _populate(target)
        try:
            yield target
        finally:
            target.close()


@pytest.fixture(autouse=True)
def still_serving(target: Target) -> Iterator[None]:
    """After every test: the server answers, and its data directory holds only known files."""
    yield
    target.responsive()
    assert target.stray_files() == []
