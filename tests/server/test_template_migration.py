"""Migration 5 (templates): an older data directory keeps its templates and jobs, in real-server terms."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from ufdl_node.server.store import DB_FILE, MIGRATIONS, Store, now


def _old_data_dir(path: Path) -> None:
    """A database at migration 3 holding a template as it was kept then (domain by name, licence
    by name, UNIQUE name and version) and a job of it."""
    db = sqlite3.connect(path / DB_FILE, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        db.executescript(script)
        db.execute(f"PRAGMA user_version = {number}")
    db.execute("INSERT INTO licences (name) VALUES ('Apache 2.0'), ('MIT')")
    db.execute("INSERT INTO domains (code, name) VALUES ('ic', 'Image Classification')")
    db.execute("""INSERT INTO templates (name, version, description, scope, domain, licence, workable, type,
                  executor_class, required_packages, parameters, creation_time)
                  VALUES ('old', 1, '', 'public', 'Image Classification', 'MIT', 1, 'Export', 'x', '',
                  ?, ?)""", (json.dumps({"n": {"types": ["int"], "help": "n"}}), now()))
    db.execute("""INSERT INTO jobs (template, input_values, parameter_values, description, creation_time)
                  VALUES (1, '{}', '{}', 'kept', ?)""", (now(),))
    db.close()


def test_an_old_template_reads_back_with_its_domain_code_and_licence_pk(tmp_path: Path) -> None:
    """After migration: domain "ic", licence MIT's pk, the job still of template 1; an import of the
    same name and version soft-deletes it (no UNIQUE left in the way), one without a version takes
    the next; no foreign key dangles."""
    _old_data_dir(tmp_path)
    store = Store(tmp_path)
    try:
        row = store.template(1)
        assert row is not None
        template = store.template_json(row)
        assert (template["domain"], template["licence"]) == ("ic", store.licence_pk("MIT"))
        assert template["parameters"] == {"n": {"types": ["int"], "help": "n"}}
        job = store.db.execute("SELECT template, description FROM jobs").fetchone()
        assert tuple(job) == (1, "kept")
        fields = {"name": "old", "version": 1, "description": "", "scope": "public", "licence": "MIT",
                  "domain": None, "workable": 1, "type": "Export", "executor_class": "x",
                  "required_packages": "", "parameters": {}}
        again = store.import_template(fields)
        replaced = store.template(1)
        assert replaced is not None and replaced["deletion_time"] is not None
        assert store.import_template(dict(fields, version=None)) == again + 1
        assert store.template(again + 1)["version"] == 2  # type: ignore[index]
        assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        store.close()
