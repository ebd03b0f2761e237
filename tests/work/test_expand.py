"""${name} expansion of template bodies, as the UFDL job launcher does it."""

from __future__ import annotations

import pytest

from ufdl_node.errors import JobFailed
from ufdl_node.work.expand import expand, placeholders


def test_parameters_are_replaced_by_their_text() -> None:
    """${name} becomes str(value): numbers as written, lists as Python literals."""
    body = "epochs = ${epochs}\nlr = ${lr}\nclasses = ${classes}"
    text = expand(body, {"epochs": 20, "lr": 0.001, "classes": ["cat", "dog"]})
    assert text == "epochs = 20\nlr = 0.001\nclasses = ['cat', 'dog']"


def test_boolean_placeholders_pick_their_text() -> None:
    """${+flag:T} gives T when flag is true; ${-flag:T} when it is false."""
    body = "a${+gpu:--gpu}b${-gpu:--cpu}c"
    assert expand(body, {"gpu": True}) == "a--gpubc"
    assert expand(body, {"gpu": False}) == "ab--cpuc"


def test_array_body_drops_lines_a_flag_empties() -> None:
    """In an Array<str> body a line left empty by a boolean placeholder is dropped."""
    body = ["train.py", "${+verbose:--verbose}", "--epochs=${epochs}", ""]
    assert expand(body, {"verbose": False, "epochs": 3}) == ["train.py", "--epochs=3", ""]


def test_unknown_placeholders_are_named_in_one_line() -> None:
    """Every placeholder without a value is named in the JobFailed."""
    with pytest.raises(JobFailed) as caught:
        expand(["a ${x}", "b ${y} ${x}", "${+z:q}"], {"epochs": 1})
    message = str(caught.value)
    assert message == "body: no value for ${x}, ${y}, ${+z:q}"


def test_plain_placeholder_of_a_boolean_is_refused() -> None:
    """${flag} of a boolean is an error that shows the right spelling."""
    with pytest.raises(JobFailed, match=r"\$\{\+gpu:TEXT\}"):
        expand("${gpu}", {"gpu": True})


def test_extra_values_do_not_override_parameters() -> None:
    """An extra value fills a gap but never replaces a job parameter."""
    text = expand("${epochs} ${dataset_dir}", {"epochs": 5}, {"epochs": 99, "dataset_dir": "/d"})
    assert text == "5 /d"


def test_values_are_not_expanded_twice() -> None:
    """A value that holds ${...} is put in as it is."""
    assert expand("${a}", {"a": "${b}", "b": "no"}) == "${b}"


def test_placeholders_lists_the_names_used() -> None:
    """placeholders() lists each referenced name once, in order."""
    assert placeholders(["${a} ${+b:x}", "${a} ${c}"]) == ["a", "b", "c"]
