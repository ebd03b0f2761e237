"""Typed inputs and parameters: defaults, job values, const, and bad values."""

from __future__ import annotations

from typing import Any

import pytest

from ufdl_node.api import JobFailed, parse_value, resolve_inputs, resolve_parameters

from .conftest import MakeCtx

TEMPLATE = {
    "epochs": {"types": ["Integer"], "default": 5, "default_type": "Integer", "help": ""},
    "lr": {"types": ["Float"], "default": 0.1, "help": ""},
    "seed": {"types": ["Integer"], "default": 42, "const": True, "help": ""},
    "tag": {"types": ["String"], "help": ""},
}


def test_defaults_are_overlaid_by_job_values(make_ctx: MakeCtx) -> None:
    """Template defaults apply unless the job sets the parameter."""
    ctx = make_ctx(template_params=TEMPLATE, params={"epochs": {"value": 9, "type": "Integer"},
                                                     "tag": {"value": "x", "type": "String"}})
    assert ctx.params == {"epochs": 9, "lr": 0.1, "seed": 42, "tag": "x"}
    assert ctx.parameters["epochs"].raw == 9 and ctx.parameters["lr"].type == "Float"


def test_null_parameter_values_mean_defaults() -> None:
    """parameter_values null gives every default."""
    params = {k: v for k, v in TEMPLATE.items() if k != "tag"}
    assert {k: v.value for k, v in resolve_parameters(params, None).items()} == \
        {"epochs": 5, "lr": 0.1, "seed": 42}


def test_missing_required_parameter_fails() -> None:
    """A parameter without a default that the job does not set fails the job."""
    with pytest.raises(JobFailed, match="parameter 'tag' has no default and the job does not set it"):
        resolve_parameters(TEMPLATE, {})


def test_const_parameter_cannot_be_changed() -> None:
    """A job setting a const parameter to another value fails."""
    with pytest.raises(JobFailed, match="parameter 'seed' is const"):
        resolve_parameters(TEMPLATE, {"tag": {"value": "x", "type": "String"},
                                      "seed": {"value": 1, "type": "Integer"}})


def test_const_parameter_may_repeat_its_default() -> None:
    """A job giving a const parameter its own default is fine."""
    got = resolve_parameters(TEMPLATE, {"tag": {"value": "x", "type": "String"},
                                        "seed": {"value": "42", "type": "Integer"}})
    assert got["seed"].value == 42


def test_type_not_allowed_by_template_fails() -> None:
    """A value typed differently from the template's types fails."""
    with pytest.raises(JobFailed, match="type String is not one of Integer"):
        resolve_parameters(TEMPLATE, {"tag": {"value": "x", "type": "String"},
                                      "epochs": {"value": "3", "type": "String"}})


@pytest.mark.parametrize(("type_", "raw", "value"), [
    ("Integer", 3, 3), ("Integer", "-4", -4), ("Integer", 2.0, 2), ("int", 5, 5),
    ("Float", 1, 1.0), ("Float", "0.25", 0.25),
    ("Boolean", True, True), ("Boolean", "false", False), ("bool", "yes", True),
    ("String", "hi", "hi"),
    ("JSON", {"a": [1]}, {"a": [1]}), ("JSON", '{"a": 1}', {"a": 1}), ("JSON", 3, 3),
    ("PK<Dataset<Domain<'Image Classification'>>>", 12, 12),
    ("PK<Dataset<Domain<'Image Classification'>>>", "12", 12),
    ("PK<Model>", {"pk": 3, "name": "m"}, 3),
])
def test_values_are_parsed_for_their_type(type_: str, raw: Any, value: Any) -> None:
    """Basic UFDL types and PK<...> references give Python values."""
    parsed = parse_value("p", type_, raw)
    assert parsed.value == value and type(parsed.value) is type(value) and parsed.raw == raw


def test_unknown_type_passes_raw_value() -> None:
    """A type the node does not know keeps the raw value."""
    raw = {"blob": "abc"}
    assert parse_value("p", "Compressed<Blob>", raw).value is raw


@pytest.mark.parametrize(("type_", "raw"), [
    ("Integer", "three"), ("Integer", 2.5), ("Integer", True), ("Float", "fast"), ("Float", None),
    ("Boolean", "maybe"), ("Boolean", 1), ("String", 5), ("JSON", "{broken"), ("PK<Dataset>", "x"),
    ("PK<Dataset>", -1),
])
def test_bad_value_fails_with_a_clear_reason(type_: str, raw: Any) -> None:
    """A value that does not fit its type fails the job, naming the parameter and type."""
    with pytest.raises(JobFailed, match=rf"parameter 'p': .* is not .*\(type {type_.replace('<', '.')}"):
        parse_value("p", type_, raw)


def test_inputs_are_typed(make_ctx: MakeCtx) -> None:
    """Job inputs become typed values; a PK<...> input gives its primary key."""
    ctx = make_ctx(inputs={"dataset": {"value": "3", "type": "PK<Dataset<Domain<'Image Classification'>>>"}})
    assert ctx.inputs["dataset"].value == 3


def test_malformed_input_fails() -> None:
    """An input that is not {value, type} fails the job, naming the input."""
    with pytest.raises(JobFailed, match="input 'dataset': expected"):
        resolve_inputs({"dataset": 3})


def test_job_parameter_unknown_to_template_is_kept() -> None:
    """A job value the template does not declare is still typed and passed on."""
    got = resolve_parameters({}, {"extra": {"value": "2", "type": "Integer"}})
    assert got["extra"].value == 2
