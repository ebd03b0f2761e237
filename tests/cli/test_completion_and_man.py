"""Shell completion and the man page, generated from the parser, as a shell and man read them."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from ufdl_node.cli.extras import every_command, walk
from ufdl_node.cli.main import build_parser

from .conftest import ufdl_node


@pytest.fixture(scope="module")
def bash_script() -> str:
    result = ufdl_node("completion", "bash")
    assert result.returncode == 0, result.stderr
    return result.stdout


def complete(script: str, line: str) -> list[str]:
    """What bash offers for `line` (the cursor at its end), through the generated function."""
    words = line.split(" ")
    program = script + ("COMP_WORDS=(" + " ".join(f"'{w}'" for w in words) + ")\n"
                        f"COMP_CWORD={len(words) - 1}\n"
                        '_ufdl_node\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completes_commands(bash_script):
    """`ufdl-node ch<Tab>` offers check-config."""
    assert complete(bash_script, "ufdl-node ch") == ["check-config"]


def test_bash_completes_a_commands_options(bash_script):
    """`ufdl-node dry-run --han<Tab>` offers --handlers-dir, not the hidden alias."""
    assert complete(bash_script, "ufdl-node dry-run --han") == ["--handlers-dir"]


def test_bash_completes_nested_commands_past_option_values(bash_script):
    """`templates import --config FILE --<Tab>` knows it is in `templates import`."""
    offered = complete(bash_script, "ufdl-node templates import --config c.toml --h")
    assert offered == ["--help", "--handlers-dir"]
    assert complete(bash_script, "ufdl-node templates i") == ["import"]


def test_bash_completes_choices(bash_script):
    """`run --log-level <Tab>` offers the levels; `completion <Tab>` the shells."""
    assert complete(bash_script, "ufdl-node run --log-level ") == ["debug", "info", "warning", "error"]
    assert complete(bash_script, "ufdl-node completion ") == ["bash", "zsh", "-h", "--help"]


def test_zsh_script_has_a_function_for_every_command():
    """The zsh script defines a completion function per command and sub-command."""
    script = ufdl_node("completion", "zsh").stdout
    assert script.startswith("#compdef ufdl-node\n")
    for command in every_command(walk(build_parser()))[1:]:
        name = "_ufdl_node_" + "_".join(p.replace("-", "_") for p in command.path[1:])
        assert f"\n{name}() {{" in script, name


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_parses():
    """zsh -n accepts the generated script."""
    script = ufdl_node("completion", "zsh").stdout
    result = subprocess.run(["zsh", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_man_page_names_every_command_and_option():
    """--help-man prints a roff page with a section per command listing each of its options."""
    result = ufdl_node("--help-man")
    assert result.returncode == 0
    page = result.stdout
    assert page.startswith(".TH UFDL\\-NODE 1 ")
    for command in every_command(walk(build_parser()))[1:]:
        if command.children:
            continue
        assert f".SS {' '.join(command.path).replace('-', chr(92) + '-')}\n" in page, command.path
        for action in command.options:
            if isinstance(action, argparse._HelpAction):
                continue  # -h is every command's; the page leaves it out
            for option in action.option_strings:
                assert option.replace("-", "\\-") in page, (command.path, option)
    assert ".SH EXIT STATUS" in page


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_man_page_renders_without_warnings():
    """groff renders the page with every warning on and says nothing."""
    page = ufdl_node("--help-man").stdout
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr
