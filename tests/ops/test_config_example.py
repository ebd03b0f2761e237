"""config/ufdl-node.toml: it loads, and it documents every setting with its default."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import PydanticUndefined

from ufdl_node.settings import NodeSettings, load_settings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef,unused-ignore]

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "ufdl-node.toml"


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("UFDL_NODE_"):
            monkeypatch.delenv(name)


def _commented_settings() -> dict[str, Any]:
    """The values on '# name = value' lines that name a setting."""
    values: dict[str, Any] = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^# (\w+) = (.+)$", line)
        if m and m.group(1) in NodeSettings.model_fields:
            values[m.group(1)] = tomllib.loads(f"v = {m.group(2)}")["v"]
    return values


def test_example_config_loads() -> None:
    """The example parses and validates as NodeSettings, with its active lines applied."""
    settings = load_settings(NodeSettings, EXAMPLE)
    assert settings.server_url == "https://ufdl.example.org"
    assert settings.status_listen == "127.0.0.1:9100"


def test_example_config_mentions_every_setting() -> None:
    """Each NodeSettings field has a line in the example, so it cannot fall behind."""
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [name for name in NodeSettings.model_fields
               if not re.search(rf"^#? ?(\[{name}[.\]]|{name} = )", text, re.MULTILINE)]
    assert missing == []


def test_commented_values_are_the_defaults() -> None:
    """'# name = value' shows the real default wherever the default can be written in TOML."""
    wrong = {}
    for name, value in _commented_settings().items():
        default = NodeSettings.model_fields[name].default
        if default is None or default is PydanticUndefined:
            continue  # unset or computed: the comment above the line says so
        if value != default:
            wrong[name] = (value, default)
    assert wrong == {}


def test_every_commented_value_is_valid() -> None:
    """Uncommenting any line (each alone) still gives valid settings."""
    for name, value in _commented_settings().items():
        NodeSettings(**{name: value})


def test_example_holds_no_active_secret() -> None:
    """The shipped example sets no password (it is read from a file or a credential)."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert "password" not in data and "password_file" not in data
