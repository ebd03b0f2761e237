"""The poller: one find-work call offers its jobs to the idle slots.

A job is offered only to a slot whose handler exists and whose hardware meets the
handler's needs; a job that could not start here cools down (backing off per job)
before it is tried again, so that other nodes get it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..api import HandlerSpec
from ..client import UfdlClient
from ..errors import ServerError
from ..logs import get_logger, one_line
from ..metrics import Metrics
from ..protocol import JobView
from ..registry import Registry
from ..settings import NodeSettings
from .backoff import Backoff
from .slot import Slot

COOLDOWN_MAX_S = 600.0  # longest a job that could not start here is left to other nodes
SKIPPED_MAX = 10_000  # jobs remembered as "said once why not": bounded, at worst said again

Launch = Callable[[Slot, JobView, HandlerSpec], None]


class Poller:
    """Finds work for idle slots and hands each job it acquires to `launch`."""

    def __init__(self, client: UfdlClient, registry: Registry, settings: NodeSettings,
                 metrics: Metrics) -> None:
        self.client = client
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.log = get_logger("ufdl_node.supervisor")
        self._skipped: set[int] = set()
        self._cooldown: dict[int, tuple[float, Backoff]] = {}  # job pk -> (retry after, its backoff)
        self._last_idle_ping = time.monotonic()

    async def poll_once(self, idle: list[Slot], launch: Launch, stopping: Callable[[], bool]) -> int:
        """One find-work call offers its jobs to the idle slots; returns how many started.

        One try: the main loop backs off by itself, capped so that a server that comes
        back is seen within poll_backoff_max_s.
        """
        began = time.monotonic()
        jobs = await self.client.find_work(node_id=idle[0].node_pk, attempts=1)
        self.metrics.poll_latency.observe(time.monotonic() - began)
        started = 0
        for job in jobs:
            if not idle or stopping():
                break
            picked = self._pick_slot(job, idle)
            if picked is None:
                continue
            view, slot, spec = picked
            try:
                held = await slot.try_acquire(view)
            except (ServerError, KeyError, TypeError, ValueError) as e:
                self.log.warning("acquire failed", job_pk=view.pk, error=one_line(e))
                continue
            if held is None:
                continue  # lost the race: the next candidate
            idle.remove(slot)
            started += 1
            launch(slot, held, spec)
        return started

    def _pick_slot(self, job: Any, idle: list[Slot]) -> tuple[JobView, Slot, HandlerSpec] | None:
        try:
            view = JobView.parse(job)
            if not view.template_name or view.template_version is None:
                raise ValueError("no template name or version")
        except (KeyError, TypeError, ValueError, AttributeError):
            self.log.warning("skipping a malformed job from the server", job=one_line(job, 200))
            return None
        cooling = self._cooldown.get(view.pk)
        if cooling is not None and time.monotonic() < cooling[0]:
            return None
        spec = self.registry.for_template(view.template_name, view.template_version)
        if spec is None:
            self._skip_once(view.pk, "no handler for this template; not acquiring",
                            template=view.template_name, version=view.template_version)
            return None
        for slot in idle:
            if slot.can_serve(spec, view) is None:
                return view, slot, spec
        self._skip_once(view.pk, "no idle slot meets the handler's needs", template=view.template_name)
        return None

    async def ping_idle(self, idle: list[Slot]) -> None:
        """Every ping_interval_s, idle nodes ping (busy ones ping from their job), so last_seen
        says they are alive, and release any job they hold but never started (an acquire
        whose reply was lost)."""
        now = time.monotonic()
        if now - self._last_idle_ping < self.settings.ping_interval_s:
            return
        self._last_idle_ping = now
        for slot in idle:
            try:
                await self.client.ping(slot.node_pk, attempts=1)  # the poll says if the server is down
                await slot.reporter.release_strays()
            except ServerError as e:
                self.log.debug("ping failed", node=slot.node_pk, error=one_line(e))
                return

    def _skip_once(self, pk: int, message: str, **values: Any) -> None:
        if pk not in self._skipped:
            if len(self._skipped) >= SKIPPED_MAX:
                self._skipped.clear()
            self._skipped.add(pk)
            self.log.info(message, job_pk=pk, **values)

    def cool_down(self, pk: int) -> None:
        """A job could not start here: leave it to other nodes for a while (backing off per
        job), rather than acquiring and releasing it again at once."""
        now = time.monotonic()
        # A daemon runs for weeks: forget jobs whose cool-down ended long ago (others took them).
        for stale in [p for p, (until, _) in self._cooldown.items() if until < now - COOLDOWN_MAX_S]:
            del self._cooldown[stale]
        backoff = self._cooldown.get(pk, (0.0, None))[1] or \
            Backoff(self.settings.poll_interval_s, COOLDOWN_MAX_S, jitter=False)
        delay = backoff.next_delay()
        assert delay is not None  # no deadline
        self._cooldown[pk] = (now + delay, backoff)

    def forget(self, pk: int) -> None:
        """The job ran here: no cool-down for it."""
        self._cooldown.pop(pk, None)
