"""Hypothesis strategies for hostile input to the embedded server.

Values are chosen to reach past the first check: plausible shapes (the keys a
route reads, filter specs with real fields) carrying hostile values (wrong
types, numbers beyond SQLite's integer, NaN, lone surrogates, odd names),
mixed with plain garbage.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from hypothesis import strategies as st

from ufdl_node.server import filters
from ufdl_node.server.store import HARDWARE_RESOURCE, JOBS, NODES, TEMPLATES

HUGE_INTS = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30, -(10**30), 10**400]
ODD_TEXT = ["", " ", "..", ".", "../../etc/passwd", "..\\..\\boot.ini", "/", "a/b", "%2e%2e", "%2F",
            "\x00", "nul\x00byte", "é", "💥", "\ud800", "a" * 5000, "con", "outputs", "ufdl.sqlite3",
            "jwt-signing.key", "<script>", "'; DROP TABLE jobs; --", "Compressed<JSON>",
            "PK<Dataset<Domain<'Image Classification'>>>"]

# Values that have broken servers: beyond 64 bits, not finite, not valid Unicode, empty, huge.
HOSTILE = [float("nan"), float("inf"), float("-inf"), 1e308, -0.0, *HUGE_INTS, "\ud800", "", None, True,
           False, 0, -1, [], {}, "a" * 5000, [[[[[]]]]], {"": {"": None}}, "NaN", "1", "true"]
# Non-finite numbers get a branch of their own: JSON has no NaN, but Python's parser accepts it.
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
hostile = non_finite | st.sampled_from(HOSTILE)
scalars = (hostile | st.none() | st.booleans() | st.integers() | st.sampled_from(HUGE_INTS)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
           | st.sampled_from(ODD_TEXT))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                         max_size=5),
    max_leaves=8)


def encode(value: Any) -> bytes:
    """JSON text as a lenient encoder writes it: NaN, Infinity and lone surrogates included."""
    return json.dumps(value, allow_nan=True, ensure_ascii=True).encode()


GARBAGE_BODIES = [b"", b"{", b"[" * 5000, b"{" * 100 + b"}" * 100, b'{"a": 1,}', b"\xff\xfe\x00",
                  b"null", b"[]", b'"text"', b"1e999", b"NaN", b'{"a": NaN}', b"-" + b"9" * 5000,
                  b'{"\\ud800": "\\udfff"}', b"\x00" * 10]


def objects(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with some of `keys` (each with any value) and, now and then, unknown keys."""
    return st.builds(lambda known, extra: {**known, **extra},
                     st.fixed_dictionaries({}, optional={k: json_values for k in keys}),
                     st.dictionaries(st.text(max_size=12), json_values, max_size=2))


def bodies(keys: list[str]) -> st.SearchStrategy[bytes]:
    """A request body: a plausible object, any JSON, or bytes that are not JSON at all."""
    return st.one_of(objects(keys).map(encode), json_values.map(encode),
                     st.sampled_from(GARBAGE_BODIES), st.binary(max_size=64))


def paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where a value can be bent: every key of every object in it, at any depth."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    return found


def replaced(base: Any, path: tuple[str, ...], value: Any, drop: bool) -> Any:
    """A copy of `base` with the value at `path` replaced by `value`, or left out when `drop`."""
    copy = json.loads(json.dumps(base))
    parent = copy
    for key in path[:-1]:
        parent = parent[key]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return copy


def variants(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A valid body with one field, at any depth, replaced by a hostile value or left out."""
    return st.builds(replaced, st.just(base), st.sampled_from(paths(base)),
                     non_finite | hostile | json_values,
                     st.sampled_from([False, False, False, True])).map(encode)


def _shaped(value: Any) -> st.SearchStrategy[Any]:
    if isinstance(value, dict) and value:
        return st.fixed_dictionaries({k: _shaped(v) for k, v in value.items()})
    # Most leaves keep their valid value, so that a bent one is what the route gets to check.
    return st.sampled_from([True, True, True, False]).flatmap(
        lambda keep: st.just(value) if keep else hostile | json_values)


def shaped(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A valid body's shape with any of its leaves, at once, replaced by hostile values."""
    return _shaped(base).map(encode)


# -- filter specifications ----------------------------------------------------------------

FILTER_FIELDS = sorted({*JOBS.fields, *NODES.fields, *TEMPLATES.fields, *HARDWARE_RESOURCE.fields})
field_names = st.sampled_from(FILTER_FIELDS) | st.text(max_size=12)


def _leaf(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    base = {"type": st.just(kind), "field": field_names}
    optional = {"invert": json_values, "case_insensitive": json_values}
    if kind in ("exact", "compare"):
        base["value"] = json_values
    if kind == "compare":
        base["operator"] = st.sampled_from(["<", ">", "<=", ">=", "==", "", "LIKE"])
    if kind == "contains":
        base["sub_string"] = json_values
    return st.fixed_dictionaries(base, optional=optional)


leaves = st.one_of(*(_leaf(k) for k in ("exact", "contains", "isnull", "compare")),
                   st.builds(dict, type=st.text(max_size=8)))
expressions = st.recursive(
    leaves, lambda inner: st.fixed_dictionaries(
        {"type": st.sampled_from(["and", "or"]), "sub_expressions": st.lists(inner, max_size=4)},
        optional={"invert": st.booleans()}),
    max_leaves=12)


def wide(n: int) -> dict[str, Any]:
    return {"type": "or", "sub_expressions": [_leaf_pk(i) for i in range(n)]}


def _leaf_pk(i: int) -> dict[str, Any]:
    return {"type": "exact", "field": "pk", "value": i}


def deep(n: int) -> dict[str, Any]:
    # The deepest SQL a leaf makes, inverted at every level.
    leaf = {"type": "contains", "field": "description", "sub_string": "x", "case_insensitive": True,
            "invert": True}
    expr: dict[str, Any] = leaf
    for _ in range(n):
        expr = {"type": "or", "invert": True, "sub_expressions": [expr, leaf]}
    return expr


# Sizes either side of the bounds, and far past them.
SIZES = [filters.MAX_TERMS - 2, filters.MAX_TERMS, 1000, 3000]
specs = st.fixed_dictionaries({}, optional={
    "expressions": st.one_of(st.lists(expressions, max_size=4), json_values,
                             st.sampled_from(SIZES).map(lambda n: [wide(n)]),
                             st.sampled_from(SIZES).map(lambda n: [_leaf_pk(i) for i in range(n)]),
                             st.sampled_from([filters.MAX_DEPTH, filters.MAX_DEPTH + 1, 500])
                             .map(lambda n: [deep(n)])),
    "order_by": st.lists(st.fixed_dictionaries({}, optional={
        "field": field_names, "ascending": json_values, "nulls_first": json_values}), max_size=20)
    | json_values,
    "include_inactive": json_values,
})


list_bodies = st.one_of(specs.map(encode), bodies(["expressions", "order_by", "include_inactive"]))


# -- path segments -----------------------------------------------------------------------------


def segment(text: str) -> str:
    """A path segment, percent-encoded so that any text can travel in it."""
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


pk_texts = st.one_of(st.integers(0, 20).map(str), st.sampled_from(HUGE_INTS).map(str),
                     st.sampled_from(["-1", "+1", "1.0", "0x1", "١", "1e3", "", " 1", "01"]),
                     st.text(max_size=8))
amounts = st.sampled_from(["0.5", "1.0", "0.000", "1.5", "0", "1", ".5", "1e-05", "0." + "9" * 400,
                           "NaN", "-0.5"])
# Raw segments go out unencoded: a client's own "..", "%2e%2e" and "%2F" reach the router as sent.
raw_segments = st.sampled_from(["..", ".", "%2e%2e", "%2F", "%00", "%2e%2e%2f%2e%2e", "%ff", "model",
                                "json"])
names = st.one_of(st.sampled_from(ODD_TEXT).map(segment), st.text(max_size=30).map(segment),
                  raw_segments, st.sampled_from(["model", "log", "json", "JSON"]))
