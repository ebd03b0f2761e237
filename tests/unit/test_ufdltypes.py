"""The server's type names (ufdl_node.ufdltypes) and the command line's typing of values (cliargs)."""

from __future__ import annotations

from typing import Any

import pytest

from ufdl_node.cli.args import typed_value
from ufdl_node.ufdltypes import UfdlTypeError, canonical, contract_type, fits, parse_type

DOCKER = "DockerImage<Domain<'Image Classification'>, Framework<'mmclassification', '0.25.0'>>"


@pytest.mark.parametrize("text", ["int", "Array<str>", "Array<int, 2>", f"Name<{DOCKER}>",
                                  "PK<Dataset<Domain<'Image Classification'>>>", "JSON", "Nothing",
                                  "JobOutput<Model<Domain<'Speech'>, Framework<'coqui_stt', '1.4.0'>>>"])
def test_the_servers_type_names_parse_and_print_back(text: str) -> None:
    """Stock templates' types parse, and print back as written."""
    assert str(parse_type(text)) == text


@pytest.mark.parametrize("text, problem", [("Integer", "the server calls it int"), ("Foo<int>", "'Foo'"),
                                           ("Array<int", "bracketed"), ("PK<>", "empty argument"),
                                           ("Array<str>>", "unbalanced")])
def test_other_types_are_one_line_errors(text: str, problem: str) -> None:
    with pytest.raises(UfdlTypeError, match=problem):
        parse_type(text)


def test_old_names_translate_anywhere_in_a_type() -> None:
    assert [canonical(t) for t in ("Integer", "Array<String>", "Float", "Boolean")] == \
        ["int", "Array<str>", "float", "bool"]


def test_a_contract_names_its_domain_and_framework() -> None:
    assert contract_type("Train<Domain<'Image Classification'>, Framework<'x', '1'>>").name == "Train"
    with pytest.raises(UfdlTypeError, match="unknown contract 'Fit'"):
        contract_type("Fit<Domain<'Speech'>>")


@pytest.mark.parametrize("type_, good, bad", [
    ("int", [3, -1], [3.5, True, "3"]), ("float", [1, 1.5], [True, "1", float("inf")]),
    ("bool", [True], [1, "true"]), ("str", ["a"], [1]), ("Nothing", [None], [0]),
    ("Array<str>", [[], ["a"]], [["a", 1], "a"]), ("Array<int, 2>", [[1, 2]], [[1]]),
    ("PK<Dataset>", [0, 4], [-1, "4", True]), (f"Name<{DOCKER}>", ["mmcls"], [4]),
    ("JSON", [{"a": [None]}], []),
])
def test_a_value_fits_its_type(type_: str, good: list[Any], bad: list[Any]) -> None:
    assert all(fits(type_, v) for v in good) and not any(fits(type_, v) for v in bad)


@pytest.mark.parametrize("text, types, expected", [
    ("4", [f"Name<{DOCKER}>", f"PK<{DOCKER}>"], (4, f"PK<{DOCKER}>")),
    ("mmcls", [f"Name<{DOCKER}>", f"PK<{DOCKER}>"], ("mmcls", f"Name<{DOCKER}>")),
    ("3", ["int"], (3, "int")), ("3", ["Integer"], (3, "int")), ("true", ["bool"], (True, "bool")),
    ("3", ["str"], ("3", "str")), ("null", ["JSON"], (None, "JSON")),
    ("x", ["Array<str>", "str"], ("x", "str")),
    ("many", ["int"], None), ("maybe", ["bool"], None),
])
def test_a_command_line_value_takes_the_first_type_it_fits(text: str, types: list[str],
                                                           expected: Any) -> None:
    """JSON first, then text: 4 is a PK where mmcls is a Name; a value that fits nothing is None."""
    assert typed_value(text, types) == expected
