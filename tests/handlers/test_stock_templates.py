"""Every stock UFDL template has a handler on ufdl-node, declared as the real server declares it.

``stock_templates.json`` is the real server's 39 stock templates as a running backend lists them
(``/v1/job-templates``, 2026-12): each one's contract type and parameters (types, defaults; a
long default such as a ``body`` by the sha256 of its JSON). The shipped definitions and
handlers must declare exactly those, so that a template imported from ufdl-node
(``templates import``) or a job of the real server's template runs the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ufdl_node.api.definitions import load_definition
from ufdl_node.registry import Registry
from ufdl_node.settings import SHIPPED_HANDLERS_DIR

STOCK: dict[str, Any] = json.loads((Path(__file__).with_name("stock_templates.json")).read_text())
DOCKER_D = SHIPPED_HANDLERS_DIR / "docker.d"
ROOT = Path(__file__).resolve().parents[2]


def test_the_stock_list_is_the_real_servers() -> None:
    assert len(STOCK) == 39
    kinds = [entry["type"].split("<", 1)[0] for entry in STOCK.values()]
    assert (kinds.count("Train"), kinds.count("Predict")) == (26, 13)


def test_handlers_json_lists_every_stock_template_with_default_settings(tmp_path: Path) -> None:
    """`ufdl-node handlers --json` with the default settings (no config file, no environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    env["PYTHONPATH"] = str(ROOT)
    reply = subprocess.run(
        [sys.executable, "-m", "ufdl_node", "handlers", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reply.returncode == 0, reply.stderr
    listed = {t for h in json.loads(reply.stdout) for t in h["templates"]}
    assert sorted(set(STOCK) - listed) == []


def declared_as_stock(parameters: dict[str, Any]) -> dict[str, Any]:
    """Each parameter's types and default, as ``stock_templates.json`` writes them (a definition
    writes a null default as ``default_type = "Nothing"``: TOML has no null)."""
    result = {}
    for name, spec in parameters.items():
        entry: dict[str, Any] = {"types": list(spec["types"])}
        if "default" in spec:
            entry["default"] = digest(spec["default"])
        elif spec.get("default_type") == "Nothing":
            entry["default"] = None
        result[name] = entry
    return result


def digest(value: Any) -> Any:
    text = json.dumps(value, sort_keys=True)
    return value if len(text) <= 120 else {"sha256": hashlib.sha256(text.encode()).hexdigest()}


DEFINITIONS = sorted(p for p in DOCKER_D.glob("*.toml") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", DEFINITIONS, ids=[p.stem for p in DEFINITIONS])
def test_each_definition_declares_the_stock_parameters_and_contract(path: Path) -> None:
    config = load_definition(path)  # the handler's own reading, `extends` merged
    name = str(config.get("template") or path.stem)
    assert name in STOCK, f"{name} is no stock template"
    stock = STOCK[name]
    assert declared_as_stock(config.get("parameters", {})) == stock["parameters"]
    job_type, (name_, version) = config["job_type"], config["framework"].split(":")
    model = f"Model<Domain<'{config['domain']}'>, Framework<'{name_}', '{version}'>>"
    assert stock["type"] == f"{job_type}<{model.removeprefix('Model<')}"
    if job_type == "Predict":
        assert config["inputs"]["model"] == f"JobOutput<{model}>"
    else:
        assert next(o for o in config["outputs"] if o["name"] == "model")["type"] in ("Model", model)
    if "store_predictions" in stock["parameters"]:
        written = config.get("predictions", {})
        assert (written.get("store"), written.get("clear")) == ("store_predictions", "clear_dataset")


def test_weka_handlers_declare_the_stock_parameters() -> None:
    registry = Registry.load([SHIPPED_HANDLERS_DIR], entry_points=False)
    for name in ("weka_spec_class_train", "weka_spec_class_predict"):
        spec = registry.for_template(name, 1)
        assert spec is not None and spec.description is not None
        assert declared_as_stock(spec.description.template_parameters()) == STOCK[name]["parameters"]
