"""Filter specifications compiled to SQL, run against a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.server.filters import FilterError, compile_spec
from ufdl_node.server.store import JOBS, NODES, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store with five nodes: ips a..e, gpu_mem null on b and d, driver "X1" on a."""
    s = Store(tmp_path)
    for i, ip in enumerate("abcde"):
        s.create_node({"ip": ip, "index": i, "cpu_mem": 100 * i,
                       "gpu_mem": None if ip in "bd" else 10 * i,
                       "driver_version": "X1" if ip == "a" else f"y{i}"})
    yield s
    s.close()


def ips(store: Store, spec: Any) -> list[str]:
    return [n["ip"] for n in store.list_nodes(compile_spec(spec, NODES))]


def expr(**kw: Any) -> dict[str, Any]:
    return {"expressions": [kw]}


def test_empty_spec_lists_everything_by_pk(store: Store) -> None:
    """No spec (or {}) lists every row in pk order."""
    assert ips(store, None) == list("abcde") == ips(store, {})


def test_exact_and_case_insensitive(store: Store) -> None:
    """exact is case-sensitive unless case_insensitive is set."""
    assert ips(store, expr(type="exact", field="driver_version", value="x1")) == []
    assert ips(store, expr(type="exact", field="driver_version", value="x1", case_insensitive=True)) == ["a"]


def test_invert_keeps_rows_whose_field_is_null(store: Store) -> None:
    """An inverted exact keeps NULL rows, as Django's exclude() does."""
    assert ips(store, expr(type="exact", field="gpu_mem", value=20, invert=True)) == list("abde")


def test_contains_is_case_sensitive_without_the_flag(store: Store) -> None:
    """contains uses instr(), not LIKE: case matters, and % is not a wildcard."""
    assert ips(store, expr(type="contains", field="driver_version", sub_string="x")) == []
    assert ips(store, expr(type="contains", field="driver_version", sub_string="x",
                           case_insensitive=True)) == ["a"]
    assert ips(store, expr(type="contains", field="driver_version", sub_string="%")) == []


def test_isnull_and_invert(store: Store) -> None:
    """isnull finds NULL fields; inverted, the others."""
    assert ips(store, expr(type="isnull", field="gpu_mem")) == ["b", "d"]
    assert ips(store, expr(type="isnull", field="gpu_mem", invert=True)) == ["a", "c", "e"]


def test_compare_operators(store: Store) -> None:
    """compare supports < > <= >=."""
    got = {op: ips(store, expr(type="compare", field="cpu_mem", operator=op, value=200))
           for op in ("<", ">", "<=", ">=")}
    assert got == {"<": ["a", "b"], ">": ["d", "e"], "<=": ["a", "b", "c"], ">=": ["c", "d", "e"]}


def test_and_or_with_invert(store: Store) -> None:
    """and/or combine sub-expressions; invert negates the whole."""
    a_or_e = [{"type": "exact", "field": "ip", "value": "a"}, {"type": "exact", "field": "ip", "value": "e"}]
    assert ips(store, expr(type="or", sub_expressions=a_or_e)) == ["a", "e"]
    assert ips(store, expr(type="or", sub_expressions=a_or_e, invert=True)) == ["b", "c", "d"]
    both = [{"type": "isnull", "field": "gpu_mem"}, {"type": "compare", "field": "index",
                                                      "operator": ">", "value": 1}]
    assert ips(store, expr(type="and", sub_expressions=both)) == ["d"]


def test_order_by_with_nulls(store: Store) -> None:
    """Descending puts NULL first, ascending last, unless nulls_first says so (PostgreSQL's order)."""
    asc = {"order_by": [{"field": "gpu_mem"}]}
    assert ips(store, asc) == ["a", "c", "e", "b", "d"]
    assert ips(store, {"order_by": [{"field": "gpu_mem", "nulls_first": True}]}) == ["b", "d", "a", "c", "e"]
    assert ips(store, {"order_by": [{"field": "gpu_mem", "ascending": False}]}) == ["b", "d", "e", "c", "a"]


@pytest.mark.parametrize("spec", [
    [],
    {"expressions": {}},
    {"expressions": [], "bogus": 1},
    expr(type="is_null", field="ip"),
    expr(type="exact", field="ip", value="a", bogus=True),
    expr(type="exact", field="ip"),
    expr(type="exact", field="no_such_field", value=1),
    expr(type="exact", field="ip; DROP TABLE nodes", value=1),
    expr(type="exact", field="cpu_mem", value="lots"),
    expr(type="exact", field="cpu_mem", value=True),
    expr(type="exact", field="cpu_mem", value=2**70),
    expr(type="exact", field="ip", value="a", invert="yes"),
    expr(type="contains", field="ip", sub_string=3),
    expr(type="compare", field="cpu_mem", operator="==", value=1),
    expr(type="and", sub_expressions=[{"type": "isnull", "field": "ip"}]),
    expr(type="or", sub_expressions="nope"),
    {"expressions": ["isnull"]},
    {"order_by": [{"field": "nope"}]},
    {"order_by": [{"field": "ip", "descending": True}]},
    {"order_by": "ip"},
    {"include_inactive": "yes"},
])
def test_malformed_specs_are_refused(spec: Any) -> None:
    """Unknown keys, types, fields, operators, wrong value types and short and/or raise FilterError."""
    with pytest.raises(FilterError):
        compile_spec(spec, NODES)


def test_no_request_text_reaches_the_sql() -> None:
    """Values become ? parameters; only whitelisted SQL fragments are in the text."""
    query = compile_spec(expr(type="exact", field="description", value="x' OR 1=1 --"), JOBS)
    assert "OR 1=1" not in query.where and query.params == ["x' OR 1=1 --"]


def test_dotted_relation_and_workable_fields_compile() -> None:
    """template.name and template.workabletemplate are known job fields."""
    query = compile_spec({"expressions": [
        {"type": "exact", "field": "template.name", "value": "echo"},
        {"type": "isnull", "field": "template.workabletemplate", "invert": True}]}, JOBS)
    assert "t.name = ?" in query.where and "j.deletion_time IS NULL" in query.where


def test_include_inactive_drops_the_soft_delete_clause() -> None:
    """include_inactive true lists soft-deleted rows too."""
    assert "deletion_time" not in compile_spec({"include_inactive": True}, JOBS).where


def test_deep_nesting_is_refused() -> None:
    """A pathologically nested spec is refused, not a recursion error."""
    inner: dict[str, Any] = {"type": "isnull", "field": "ip"}
    for _ in range(100):
        inner = {"type": "and", "sub_expressions": [inner, {"type": "isnull", "field": "ip"}]}
    with pytest.raises(FilterError):
        compile_spec({"expressions": [inner]}, NODES)
