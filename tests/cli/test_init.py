"""`ufdl-node init` and the wheel's package data: the example settings and the unit reach pip users."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ufdl_node.settings import NodeSettings, load_settings

from .conftest import REPO, ufdl_node

CONFIG = REPO / "config" / "ufdl-node.toml"
UNIT = REPO / "systemd" / "ufdl-node.service"
PACKAGE_DATA = {"ufdl_node/data/config/ufdl-node.toml": CONFIG,
                "ufdl_node/data/systemd/ufdl-node.service": UNIT}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout, built offline from a copy (no build/ or egg-info in the tree)."""
    source = tmp_path_factory.mktemp("src") / "ufdl-node"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("ufdl_node", "handlers", "config", "systemd"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [built] = out.glob("ufdl_node-*.whl")
    return built


def test_wheel_carries_the_example_settings_and_the_unit(wheel: Path) -> None:
    """The wheel holds config/ufdl-node.toml and systemd/ufdl-node.service, byte for byte."""
    with zipfile.ZipFile(wheel) as zf:
        for member, original in PACKAGE_DATA.items():
            assert zf.read(member) == original.read_bytes(), member


def test_init_from_the_installed_wheel_writes_the_shipped_settings(wheel: Path, tmp_path: Path) -> None:
    """`ufdl-node init`, run from the unpacked wheel (no checkout beside it), writes its packaged copy."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run([sys.executable, "-c", "import ufdl_node.cli.init as m, sys; print(m.__file__); "
                           "from ufdl_node.cli.main import main; "
                           "sys.exit(main(['init', 'out/config.toml']))"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(site)), "the test did not run the wheel's copy"
    assert (tmp_path / "out" / "config.toml").read_bytes() == CONFIG.read_bytes()


def test_wheel_carries_every_package_and_the_shipped_handlers(wheel: Path) -> None:
    """Every package of the tree (cli/ and containers/ included), every built-in handler file and
    every shipped docker definition is in the wheel, where the README says."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for init in (REPO / "ufdl_node").rglob("__init__.py"):
        if "__pycache__" not in init.parts:
            assert init.relative_to(REPO).as_posix() in names, init
    shipped = [p for p in (REPO / "handlers").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.parent.name == "docker.d" for p in shipped)
    for path in shipped:
        assert f"ufdl_node/builtin_handlers/{path.relative_to(REPO / 'handlers').as_posix()}" in names, path


def test_the_installed_wheel_finds_its_handlers_and_docker_definitions(wheel: Path, tmp_path: Path) -> None:
    """From the unpacked wheel (no checkout beside it) `handlers` lists the built-in ones from
    ufdl_node/builtin_handlers and names the docker.d directory, which holds the definitions."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UFDL_NODE_")}
    env |= {"PYTHONPATH": str(site), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "ufdl_node", "handlers"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shipped = site / "ufdl_node" / "builtin_handlers"
    assert done.stdout.splitlines()[0] == f"built-in handlers: {shipped}; the shipped docker " \
        f"definitions: {shipped / 'docker.d'}", done.stdout
    assert f"source: {shipped / 'demo_train.py'}" in done.stdout
    assert sorted(p.name for p in (shipped / "docker.d").glob("*.toml")) == \
        sorted(p.name for p in (REPO / "handlers" / "docker.d").glob("*.toml"))


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    """`ufdl-node init PATH` writes the commented example settings, which load as they stand."""
    target = tmp_path / "etc" / "config.toml"
    done = ufdl_node("init", str(target))
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == CONFIG.read_bytes()
    assert f"wrote {target}" in done.stdout
    assert load_settings(NodeSettings, target).server_url


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    """An existing file is kept; one line on stderr names it and --force; exit 1."""
    target = tmp_path / "config.toml"
    target.write_text("mine = 1\n")
    done = ufdl_node("init", str(target))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"ufdl-node: init: {target} exists; add --force to overwrite it"]
    assert target.read_text() == "mine = 1\n"


def test_init_with_force_overwrites(tmp_path: Path) -> None:
    """With --force an existing file is replaced by the example settings."""
    target = tmp_path / "config.toml"
    target.write_text("mine = 1\n")
    done = ufdl_node("init", str(target), "--force")
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == CONFIG.read_bytes()


def test_init_with_systemd_writes_a_unit_that_runs_this_install(tmp_path: Path) -> None:
    """--systemd writes the unit with ExecStart naming this install's command and the written settings."""
    config, unit = tmp_path / "config.toml", tmp_path / "units" / "ufdl-node.service"
    done = ufdl_node("init", str(config), "--systemd", str(unit))
    assert done.returncode == 0, done.stderr
    [exec_start] = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    command = Path(sys.executable).parent / "ufdl-node"
    assert exec_start == f"ExecStart={command} run --config {config.resolve()}"
    rest = [line for line in unit.read_text().splitlines() if not line.startswith("ExecStart=")]
    assert rest == [line for line in UNIT.read_text().splitlines() if not line.startswith("ExecStart=")]


def test_existing_unit_stops_init_before_writing_the_config(tmp_path: Path) -> None:
    """When the unit exists, init writes nothing at all (not even the settings) without --force."""
    config, unit = tmp_path / "config.toml", tmp_path / "ufdl-node.service"
    unit.write_text("[Unit]\n")
    done = ufdl_node("init", str(config), "--systemd", str(unit))
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and str(unit) in done.stderr
    assert not config.exists()


def test_init_into_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    """A path under a regular file cannot be written: one line naming it, exit 1, no traceback."""
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "config.toml"
    done = ufdl_node("init", str(target))
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "cannot write" in done.stderr
    assert "Traceback" not in done.stderr
