"""The progress pump: latest wins, one call in flight, one per interval, the last one always lands."""

from __future__ import annotations

import asyncio
from typing import Any

from ufdl_node.daemon.progress import ProgressPump


class SlowServer:
    """Records progress calls; each takes `delay_s`, and tracks how many overlap."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def send(self, amount: float, data: dict[str, Any]) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            self.calls.append(amount)
        finally:
            self.in_flight -= 1


async def test_reports_are_coalesced_one_call_at_a_time():
    """A burst of reports becomes a few calls, never two at once, the latest value winning."""
    server = SlowServer(0.05)
    pump = ProgressPump(server.send, interval_s=0.02)
    pump.start()
    loop = asyncio.get_running_loop()
    began = loop.time()
    for i in range(1, 1001):
        pump.report(i / 1000, {})
        if i % 100 == 0:
            await asyncio.sleep(0.03)  # the handler working between bursts
    reporting_s = loop.time() - began
    await pump.close(flush=True)
    assert server.max_in_flight == 1
    # One call at a time, each at least 0.05 s: at most one per 0.05 s while reports came,
    # plus the last (load slows the calls down, never adds any).
    assert 2 <= len(server.calls) <= reporting_s / 0.05 + 2, (server.calls, reporting_s)
    assert server.calls == sorted(server.calls) and server.calls[-1] == 1.0


async def test_close_lets_the_call_in_flight_land(wait_for):
    """Closing while the last report is on its way waits for it instead of cutting it off."""
    server = SlowServer(0.2)
    pump = ProgressPump(server.send, interval_s=0.0)
    pump.start()
    pump.report(1.0, {"done": True})
    await wait_for(lambda: server.in_flight == 1, interval_s=0.005, what="the call to be in flight")
    await pump.close(flush=True)
    assert server.calls == [1.0]


async def test_close_without_flush_drops_pending_reports(wait_for):
    """A job that was cancelled sends no more progress: close(flush=False) drops what is pending."""
    server = SlowServer(0.2)
    pump = ProgressPump(server.send, interval_s=10)
    pump.start()
    pump.report(0.1, {})
    await wait_for(lambda: server.in_flight == 1, interval_s=0.005, what="the first call to be in flight")
    pump.report(0.2, {})
    await pump.close(flush=False)
    assert server.calls == [] and server.in_flight == 0


async def test_handler_never_waits_on_report():
    """report() returns at once even while the server is slow."""
    server = SlowServer(1.0)
    pump = ProgressPump(server.send, interval_s=0.0)
    pump.start()
    loop = asyncio.get_running_loop()
    began = loop.time()
    for i in range(10000):
        pump.report(i / 10000, {})
    # Waiting on the server even once takes 1 s; the bound is slack for a loaded machine.
    assert loop.time() - began < 5
    await pump.close(flush=False)


async def test_a_pump_without_reports_sends_nothing():
    """A job that reports nothing: close(flush=True) makes no call."""
    server = SlowServer(0.0)
    pump = ProgressPump(server.send, interval_s=0.0)
    pump.start()
    await pump.close(flush=True)
    assert server.calls == []


async def test_a_report_after_close_goes_nowhere():
    """A handler that outlived its job reports again: no call is made for a job that ended."""
    server = SlowServer(0.0)
    pump = ProgressPump(server.send, interval_s=0.0)
    pump.start()
    await pump.close(flush=True)
    pump.report(0.5, {})
    await asyncio.sleep(0.05)  # a task made by the report would have sent by now
    assert server.calls == []


async def test_a_pump_closed_before_its_first_send_sends_nothing():
    """A job that ends within the first send's delay costs no progress call (its finish shows it done)."""
    server = SlowServer(0.0)
    pump = ProgressPump(server.send, interval_s=1.0)
    pump.start()
    pump.report(0.5, {})
    pump.report(1.0, {})
    await asyncio.sleep(0.05)  # well within min(interval_s, FIRST_SEND_DELAY_S)
    await pump.close(flush=False, cancel=False)
    assert server.calls == []


async def test_close_without_cancel_lets_the_call_in_flight_land_and_drops_the_rest(wait_for):
    """close(flush=False, cancel=False), as before a finish: the call on its way lands, nothing more goes."""
    server = SlowServer(0.2)
    pump = ProgressPump(server.send, interval_s=0.0)
    pump.start()
    pump.report(0.4, {})
    await wait_for(lambda: server.in_flight == 1, interval_s=0.005, what="the call to be in flight")
    pump.report(0.9, {})
    await pump.close(flush=False, cancel=False)
    assert server.calls == [0.4]
