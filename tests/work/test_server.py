"""ServerAccess against a loopback UFDL server: JSON, downloads, retries and their bounds."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from ufdl_node.backoff import Backoff, retry_delay
from ufdl_node.errors import AuthenticationFailed, JobFailed, NotFound, ServerFault
from ufdl_node.work.server_access import _settled

from .conftest import Harness, sha


async def test_json_call_returns_the_record(ufdl: Harness) -> None:
    """A GET answers the server's JSON, with the auth headers sent."""
    ufdl.state.add_dataset(3, "dogs", {"a.jpg": b"A"})
    record = await ufdl.access().get("/v1/datasets/3")
    assert record["name"] == "dogs" and record["files"] == {"a.jpg": sha(b"A")}


async def test_a_refusal_is_raised_as_its_typed_error_without_retry(ufdl: Harness) -> None:
    """A 404 is NotFound at once: no second request."""
    with pytest.raises(NotFound):
        await ufdl.access().get("/v1/datasets/42")
    assert ufdl.state.count("GET", r"^/v1/datasets/42$") == 1


async def test_a_refused_password_is_authentication_failed(ufdl: Harness) -> None:
    """A 401 the transport cannot renew (the password is refused) comes back as
    AuthenticationFailed, not retried."""
    with pytest.raises(AuthenticationFailed):
        await ufdl.access(password="wrong").get("/v1/datasets/1")
    assert ufdl.state.count("GET", r"^/v1/datasets/1$") == 0


async def test_5xx_is_retried_until_the_server_answers(ufdl: Harness) -> None:
    """Three 500s, then the record: the call succeeds on the fourth request."""
    ufdl.state.add_dataset(1, "d", {"a.jpg": b"A"})
    ufdl.state.fail("GET", r"^/v1/datasets/1$", times=3)
    record = await ufdl.access().get("/v1/datasets/1")
    assert record["pk"] == 1
    assert ufdl.state.count("GET", r"^/v1/datasets/1$") == 4


async def test_429_is_retried(ufdl: Harness) -> None:
    """A 429 is transient: the next try gets the record."""
    ufdl.state.add_dataset(1, "d", {"a.jpg": b"A"})
    ufdl.state.fail("GET", r"^/v1/datasets/1$", times=1, status=429, retry_after="0")
    assert (await ufdl.access().get("/v1/datasets/1"))["pk"] == 1
    assert ufdl.state.count("GET", r"^/v1/datasets/1$") == 2


async def test_retry_after_is_reported_and_sets_the_wait(ufdl: Harness) -> None:
    """The one HTTP path carries Retry-After on the fault, and the one retry rule waits that
    long, capped by the backoff's cap."""
    ufdl.state.fail("GET", r"^/v1/datasets/1$", times=1, status=503, retry_after="7")
    access = ufdl.access()
    with pytest.raises(ServerFault) as caught:
        await access.io.request("GET", "/v1/datasets/1")
    assert caught.value.retry_after_s == 7.0
    assert retry_delay(caught.value, Backoff(0.01, 10.0)) == 7.0
    assert retry_delay(caught.value, Backoff(0.01, 5.0)) == 5.0


async def test_call_marked_not_to_retry_fails_at_the_first_fault(ufdl: Harness) -> None:
    """retry=False: one 500 is a JobFailed at once, with a single request made."""
    ufdl.state.add_dataset(1, "d", {"a.jpg": b"A"})
    ufdl.state.fail("POST", "/categories$", times=1)
    with pytest.raises(JobFailed, match=r"^dataset 1: add labels: \S+: HTTP 500"):
        await ufdl.access().json("POST", "/v1/classify/datasets/1/categories",
                                 json={"images": ["a.jpg"], "categories": ["x"]},
                                 what="dataset 1: add labels", retry=False)
    assert ufdl.state.count("POST", "/categories$") == 1


async def test_5xx_beyond_retry_s_fails_the_job_with_one_line(ufdl: Harness) -> None:
    """A server that keeps answering 500 fails the call as JobFailed after retry_s."""
    ufdl.state.add_dataset(1, "d", {"a.jpg": b"A"})
    ufdl.state.fail("GET", r"^/v1/datasets/1$", times=10**6)
    with pytest.raises(JobFailed) as caught:
        await ufdl.access(retry_s=0.2).get("/v1/datasets/1", what="dataset 1")
    message = str(caught.value)
    assert message.startswith("dataset 1: the server did not answer properly for 0.2 s")
    assert "HTTP 500" in message and "\n" not in message
    assert ufdl.state.count("GET", r"^/v1/datasets/1$") >= 2


async def test_unreachable_server_fails_within_retry_s(ufdl: Harness) -> None:
    """Connection refused is transient too: retried, then JobFailed naming the call."""
    access = ufdl.access(retry_s=0.2)
    access.io.transport.base_url = "http://127.0.0.1:9"  # type: ignore[attr-defined]  # nothing listens
    with pytest.raises(JobFailed, match="cannot reach"):
        await access.get("/v1/datasets/1", what="dataset 1")


async def test_download_streams_to_dest(ufdl: Harness, tmp_path: Path) -> None:
    """A file's bytes land in dest, verified by its sha256."""
    data = b"x" * 300_000
    ufdl.state.add_dataset(1, "d", {"big.jpg": data})
    dest = tmp_path / "out" / "big.jpg"
    got = await ufdl.access().download("GET", "/v1/datasets/1/files/big.jpg", dest, sha256=sha(data))
    assert got == dest and dest.read_bytes() == data


async def test_cut_download_is_retried_and_the_partial_never_used(ufdl: Harness, tmp_path: Path) -> None:
    """Two transfers cut half-way, then a whole one: dest holds the whole file, no .part is left."""
    data = bytes(range(256)) * 4000
    ufdl.state.add_dataset(1, "d", {"a.jpg": data})
    ufdl.state.cut("GET", r"/files/a\.jpg$", times=2)
    dest = tmp_path / "a.jpg"
    await ufdl.access().download("GET", "/v1/datasets/1/files/a.jpg", dest)
    assert dest.read_bytes() == data
    assert ufdl.state.count("GET", r"/files/a\.jpg$") == 3
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg"]


async def test_cut_chunked_download_is_retried(ufdl: Harness, tmp_path: Path) -> None:
    """A chunked body cut mid-way (no length to check) is noticed and fetched again."""
    data = b"q" * 200_000
    ufdl.state.add_dataset(1, "d", {"a.jpg": data})
    ufdl.state.cut("GET", r"/files/a\.jpg$", times=1, chunked=True)
    dest = tmp_path / "a.jpg"
    await ufdl.access().download("GET", "/v1/datasets/1/files/a.jpg", dest)
    assert dest.read_bytes() == data and ufdl.state.count("GET", r"/files/a\.jpg$") == 2


@pytest.mark.parametrize("in_place", [False, True])
async def test_cut_download_beyond_retry_s_leaves_no_file(ufdl: Harness, tmp_path: Path,
                                                          in_place: bool) -> None:
    """Every transfer cut: JobFailed, and neither dest nor a partial file exists (also when
    dest is written in place)."""
    ufdl.state.add_dataset(1, "d", {"a.jpg": b"y" * 100_000})
    ufdl.state.cut("GET", r"/files/a\.jpg$", times=10**6)
    with pytest.raises(JobFailed, match="cut off"):
        await ufdl.access(retry_s=0.2).download("GET", "/v1/datasets/1/files/a.jpg", tmp_path / "a.jpg",
                                                in_place=in_place)
    assert list(tmp_path.iterdir()) == []


async def test_in_place_download_is_retried_into_the_same_name(ufdl: Harness, tmp_path: Path) -> None:
    """in_place: a cut transfer's file is removed, the next try makes it anew; read-only."""
    data = bytes(range(256)) * 1000
    ufdl.state.add_dataset(1, "d", {"a.jpg": data})
    ufdl.state.cut("GET", r"/files/a\.jpg$", times=1)
    dest = tmp_path / "a.jpg.unsynced"
    await ufdl.access().download("GET", "/v1/datasets/1/files/a.jpg", dest, sha256=sha(data), in_place=True)
    assert dest.read_bytes() == data and dest.stat().st_mode & 0o222 == 0
    assert [p.name for p in tmp_path.iterdir()] == ["a.jpg.unsynced"]


@pytest.mark.parametrize("in_place", [False, True])
async def test_wrong_sha256_fails_after_three_tries_and_keeps_nothing(ufdl: Harness, tmp_path: Path,
                                                                      in_place: bool) -> None:
    """Bytes that never match the promised sha256 fail the job; no file is kept."""
    ufdl.state.add_dataset(1, "d", {"a.jpg": b"real"})
    with pytest.raises(JobFailed, match="other bytes than promised 3 times"):
        await ufdl.access().download("GET", "/v1/datasets/1/files/a.jpg", tmp_path / "a.jpg",
                                     sha256=sha(b"fake"), in_place=in_place)
    assert ufdl.state.count("GET", r"/files/a\.jpg$") == 3
    assert list(tmp_path.iterdir()) == []


async def test_download_above_max_bytes_fails(ufdl: Harness, tmp_path: Path) -> None:
    """A body longer than max_bytes fails the job and leaves no file."""
    ufdl.state.add_dataset(1, "d", {"a.jpg": b"z" * 5000})
    with pytest.raises(JobFailed, match="limit of 1000"):
        await ufdl.access().download("GET", "/v1/datasets/1/files/a.jpg", tmp_path / "a.jpg", max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


async def test_a_cancelled_thread_call_ends_after_its_thread() -> None:
    """A download's thread call, cancelled while the thread works: the cancel completes only
    once the thread is done, so that no thread still writes into a file being cleaned up."""
    started, release = threading.Event(), threading.Event()
    finished: list[int] = []

    def work() -> None:
        started.set()
        assert release.wait(10)
        finished.append(1)

    call = asyncio.ensure_future(_settled(work))
    assert await asyncio.to_thread(started.wait, 10)
    call.cancel()
    await asyncio.sleep(0.1)
    assert not call.done()  # still waiting for the thread
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert finished == [1]
