"""Rows as JSON built by SQLite, for lists, and the kept JSON of every job.

Each ``*_JSON_SQL`` expression renders one row with the same keys, in the same
order, as the matching ``Store.*_json()`` function (tests/server/test_list_stream.py
holds them together). SQLite's json_object does the work while the GIL is
released, so a list built in a worker thread leaves the event loop free.

A job's JSON costs a few microseconds to build, and a find-work list at a
backlog of 100,000 jobs builds them all on every poll. So each job's JSON is
kept in the table ``job_json``, rewritten by triggers in the same transaction
as any change to the job, its outputs or its template's name; a list then only
reads it (``JOB_JSON_SQL``). The triggers and the table are derived data: they
are rebuilt, and the table refilled, whenever their definition changes.
"""

from __future__ import annotations

import hashlib
import sqlite3


def _json_object(*pairs: str) -> str:
    return "json_object(" + ", ".join(pairs) + ")"


OUTPUTS_ARRAY = """(SELECT json_group_array(json_object('pk', o.pk, 'name', o.name, 'type', o.type))
    FROM (SELECT pk, name, type FROM outputs WHERE job = j.pk ORDER BY pk) o)"""
_TRUE_FALSE = "CASE WHEN {} THEN json('true') ELSE json('false') END"
# The EXISTS spares the common case (no outputs) an aggregate per row.
_OUTPUTS_LIST = f"""CASE WHEN EXISTS (SELECT 1 FROM outputs WHERE job = j.pk)
    THEN json({OUTPUTS_ARRAY}) ELSE json_array() END"""
JOB_JSON_BUILT = _json_object(
    "'pk', j.pk", "'template', json_object('pk', j.template, 'name', t.name, 'version', t.version)",
    "'parent', j.parent", "'start_time', j.start_time", "'end_time', j.end_time",
    "'error_reason', j.error_reason", "'input_values', json(j.input_values)",
    "'parameter_values', json(j.parameter_values)", "'node', j.node",
    "'description', j.description", f"'outputs', {_OUTPUTS_LIST}",
    f"'is_cancelled', {_TRUE_FALSE.format('j.is_cancelled')}", "'creator', j.creator",
    "'creation_time', j.creation_time", "'deletion_time', j.deletion_time")
# What a jobs list selects: the kept JSON (a rowid lookup), built afresh should it be missing.
JOB_JSON_SQL = f"coalesce((SELECT body FROM job_json WHERE pk = j.pk), {JOB_JSON_BUILT})"
NODE_JSON_SQL = _json_object(
    "'pk', n.pk", "'ip', n.ip", "'index', n.idx", "'cpu_mem', n.cpu_mem", "'gpu_mem', n.gpu_mem",
    "'driver_version', n.driver_version", "'hardware_generation', n.hardware_generation",
    "'last_seen', n.last_seen", "'current_job', n.current_job")
_TEMPLATE_BASE = ("'pk', t.pk", "'name', t.name", "'version', t.version",
                  "'description', t.description", "'scope', t.scope", "'domain', t.domain",
                  "'licence', t.licence", "'creator', t.creator", "'creation_time', t.creation_time",
                  "'deletion_time', t.deletion_time")
TEMPLATE_JSON_SQL = (
    "CASE WHEN t.workable THEN "
    + _json_object(*_TEMPLATE_BASE, "'type', t.type", "'executor_class', t.executor_class",
                   "'required_packages', t.required_packages",
                   "'parameters', json(coalesce(t.parameters, '{}'))")
    + f" ELSE {_json_object(*_TEMPLATE_BASE)} END")
HARDWARE_JSON_SQL = _json_object(
    "'pk', h.pk", "'generation', h.generation", "'min_compute_capability', h.min_cc",
    "'max_compute_capability', h.max_cc")


def _refresh(which: str) -> str:
    return f"""INSERT OR REPLACE INTO job_json (pk, body) SELECT j.pk, {JOB_JSON_BUILT}
        FROM jobs j JOIN templates t ON t.pk = j.template WHERE {which}"""


_TRIGGERS = {
    "job_json_insert": f"AFTER INSERT ON jobs BEGIN {_refresh('j.pk = NEW.pk')}; END",
    "job_json_update": f"AFTER UPDATE ON jobs BEGIN {_refresh('j.pk = NEW.pk')}; END",
    "job_json_delete": "AFTER DELETE ON jobs BEGIN DELETE FROM job_json WHERE pk = OLD.pk; END",
    "job_json_output_insert": f"AFTER INSERT ON outputs BEGIN {_refresh('j.pk = NEW.job')}; END",
    "job_json_output_update": f"AFTER UPDATE ON outputs BEGIN {_refresh('j.pk IN (OLD.job, NEW.job)')}; END",
    "job_json_output_delete": f"AFTER DELETE ON outputs BEGIN {_refresh('j.pk = OLD.job')}; END",
    "job_json_template":
        f"AFTER UPDATE OF name, version ON templates BEGIN {_refresh('j.template = NEW.pk')}; END",
}
_VERSION = hashlib.sha256(repr(sorted(_TRIGGERS.items())).encode()).hexdigest()


def keep_job_json(db: sqlite3.Connection) -> None:
    """Make (or remake) the job_json table and its triggers; a no-op when they are current.

    Runs in its own transaction on the store's connection, when the store opens.
    """
    db.execute("CREATE TABLE IF NOT EXISTS derived (name TEXT PRIMARY KEY, version TEXT NOT NULL)")
    row = db.execute("SELECT version FROM derived WHERE name = 'job_json'").fetchone()
    # A migration that rebuilds jobs or outputs drops their triggers: count them too.
    triggers = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN "
                          f"({', '.join('?' * len(_TRIGGERS))})", list(_TRIGGERS)).fetchone()[0]
    if row is not None and row[0] == _VERSION and triggers == len(_TRIGGERS):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for name in _TRIGGERS:
            db.execute(f"DROP TRIGGER IF EXISTS {name}")
        db.execute("DROP TABLE IF EXISTS job_json")
        db.execute("CREATE TABLE job_json (pk INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        for name, body in _TRIGGERS.items():
            db.execute(f"CREATE TRIGGER {name} {body}")
        db.execute(_refresh("1"))
        db.execute("INSERT OR REPLACE INTO derived (name, version) VALUES ('job_json', ?)", (_VERSION,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
