"""The find-work filter reads an index, never the whole jobs table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ufdl_node.client import find_work_spec
from ufdl_node.server.filters import compile_spec
from ufdl_node.server.rowjson import JOB_JSON_SQL
from ufdl_node.server.store import JOBS, Store


def _plan(tmp_path: Path, spec: dict[str, Any]) -> list[str]:
    store = Store(tmp_path)
    try:
        query = compile_spec(spec, JOBS)
        sql = f"SELECT {JOB_JSON_SQL} FROM {JOBS.from_sql} WHERE {query.where} ORDER BY {query.order}"
        return [row[3] for row in store.db.execute(f"EXPLAIN QUERY PLAN {sql}", query.params)]
    finally:
        store.close()


@pytest.mark.parametrize("extra", [
    [],
    [{"type": "compare", "field": "pk", "operator": ">", "value": 1000}],
    [{"type": "compare", "field": "pk", "operator": ">", "value": 1000},
     {"type": "exact", "field": "template.name", "value": "mine"}],
])
def test_find_work_searches_an_index_in_pk_order(tmp_path: Path, extra: list[dict[str, Any]]) -> None:
    """Find-work (also narrowed by `compare pk >`) searches jobs by index and needs no sort of its own."""
    spec = find_work_spec()
    spec["expressions"] += extra
    plan = _plan(tmp_path, spec)
    assert plan[0].startswith("SEARCH j USING INDEX"), plan
    if extra:
        assert "rowid>?" in plan[0], plan
    assert not any(step.startswith("SCAN j") for step in plan), plan
    # The one temporary b-tree orders a job's outputs, not the jobs.
    assert plan.count("USE TEMP B-TREE FOR ORDER BY") <= 1


def test_lists_read_a_database_whose_path_has_uri_characters(tmp_path: Path) -> None:
    """A data directory named with spaces, '#', '?' and '%' still opens its read connections."""
    store = Store(tmp_path / "odd dir #1 ?x=%20")
    try:
        chunks = list(store.list_chunks(JOBS, JOB_JSON_SQL, compile_spec(find_work_spec(), JOBS)))
    finally:
        store.close()
    assert chunks == [b"[]"]


def test_kept_job_json_is_remade_when_a_trigger_went_missing(tmp_path: Path) -> None:
    """A trigger dropped behind the store's back (a table rebuilt by a migration) is remade on open."""
    store = Store(tmp_path)
    store.db.execute("DROP TRIGGER job_json_update")
    store.close()
    store = Store(tmp_path)
    try:
        names = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    finally:
        store.close()
    assert "job_json_update" in names
