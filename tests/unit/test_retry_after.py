"""The one Retry-After parser (RFC 9110 10.2.3) and the one rule that waits by it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from ufdl_node.backoff import Backoff, retry_delay
from ufdl_node.errors import ServerFault, ServerUnavailable
from ufdl_node.transport import parse_retry_after

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), ("0", 0.0), (" 7 ", 7.0), ("0042", 42.0),
])
def test_delta_seconds(value: str, seconds: float) -> None:
    """Digits are seconds to wait."""
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize("value", [
    "Wed, 21 Oct 2015 07:28:30 GMT",  # IMF-fixdate, the preferred form
    "Wednesday, 21-Oct-15 07:28:30 GMT",  # the obsolete RFC 850 form
    "Wed Oct 21 07:28:30 2015",  # the obsolete asctime form (no zone: UTC)
])
def test_an_http_date_is_the_seconds_until_it(value: str) -> None:
    """Each of the three HTTP-date forms gives the seconds from now until that date."""
    assert parse_retry_after(value, NOW) == 30.0


def test_a_date_in_the_past_means_at_once() -> None:
    """A date already passed is no wait, never a negative one."""
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", NOW) == 0.0


def test_without_now_a_date_is_measured_from_the_clock() -> None:
    """Without `now`, the wait is measured from the current time."""
    when = (datetime.now(timezone.utc) + timedelta(seconds=100)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    seconds = parse_retry_after(when)
    assert seconds is not None and 95 <= seconds <= 100


@pytest.mark.parametrize("value", [
    None, "", "   ", "soon", "-1", "+5", "1.5", "5s", "1e3", "Wed, 99 Foo 2015 07:28:00 GMT",
    "Wed, 21 Oct 2015", "12:00:00",
])
def test_bad_values_are_none(value: str | None) -> None:
    """Anything that is neither delta-seconds nor an HTTP date is ignored (None): the
    caller's backoff decides instead."""
    assert parse_retry_after(value, NOW) is None


def test_retry_delay_waits_the_servers_retry_after_capped() -> None:
    """The server's Retry-After is waited as it is, capped at the backoff's cap; without one
    the backoff's own delay is used."""
    fault = ServerFault("get", "HTTP 503", status=503, retry_after_s=7.0)
    assert retry_delay(fault, Backoff(0.1, 10.0)) == 7.0
    assert retry_delay(fault, Backoff(0.1, 3.0)) == 3.0
    assert retry_delay(ServerUnavailable("get", "down"), Backoff(0.5, 10.0, jitter=False)) == 0.5


def test_retry_delay_never_passes_the_deadline() -> None:
    """Under a deadline, Retry-After is cut to what is left, and None once it has passed."""
    fault = ServerFault("get", "HTTP 503", status=503, retry_after_s=7.0)
    delay = retry_delay(fault, Backoff(0.1, 10.0, deadline_s=2.0))
    assert delay is not None and delay <= 2.0
    assert retry_delay(fault, Backoff(0.1, 10.0, deadline_s=0.0)) is None
