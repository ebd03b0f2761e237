"""SQLite storage of the embedded server.

One connection, used from the event loop, for every statement that is a short
indexed read or write: it is cheaper to run those in place than to hop to a
thread (output bytes never pass through here; they stream to files named by the
output's primary key). A list can be any length, so lists run on read-only
connections of their own, in threads (WAL mode lets them read beside the
writer), and SQLite builds each row's JSON itself (``json_object``): the GIL is
released while it works, and the event loop keeps serving other requests.

Primary keys are AUTOINCREMENT so that a pk, and with it an output file name, is
never reused.

Lifecycle changes are compare-and-set: the UPDATE names the fields the rules
were checked against, and a changed row makes it a no-op that the caller
reports as a conflict. Acquire is exactly this: ``... WHERE node IS NULL OR
node = ?``.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .filters import Column, Query, Resource, format_time
from .lifecycle import JobState
from .migrations import SCHEMA_MIGRATIONS
from .rowjson import OUTPUTS_ARRAY, keep_job_json

DB_FILE = "ufdl.sqlite3"

# [min, max) compute capability per NVIDIA generation, as the real server ships them.
HARDWARE = [("Fermi", 2.0, 3.0), ("Kepler", 3.0, 5.0), ("Maxwell", 5.0, 6.0),
            ("Pascal", 6.0, 7.0), ("Volta", 7.0, 7.5), ("Turing", 7.5, 8.0),
            ("Ampere", 8.0, 8.9), ("Ada Lovelace", 8.9, 9.0), ("Hopper", 9.0, 10.0)]
LICENCES = ["Apache 2.0", "MIT", "BSD 3-Clause", "BSD 2-Clause", "GPL v3", "LGPL v3",
            "AGPL v3", "MPL 2.0", "CC BY 4.0", "CC0", "Public Domain", "Proprietary"]
DOMAINS = {"ic": "Image Classification", "od": "Object Detection", "is": "Image Segmentation",
           "sp": "Speech", "sc": "Spectrum Classification"}

# The schema, one script per version (migrations.py); never edit one that has shipped.
MIGRATIONS = SCHEMA_MIGRATIONS

# No index beyond jobs_node is needed for finding work: a waiting job has no node, so the
# find-work filter reads "jobs_node (node=?)" in pk order, and `compare pk >` narrows that
# to "(node=? AND rowid>?)" (tests/server/test_list_plan.py keeps it so).

# Rows per chunk of a streamed list: big enough to amortise a thread hop, small enough
# that a chunk costs the event loop a fraction of a millisecond to write.
LIST_CHUNK_ROWS = 1000
# Read connections kept open for lists; more lists at once open (and close) extra ones.
READERS_KEPT = 4

_WORKABLE = "CASE WHEN t.workable THEN t.pk END"
JOBS = Resource(
    from_sql="jobs j JOIN templates t ON t.pk = j.template", pk_sql="j.pk",
    deletion_sql="j.deletion_time",
    fields={"pk": Column("j.pk", "int"), "template": Column("j.template", "int"),
            "template.pk": Column("t.pk", "int"), "template.name": Column("t.name", "str"),
            "template.version": Column("t.version", "int"),
            "template.workabletemplate": Column(_WORKABLE, "int"),
            "template.type": Column("t.type", "str"), "template.scope": Column("t.scope", "str"),
            "template.domain": Column("t.domain", "str"),
            "parent": Column("j.parent", "int"), "start_time": Column("j.start_time", "time"),
            "end_time": Column("j.end_time", "time"),
            "error_reason": Column("j.error_reason", "str"), "node": Column("j.node", "int"),
            "description": Column("j.description", "str"),
            "is_cancelled": Column("j.is_cancelled", "bool"),
            "creator": Column("j.creator", "int"),
            "creation_time": Column("j.creation_time", "time"),
            "deletion_time": Column("j.deletion_time", "time")})
NODES = Resource(
    from_sql="nodes n", pk_sql="n.pk",
    fields={"pk": Column("n.pk", "int"), "ip": Column("n.ip", "str"),
            "index": Column("n.idx", "int"), "cpu_mem": Column("n.cpu_mem", "int"),
            "gpu_mem": Column("n.gpu_mem", "int"),
            "driver_version": Column("n.driver_version", "str"),
            "hardware_generation": Column("n.hardware_generation", "int"),
            "last_seen": Column("n.last_seen", "time"),
            "current_job": Column("n.current_job", "int")})
TEMPLATES = Resource(
    from_sql="templates t", pk_sql="t.pk", deletion_sql="t.deletion_time",
    fields={"pk": Column("t.pk", "int"), "name": Column("t.name", "str"),
            "version": Column("t.version", "int"), "description": Column("t.description", "str"),
            "scope": Column("t.scope", "str"), "domain": Column("t.domain", "str"),
            "licence": Column("t.licence", "int"), "workabletemplate": Column(_WORKABLE, "int"),
            "type": Column("t.type", "str"), "executor_class": Column("t.executor_class", "str"),
            "creator": Column("t.creator", "int"),
            "creation_time": Column("t.creation_time", "time"),
            "deletion_time": Column("t.deletion_time", "time")})
HARDWARE_RESOURCE = Resource(
    from_sql="hardware h", pk_sql="h.pk",
    fields={"pk": Column("h.pk", "int"), "generation": Column("h.generation", "str"),
            "min_compute_capability": Column("h.min_cc", "float"),
            "max_compute_capability": Column("h.max_cc", "float")})

_OUTPUTS_JSON = f"{OUTPUTS_ARRAY} AS outputs_json"
_JOB_SELECT = f"""SELECT j.*, t.name AS t_name, t.version AS t_version, t.workable AS t_workable,
    {_OUTPUTS_JSON} FROM jobs j JOIN templates t ON t.pk = j.template"""
NODE_COLUMNS = {"ip": "ip", "index": "idx", "cpu_mem": "cpu_mem", "gpu_mem": "gpu_mem",
                "driver_version": "driver_version", "hardware_generation": "hardware_generation"}
JOB_COLUMNS = frozenset({"node", "start_time", "end_time", "error_reason", "is_cancelled",
                         "progress", "description", "deletion_time"})


def now() -> str:
    return format_time(datetime.now(timezone.utc))


class Conflict(Exception):
    """A compare-and-set found the row changed, or a unique constraint refused a row."""


class Store:
    """The database of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.outputs_dir = data_dir / "outputs"
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.outputs_dir.glob(".upload-*.part"):  # uploads a crash cut short
            stale.unlink(missing_ok=True)
        self.db = sqlite3.connect(data_dir / DB_FILE, isolation_level=None,
                                  check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self._migrate()  # with foreign keys off: a migration may rebuild a table others refer to
        self.db.execute("PRAGMA foreign_keys = ON")
        keep_job_json(self.db)
        self._seed()
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._closed = False

    def close(self) -> None:
        self._closed = True
        while not self._readers.empty():
            self._readers.get_nowait().close()
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction() as db:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {int(number)}")

    def _seed(self) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO hardware (generation, min_cc, max_cc) VALUES (?, ?, ?)",
                           HARDWARE)
            db.executemany("INSERT OR IGNORE INTO licences (name) VALUES (?)",
                           [(name,) for name in LICENCES])
            db.executemany("INSERT OR IGNORE INTO domains (code, name) VALUES (?, ?)",
                           list(DOMAINS.items()))

    def output_path(self, output_pk: int) -> Path:
        """Output bytes live in a file named by the output's pk, never by a request's name."""
        return self.outputs_dir / str(int(output_pk))

    # -- users -----------------------------------------------------------------------

    def user(self, pk: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute("SELECT * FROM users WHERE pk = ?", (pk,)).fetchone()
        return row

    def user_by_name(self, username: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        return row

    def put_user(self, username: str, password_hash: str, is_staff: bool) -> None:
        with self.transaction() as db:
            db.execute("""INSERT INTO users (username, password_hash, is_staff, creation_time)
                          VALUES (?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET
                          password_hash = excluded.password_hash, is_staff = excluded.is_staff""",
                       (username, password_hash, int(is_staff), now()))

    def has_staff(self) -> bool:
        return self.db.execute("SELECT 1 FROM users WHERE is_staff").fetchone() is not None

    # -- listing -----------------------------------------------------------------------

    def _select(self, select: str, resource: Resource, query: Query) -> list[sqlite3.Row]:
        sql = f"{select} WHERE {query.where} ORDER BY {query.order}"
        return list(self.db.execute(sql, query.params))

    def _reader(self) -> sqlite3.Connection:
        try:
            return self._readers.get_nowait()
        except queue.Empty:
            pass
        # A connection is handed from thread to thread, but used by one at a time.
        uri = f"file:{urllib.request.pathname2url(str(self.data_dir / DB_FILE))}?mode=ro"
        reader = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        reader.execute("PRAGMA query_only = ON")
        return reader

    def _give_back(self, reader: sqlite3.Connection) -> None:
        if not self._closed and self._readers.qsize() < READERS_KEPT:
            self._readers.put(reader)
        else:
            reader.close()

    def list_chunks(self, resource: Resource, row_json: str, query: Query) -> Iterator[bytes]:
        """A list as the bytes of one JSON array, in chunks of LIST_CHUNK_ROWS rows.

        Meant to be stepped from worker threads (see ``listing.stream_list``): each
        step reads on a read connection of its own, so a long list neither blocks the
        event loop nor waits for it. `row_json` is one of the *_JSON_SQL expressions of ``rowjson``.
        The statement and its connection are released when the generator closes.
        """
        sql = f"SELECT {row_json} FROM {resource.from_sql} WHERE {query.where} ORDER BY {query.order}"
        reader = self._reader()
        cursor = reader.cursor()
        try:
            cursor.execute(sql, query.params)
            opening = b"["
            while rows := cursor.fetchmany(LIST_CHUNK_ROWS):
                yield opening + ",".join([r[0] for r in rows]).encode()
                opening = b","
            yield b"[]" if opening == b"[" else b"]"
        finally:
            cursor.close()
            self._give_back(reader)

    # -- hardware ------------------------------------------------------------------

    def hardware_exists(self, pk: int) -> bool:
        return self.db.execute("SELECT 1 FROM hardware WHERE pk = ?", (pk,)).fetchone() is not None

    # -- nodes ---------------------------------------------------------------------

    @staticmethod
    def node_json(row: sqlite3.Row) -> dict[str, Any]:
        return {"pk": row["pk"], "ip": row["ip"], "index": row["idx"], "cpu_mem": row["cpu_mem"],
                "gpu_mem": row["gpu_mem"], "driver_version": row["driver_version"],
                "hardware_generation": row["hardware_generation"], "last_seen": row["last_seen"],
                "current_job": row["current_job"]}

    def node(self, pk: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute("SELECT * FROM nodes WHERE pk = ?", (pk,)).fetchone()
        return row

    def list_nodes(self, query: Query) -> list[dict[str, Any]]:
        return [self.node_json(r) for r in self._select("SELECT n.* FROM nodes n", NODES, query)]

    def create_node(self, fields: dict[str, Any], creator: int | None = None) -> int:
        columns = [NODE_COLUMNS[k] for k in fields]
        try:
            with self.transaction() as db:
                cursor = db.execute(
                    f"INSERT INTO nodes ({', '.join(columns)}, last_seen, creator) "
                    f"VALUES ({', '.join('?' * len(columns))}, ?, ?)", [*fields.values(), now(), creator])
        except sqlite3.IntegrityError:
            raise Conflict("The fields ip, index must make a unique set.") from None
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def update_node(self, pk: int, fields: dict[str, Any]) -> None:
        if not fields:
            return
        assignments = ", ".join(f"{NODE_COLUMNS[k]} = ?" for k in fields)
        try:
            with self.transaction() as db:
                db.execute(f"UPDATE nodes SET {assignments} WHERE pk = ?", [*fields.values(), pk])
        except sqlite3.IntegrityError:
            raise Conflict("The fields ip, index must make a unique set.") from None

    def delete_node(self, pk: int) -> bool:
        """Delete an unreferenced node; False (and nothing done) when a job or current_job refers to it."""
        with self.transaction() as db:
            cursor = db.execute("""DELETE FROM nodes WHERE pk = ? AND current_job IS NULL
                                   AND NOT EXISTS (SELECT 1 FROM jobs WHERE node = ?)""", (pk, pk))
        return cursor.rowcount == 1

    def touch_node(self, pk: int) -> None:
        self.db.execute("UPDATE nodes SET last_seen = ? WHERE pk = ?", (now(), pk))

    # -- licences, domains, templates ---------------------------------------------------

    def licence_names(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM licences ORDER BY pk")]

    def domain_names(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self.db.execute("SELECT code, name FROM domains ORDER BY pk")}

    @staticmethod
    def template_json(row: sqlite3.Row) -> dict[str, Any]:
        data: dict[str, Any] = {
            "pk": row["pk"], "name": row["name"], "version": row["version"],
            "description": row["description"], "scope": row["scope"], "domain": row["domain"],
            "licence": row["licence"], "creator": row["creator"],
            "creation_time": row["creation_time"], "deletion_time": row["deletion_time"]}
        if row["workable"]:
            data.update(type=row["type"], executor_class=row["executor_class"],
                        required_packages=row["required_packages"],
                        parameters=json.loads(row["parameters"] or "{}"))
        return data

    def template(self, pk: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM templates WHERE pk = ?", (pk,)).fetchone()
        return row

    def list_templates(self, query: Query) -> list[dict[str, Any]]:
        rows = self._select("SELECT t.* FROM templates t", TEMPLATES, query)
        return [self.template_json(r) for r in rows]

    def licence_pk(self, name: str) -> int | None:
        row = self.db.execute("SELECT pk FROM licences WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def import_template(self, fields: dict[str, Any]) -> int:
        """Create a template (`fields` with ``licence`` by name); ``version`` None takes the newest
        active version + 1, an active template of the given name and version is soft-deleted."""
        fields = dict(fields, creation_time=now(), licence=self.licence_pk(fields["licence"]))
        if fields["licence"] is None:
            raise Conflict("unknown licence")
        if "parameters" in fields:
            fields["parameters"] = json.dumps(fields["parameters"])
        with self.transaction() as db:
            if fields.get("version") is None:
                newest = db.execute("SELECT max(version) FROM templates WHERE name = ? AND "
                                    "deletion_time IS NULL", (fields["name"],)).fetchone()[0]
                fields["version"] = (newest or 0) + 1
            db.execute("UPDATE templates SET deletion_time = ? WHERE name = ? AND version = ? AND "
                       "deletion_time IS NULL", (fields["creation_time"], fields["name"], fields["version"]))
            cursor = db.execute(f"INSERT INTO templates ({', '.join(fields)}) "
                                f"VALUES ({', '.join('?' * len(fields))})", list(fields.values()))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    # -- jobs --------------------------------------------------------------------------

    @staticmethod
    def job_json(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "pk": row["pk"],
            "template": {"pk": row["template"], "name": row["t_name"], "version": row["t_version"]},
            "parent": row["parent"], "start_time": row["start_time"], "end_time": row["end_time"],
            "error_reason": row["error_reason"], "input_values": json.loads(row["input_values"]),
            "parameter_values": json.loads(row["parameter_values"]) if row["parameter_values"]
            is not None else None,
            "node": row["node"], "description": row["description"],
            "outputs": json.loads(row["outputs_json"] or "[]"),
            "is_cancelled": bool(row["is_cancelled"]), "creator": row["creator"],
            "creation_time": row["creation_time"], "deletion_time": row["deletion_time"]}

    @staticmethod
    def job_state(row: sqlite3.Row) -> JobState:
        return JobState(node=row["node"], start_time=row["start_time"], end_time=row["end_time"],
                        error_reason=row["error_reason"], is_cancelled=bool(row["is_cancelled"]),
                        parent=row["parent"], workable=bool(row["t_workable"]))

    def job(self, pk: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(f"{_JOB_SELECT} WHERE j.pk = ?", (pk,)).fetchone()
        return row

    def list_jobs(self, query: Query) -> list[dict[str, Any]]:
        return [self.job_json(r) for r in self._select(_JOB_SELECT, JOBS, query)]

    def create_job(self, template: int, input_values: dict[str, Any],
                   parameter_values: dict[str, Any] | None, description: str,
                   notification_override: Any, creator: int) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                """INSERT INTO jobs (template, input_values, parameter_values, description,
                   notification_override, creator, creation_time) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (template, json.dumps(input_values),
                 None if parameter_values is None else json.dumps(parameter_values), description,
                 None if notification_override is None else json.dumps(notification_override),
                 creator, now()))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def update_job(self, pk: int, fields: dict[str, Any]) -> None:
        assignments = ", ".join(f"{_job_column(k)} = ?" for k in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE pk = ?", [*fields.values(), pk])

    def apply(self, pk: int, expected: JobState, changes: dict[str, Any], *, node: int | None,
              current_job: str | None, drop_outputs: bool, soft_drop: bool) -> list[int]:
        """Apply a lifecycle change as one compare-and-set transaction.

        Raises Conflict when the job's lifecycle fields are no longer `expected`.
        Returns the pks of outputs removed for good (their files are the caller's to delete).
        """
        removed: list[int] = []
        with self.transaction() as db:
            if changes:
                assignments = ", ".join(f"{_job_column(k)} = ?" for k in changes)
                cursor = db.execute(
                    f"""UPDATE jobs SET {assignments} WHERE pk = ? AND node IS ? AND start_time IS ?
                        AND end_time IS ? AND error_reason IS ? AND is_cancelled = ?""",
                    [*(_sql_value(v) for v in changes.values()), pk, expected.node,
                     expected.start_time, expected.end_time, expected.error_reason,
                     int(expected.is_cancelled)])
                if cursor.rowcount != 1:
                    raise Conflict("The job changed while this request was handled; try again")
            if current_job == "set" and node is not None:
                cursor = db.execute("UPDATE nodes SET current_job = ? WHERE pk = ? AND current_job IS NULL",
                                    (pk, node))
                if cursor.rowcount != 1:
                    raise Conflict("The node started another job meanwhile")
            elif current_job == "clear" and node is not None:
                db.execute("UPDATE nodes SET current_job = NULL WHERE pk = ? AND current_job = ?",
                           (node, pk))
            if drop_outputs:
                if soft_drop:
                    db.execute("UPDATE outputs SET deletion_time = ? WHERE job = ? AND deletion_time IS NULL",
                               (now(), pk))
                else:
                    removed = [r[0] for r in db.execute("SELECT pk FROM outputs WHERE job = ?", (pk,))]
                    db.execute("DELETE FROM outputs WHERE job = ?", (pk,))
        return removed

    def hard_delete_job(self, pk: int) -> list[int]:
        """Delete the job and its output rows; returns the output pks whose files must go."""
        with self.transaction() as db:
            removed = [r[0] for r in db.execute("SELECT pk FROM outputs WHERE job = ?", (pk,))]
            db.execute("DELETE FROM outputs WHERE job = ?", (pk,))
            db.execute("UPDATE nodes SET current_job = NULL WHERE current_job = ?", (pk,))
            db.execute("DELETE FROM jobs WHERE pk = ?", (pk,))
        return removed

    def notification_override(self, pk: int) -> Any:
        row = self.db.execute("SELECT notification_override FROM jobs WHERE pk = ?", (pk,)).fetchone()
        return None if row is None or row[0] is None else json.loads(row[0])

    # -- outputs -------------------------------------------------------------------------

    @staticmethod
    def output_json(row: sqlite3.Row) -> dict[str, Any]:
        return {"pk": row["pk"], "job": row["job"], "name": row["name"], "type": row["type"],
                "creator": row["creator"], "creation_time": row["creation_time"],
                "deletion_time": row["deletion_time"]}

    def output(self, job: int, name: str, type_: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM outputs WHERE job = ? AND name = ? AND type = ?",
            (job, name, type_)).fetchone()
        return row

    def create_output(self, job: int, name: str, type_: str, size: int, creator: int | None,
                      place: Callable[[int], None] | None = None) -> int:
        """Add an output row; `place(pk)` puts its bytes under the new pk before the commit,
        so that a crash leaves the row and its file, or neither (never a row without bytes)."""
        try:
            with self.transaction() as db:
                cursor = db.execute(
                    """INSERT INTO outputs (job, name, type, size, creator, creation_time)
                       VALUES (?, ?, ?, ?, ?, ?)""", (job, name, type_, size, creator, now()))
                assert cursor.lastrowid is not None
                if place is not None:
                    place(cursor.lastrowid)
        except sqlite3.IntegrityError:
            raise Conflict("The job already has an output with this name and type") from None
        return cursor.lastrowid

    def delete_output(self, pk: int, *, soft: bool) -> None:
        with self.transaction() as db:
            if soft:
                db.execute("UPDATE outputs SET deletion_time = ? WHERE pk = ? AND deletion_time IS NULL",
                           (now(), pk))
            else:
                db.execute("DELETE FROM outputs WHERE pk = ?", (pk,))


def _job_column(name: str) -> str:
    # Column names come from the lifecycle module and the handlers, never from a request;
    # the check keeps it that way.
    if name not in JOB_COLUMNS:
        raise ValueError(f"not a writable job column: {name!r}")
    return name


def _sql_value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value
