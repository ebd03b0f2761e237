"""Logging: secrets never reach a line, job context is bound to every line."""

from __future__ import annotations

import io
import json
import re
import time

import structlog

from ufdl_node import logs


def _json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_registered_password_is_masked_everywhere(monkeypatch):
    """A registered password is masked in the event, in values, and inside nested data."""
    monkeypatch.setattr(logs, "_secrets", {})
    monkeypatch.setattr(logs, "_secret_re", None)
    stream = io.StringIO()
    logs.configure_logging("debug", "json", stream)
    logs.register_secret("hunter2-secret")
    log = logs.get_logger("t")
    log.info("login with hunter2-secret", detail={"note": "pw hunter2-secret"}, items=["hunter2-secret"])
    text = stream.getvalue()
    assert "hunter2-secret" not in text and text.count("***") >= 3, text


def test_secret_keys_are_masked_whatever_their_value():
    """Keys named password, token, authorization ... are masked even when never registered."""
    stream = io.StringIO()
    logs.configure_logging("debug", "json", stream)
    logs.get_logger("t").info("call", password="p-unregistered", authorization="Bearer zzz",
                              nested={"token": "t-1"})
    line = _json_lines(stream)[0]
    assert (line["password"], line["authorization"], line["nested"]) == ("***", "***", {"token": "***"})


def test_any_jwt_is_masked_without_registering_it():
    """Anything shaped like a JWT is masked, so refreshed tokens need no registry."""
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ3b3JrZXIifQ.c2lnbmF0dXJl"
    assert logs.scrub(f"Bearer {token} rest") == "Bearer *** rest"


def test_registry_stays_bounded_and_cheap(monkeypatch):
    """Registering many secrets keeps the newest MAX_SECRETS and stays fast."""
    monkeypatch.setattr(logs, "_secrets", {})
    monkeypatch.setattr(logs, "_secret_re", None)
    count = 4 * logs.MAX_SECRETS
    began = time.monotonic()
    for i in range(count):
        logs.register_secret(f"password-number-{i:05d}")
    # Cheap because bounded: the pattern compiled at each registration holds MAX_SECRETS
    # secrets at most (unbounded, it would hold every one so far: quadratic). Asked of the
    # pattern rather than timed over 2000 registrations (12 s of the run on a loaded machine);
    # the time bound is slack for a loaded machine (about 0.3 s idle).
    assert time.monotonic() - began < 20
    assert len(logs._secrets) == logs.MAX_SECRETS
    assert logs._secret_re is not None
    assert logs._secret_re.pattern.count(re.escape("password-number-")) == logs.MAX_SECRETS
    assert logs.scrub(f"password-number-{count - 1:05d}") == "***"
    assert logs.scrub("password-number-00000") == "password-number-00000"


def test_job_context_is_bound_to_every_line():
    """Lines logged inside bind_job carry job_pk, template, slot and node; lines after it do not."""
    stream = io.StringIO()
    logs.configure_logging("info", "json", stream)
    log = logs.get_logger("t")
    with logs.bind_job(job_pk=7, template="demo_train", slot=1, node=3):
        log.info("inside")
    log.info("outside")
    inside, outside = _json_lines(stream)
    assert {k: inside[k] for k in ("job_pk", "template", "slot", "node")} == \
        {"job_pk": 7, "template": "demo_train", "slot": 1, "node": 3}
    assert "job_pk" not in outside
    structlog.contextvars.clear_contextvars()


def test_one_line_flattens_and_cuts():
    """one_line joins lines, masks secrets and cuts long text with an ellipsis."""
    text = logs.one_line("a\nb\n" + "x" * 600, limit=50)
    assert "\n" not in text and len(text) == 50 and text.endswith("...")


def test_a_secret_is_masked_only_where_it_stands_whole(monkeypatch):
    """A registered password is masked as a value (in a URL, after '=', in quotes), not inside a longer
    name that merely contains it: the image 127.0.0.1:5000/ufdlx-mmcls keeps its name."""
    monkeypatch.setattr(logs, "_secrets", {})
    monkeypatch.setattr(logs, "_secret_re", None)
    logs.register_secret("mmcls")
    assert logs.scrub("pull 127.0.0.1:5000/ufdlx-mmclsdev") == "pull 127.0.0.1:5000/ufdlx-mmclsdev"
    assert logs.scrub("https://u:mmcls@host/x password=mmcls 'mmcls'") == \
        "https://u:***@host/x password=*** '***'"


def test_a_password_equal_to_its_user_name_is_not_a_secret(monkeypatch):
    """The stock docker records' user `public` with password `public`: the word public stays in every
    log line (the user name is shown anyway); another user's password is masked."""
    monkeypatch.setattr(logs, "_secrets", {})
    monkeypatch.setattr(logs, "_secret_re", None)
    logs.register_secret("public", public="public")
    logs.register_secret("s3cret-pw", public="public")
    assert logs.scrub("a public dataset; user public, password s3cret-pw") == \
        "a public dataset; user public, password ***"
