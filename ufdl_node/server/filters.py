"""Filter specifications (UFDL-API.md section 5) compiled to parameterised SQL.

A spec is validated strictly (an unknown key, type or field is a
:class:`FilterError`, answered 400) and compiled against a :class:`Resource`,
which whitelists the fields a client may name and maps each to a SQL
expression written here. No name from a request ever reaches the SQL text:
only values, and those as ``?`` parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

Kind = Literal["int", "float", "str", "bool", "time"]

SPEC_KEYS = frozenset({"expressions", "order_by", "include_inactive"})
EXPRESSION_KEYS = {
    "exact": ({"type", "field", "value"}, {"case_insensitive", "invert"}),
    "contains": ({"type", "field", "sub_string"}, {"case_insensitive", "invert"}),
    "isnull": ({"type", "field"}, {"invert"}),
    "compare": ({"type", "field", "operator", "value"}, {"invert"}),
    "and": ({"type", "sub_expressions"}, {"invert"}),
    "or": ({"type", "sub_expressions"}, {"invert"}),
}
ORDER_KEYS = frozenset({"field", "ascending", "nulls_first"})
OPERATORS = frozenset({"<", ">", "<=", ">="})
# SQLite's parser stack (100 entries) overflows near 40 nested levels in the deepest shape this
# module writes (inverted, case-insensitive `contains` leaves); a worker nests 1 or 2.
MAX_DEPTH = 16
# Every expression, and/or included, counts as one term. SQLite refuses an expression tree deeper
# than 1,000 and a chain of N ANDs or ORs is N deep, so the depth limit alone does not keep a wide
# filter out of it; 256 terms stay far below that in any shape (a worker's filters use about 5).
MAX_TERMS = 256
MAX_ORDERINGS = 16


class FilterError(ValueError):
    """The filter specification is malformed; the message says where."""


@dataclass(frozen=True)
class Column:
    sql: str
    kind: Kind


@dataclass(frozen=True)
class Resource:
    """One listable table: its FROM clause, whitelisted fields, soft-delete column."""

    from_sql: str
    fields: dict[str, Column]
    pk_sql: str
    deletion_sql: str | None = None


@dataclass(frozen=True)
class Query:
    where: str
    order: str
    params: list[Any]


def compile_spec(spec: Any, resource: Resource) -> Query:
    """Validate `spec` (a decoded JSON body, or None) and compile it for `resource`."""
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise FilterError("the filter specification must be a JSON object")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise FilterError(f"unknown key(s) in the filter specification: {sorted(unknown)}")
    expressions = spec.get("expressions", [])
    if not isinstance(expressions, list):
        raise FilterError("expressions must be a list")
    include_inactive = spec.get("include_inactive", False)
    if not isinstance(include_inactive, bool):
        raise FilterError("include_inactive must be true or false")
    params: list[Any] = []
    terms = _Terms()
    clauses = [_expression(e, resource, params, f"expressions[{i}]", 0, terms)
               for i, e in enumerate(expressions)]
    if resource.deletion_sql is not None and not include_inactive:
        clauses.append(f"{resource.deletion_sql} IS NULL")
    where = " AND ".join(f"({c})" for c in clauses) if clauses else "1"
    order = _order_by(spec.get("order_by", []), resource)
    return Query(where=where, order=order, params=params)


def _column(expr: dict[str, Any], resource: Resource, where: str) -> Column:
    name = expr.get("field")
    if not isinstance(name, str):
        raise FilterError(f"{where}: field must be a string")
    column = resource.fields.get(name)
    if column is None:
        raise FilterError(f"{where}: unknown field {name!r}; known: {sorted(resource.fields)}")
    return column


def _flag(expr: dict[str, Any], key: str, where: str) -> bool:
    value = expr.get(key, False)
    if not isinstance(value, bool):
        raise FilterError(f"{where}: {key} must be true or false")
    return value


class _Terms:
    """Counts the terms of one specification against MAX_TERMS."""

    def __init__(self) -> None:
        self.count = 0

    def take(self, where: str) -> None:
        self.count += 1
        if self.count > MAX_TERMS:
            raise FilterError(f"{where}: too many terms; a filter may have at most {MAX_TERMS} "
                              "expressions in all (sub-expressions included)")


def _expression(expr: Any, resource: Resource, params: list[Any], where: str, depth: int,
                terms: _Terms) -> str:
    if depth > MAX_DEPTH:
        raise FilterError(f"{where}: expressions nested too deeply")
    terms.take(where)
    if not isinstance(expr, dict):
        raise FilterError(f"{where}: an expression must be a JSON object")
    kind = expr.get("type")
    if not isinstance(kind, str) or kind not in EXPRESSION_KEYS:
        raise FilterError(f"{where}: unknown expression type {kind!r}; known: {sorted(EXPRESSION_KEYS)}")
    required, optional = EXPRESSION_KEYS[kind]
    missing = required - set(expr)
    if missing:
        raise FilterError(f"{where}: {kind} needs {sorted(missing)}")
    unknown = set(expr) - required - optional
    if unknown:
        raise FilterError(f"{where}: unknown key(s) for {kind}: {sorted(unknown)}")
    invert = _flag(expr, "invert", where)
    if kind in ("and", "or"):
        subs = expr["sub_expressions"]
        if not isinstance(subs, list) or len(subs) < 2:
            raise FilterError(f"{where}: {kind} needs a list of at least two sub_expressions")
        joined = f" {kind.upper()} ".join(
            f"({_expression(s, resource, params, f'{where}.sub_expressions[{i}]', depth + 1, terms)})"
            for i, s in enumerate(subs))
        sql = joined
    else:
        column = _column(expr, resource, where)
        sql = _leaf(kind, expr, column, params, where)
    # Like Django's exclude(): a row whose field is NULL counts as "not matching"
    # rather than "unknown", so the inversion keeps it. (`x IS NOT 1` is NOT COALESCE(x, 0) in
    # fewer parser levels: SQLite's parser stack, not the term count, bounds nesting.)
    return f"({sql}) IS NOT 1" if invert else sql


def _leaf(kind: str, expr: dict[str, Any], column: Column, params: list[Any], where: str) -> str:
    if kind == "isnull":
        return f"{column.sql} IS NULL"
    if kind == "exact":
        value = expr["value"]
        if value is None:
            return f"{column.sql} IS NULL"
        value = _value(value, column, where)
        if _flag(expr, "case_insensitive", where) and isinstance(value, str):
            params.append(value)
            return f"lower({column.sql}) = lower(?)"
        params.append(value)
        return f"{column.sql} = ?"
    if kind == "contains":
        sub = expr["sub_string"]
        if not isinstance(sub, str):
            raise FilterError(f"{where}: sub_string must be a string")
        params.append(sub)
        # instr() rather than LIKE: SQLite's LIKE ignores ASCII case and treats % and _ as wildcards.
        if _flag(expr, "case_insensitive", where):
            return f"instr(lower(CAST({column.sql} AS TEXT)), lower(?)) > 0"
        return f"instr(CAST({column.sql} AS TEXT), ?) > 0"
    operator = expr["operator"]
    if operator not in OPERATORS:
        raise FilterError(f"{where}: unknown operator {operator!r}; known: {sorted(OPERATORS)}")
    params.append(_value(expr["value"], column, where))
    return f"{column.sql} {operator} ?"


def _value(value: Any, column: Column, where: str) -> Any:
    """Check a comparison value against the column's kind (bool is not a number here)."""
    if column.kind == "bool":
        if not isinstance(value, bool):
            raise FilterError(f"{where}: value must be true or false")
        return int(value)
    if column.kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FilterError(f"{where}: value must be a number")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise FilterError(f"{where}: value out of range")
        return value
    if column.kind == "time":
        if not isinstance(value, str):
            raise FilterError(f"{where}: value must be an ISO 8601 timestamp")
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise FilterError(f"{where}: value is not an ISO 8601 timestamp") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return format_time(moment)
    if not isinstance(value, str):
        raise FilterError(f"{where}: value must be a string")
    return value


def _order_by(orderings: Any, resource: Resource) -> str:
    if not isinstance(orderings, list):
        raise FilterError("order_by must be a list")
    if len(orderings) > MAX_ORDERINGS:
        raise FilterError(f"order_by: at most {MAX_ORDERINGS} orderings")
    parts = []
    for i, ordering in enumerate(orderings):
        where = f"order_by[{i}]"
        if not isinstance(ordering, dict):
            raise FilterError(f"{where}: an ordering must be a JSON object")
        unknown = set(ordering) - ORDER_KEYS
        if unknown:
            raise FilterError(f"{where}: unknown key(s): {sorted(unknown)}")
        column = _column(ordering, resource, where)
        ascending = ordering.get("ascending", True)
        if not isinstance(ascending, bool):
            raise FilterError(f"{where}: ascending must be true or false")
        nulls_first = _flag(ordering, "nulls_first", where)
        # The real server (PostgreSQL) sorts NULL as largest unless nulls_first is given.
        nulls = "NULLS FIRST" if nulls_first or not ascending else "NULLS LAST"
        parts.append(f"{column.sql} {'ASC' if ascending else 'DESC'} {nulls}")
    parts.append(f"{resource.pk_sql} ASC")
    return ", ".join(parts)


def format_time(moment: datetime) -> str:
    """Every stored timestamp has this one form, so that text order is time order."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")
