"""Listings to a pipe are plain lines, and `--json` is one JSON document: `jobs`, `templates list`,
`handlers`; `print_rows` itself on a terminal and off one."""

from __future__ import annotations

import asyncio
import io
import json

from rich.console import Console

from ufdl_node.cli import terminal
from ufdl_node.client import UfdlClient

from .conftest import ADMIN_PW, ufdl_node
from .test_user_errors import DATASET, as_admin, import_demo_train

BOX = set("│┃─━┏┓┗┛┡┩└┘┌┐╇╈")


async def test_jobs_and_templates_list_print_plain_lines_and_json(server):
    template = await import_demo_train(server.url)
    async with UfdlClient(server.url, "admin", ADMIN_PW) as admin:
        job = await admin.create_job(template, DATASET, {}, description="a\ttab and\nbreak")
    env = as_admin(server.url)
    jobs = await asyncio.to_thread(ufdl_node, "jobs", env=env)
    assert jobs.returncode == 0, jobs.stderr
    assert not BOX & set(jobs.stdout), jobs.stdout
    lines = jobs.stdout.splitlines()
    assert lines[0] == "job\ttemplate\tphase\tnode\tdescription\terror", lines
    assert lines[1].split("\t")[:3] == [str(job["pk"]), "demo_train v1", "CREATED"], lines
    assert len(lines) == 2 and len(lines[1].split("\t")) == 6, lines

    listed = await asyncio.to_thread(ufdl_node, "jobs", "--json", env=env)
    records = json.loads(listed.stdout)
    assert [(r["pk"], r["phase"]) for r in records] == [(job["pk"], "CREATED")], records

    templates = await asyncio.to_thread(ufdl_node, "templates", "list", env=env)
    assert not BOX & set(templates.stdout), templates.stdout
    rows = [line.split("\t") for line in templates.stdout.splitlines()]
    assert rows[0] == ["name", "version", "pk", "type", "parameters"]
    assert rows[1][:3] == ["demo_train", "1", str(template)], rows
    as_json = json.loads((await asyncio.to_thread(ufdl_node, "templates", "list", "--json",
                                                  env=env)).stdout)
    assert [(t["name"], t["pk"]) for t in as_json] == [("demo_train", template)], as_json


def test_handlers_json_is_one_document():
    result = ufdl_node("handlers", "--json")
    assert result.returncode == 0, result.stderr
    names = {row["name"] for row in json.loads(result.stdout)}
    assert "demo_train" in {t for row in json.loads(result.stdout) for t in row["templates"]}, names


def test_print_rows_draws_a_table_only_on_a_terminal(monkeypatch, capsys):
    shown = io.StringIO()
    monkeypatch.setattr(terminal, "make_console",
                        lambda stderr=False: Console(file=shown, force_terminal=True, width=100))
    terminal.print_rows([{"a": 1, "b": None}], ("a", "b"), title="t")
    assert BOX & set(shown.getvalue()) and capsys.readouterr().out == ""
    monkeypatch.undo()
    terminal.print_rows([{"a": 1, "b": None}], ("a", "b"))
    terminal.print_rows([], ("a",), empty="none here")
    terminal.print_rows([], ("a",), as_json=True)
    assert capsys.readouterr().out == "a\tb\n1\t\nnone here\n[]\n"


def test_a_reader_that_goes_away_gets_no_error_line() -> None:
    """`ufdl-node ... | head -1`: once the reader has closed the pipe, the command stops without a
    'Broken pipe' line or a traceback on stderr (exit 1, the output being cut short)."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        done = subprocess.run([sys.executable, "-m", "ufdl_node", "completion", "bash"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == 1, (done.returncode, done.stderr)
