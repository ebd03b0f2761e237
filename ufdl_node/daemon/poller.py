"""The poller: one find-work list offers its jobs to the idle slots, for many acquisitions.

The jobs of a list are kept as candidates and acquired one after another (a slot
that frees up takes the next) until they run out or are older than the poll
interval, so emptying a backlog of B jobs costs one list, not B. Lists ask only
for the templates this node's handlers serve. Between full lists a poll asks only
for jobs above the highest pk seen (``compare pk >``), so an idle poll costs the
server O(new jobs) whatever the backlog; a full list at least every
``full_list_interval_s`` (and whenever known candidates went stale) sees jobs
handed back with lower pks. The fleet bench (bench/bench_fleet.py) simulates
exactly these calls.

A job is offered only to a slot whose handler exists and whose hardware meets the
handler's needs; a job that could not start here cools down (backing off per job)
before it is tried again, so that other nodes get it. While the node's health says
no (:mod:`.health`: a full disk lists nothing at all, Docker down leaves container
jobs out), the jobs are left to other nodes; when it says yes again the next list is
a full one, which sees them again.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..api import HandlerSpec
from ..client import UfdlClient
from ..errors import NotFound, ServerError, TransientError
from ..logs import get_logger, one_line
from ..metrics import Metrics
from ..protocol import JobView
from ..registry import Registry
from ..settings import NodeSettings
from .backoff import Backoff
from .containers import READING_RECORD
from .health import NodeHealth
from .slot import Slot

COOLDOWN_MAX_S = 600.0  # longest a job that could not start here is left to other nodes
SKIPPED_MAX = 10_000  # jobs remembered as "said once why not": bounded, at worst said again
# Above this many template names, lists are not filtered by name: a filter of thousands of
# terms can exceed the real server's limits (SQL parameters, expression depth).
TEMPLATE_FILTER_MAX = 50
HIGHEST_PROBE_STEP = 1024  # the first step of the search for the highest job pk (doubling)

Launch = Callable[[Slot, JobView, HandlerSpec], None]


def template_filter(names: list[str]) -> list[dict[str, Any]]:
    """Find-work expressions that keep only jobs of the templates `names` (none above
    TEMPLATE_FILTER_MAX names, or for no names: then the poller sees every template)."""
    terms = [{"type": "exact", "field": "template.name", "value": name} for name in sorted(set(names))]
    if not terms or len(terms) > TEMPLATE_FILTER_MAX:
        return []
    if len(terms) == 1:
        return terms  # an `or` needs at least two sub-expressions (UFDL-API.md section 5)
    return [{"type": "or", "sub_expressions": terms}]


def above(pk: int) -> dict[str, Any]:
    """The expression of an incremental poll: only jobs above the highest pk seen."""
    return {"type": "compare", "field": "pk", "operator": ">", "value": pk}


class Poller:
    """Finds work for idle slots and hands each job it acquires to `launch`."""

    def __init__(self, client: UfdlClient, registry: Registry, settings: NodeSettings,
                 metrics: Metrics, health: NodeHealth | None = None) -> None:
        self.client = client
        self.health = health
        self._recoveries = 0  # health.recoveries when last seen: a change calls for a full list
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.log = get_logger("ufdl_node.supervisor")
        self._skipped: set[int] = set()
        self._cooldown: dict[int, tuple[float, Backoff]] = {}  # job pk -> (retry after, its backoff)
        self._last_idle_ping = time.monotonic()
        self._templates = template_filter(registry.templates())
        self._candidates: deque[Any] = deque()  # the jobs of the last list not yet tried
        self._listed_at = float("-inf")
        self._full_at = float("-inf")
        self._full_due = False  # a job went back to the pool below highest_pk: list it all
        self.highest_pk = 0  # incremental polls ask only for jobs above it
        self.lists = {"full": 0, "incremental": 0}  # for /status and the tests

    async def poll_once(self, idle: list[Slot], launch: Launch, stopping: Callable[[], bool]) -> int:
        """Offers the candidates (listed afresh where needed) to the idle slots; returns how
        many started.

        One try per list: the main loop backs off by itself, capped so that a server that
        comes back is seen within poll_backoff_max_s.
        """
        if self.health is not None:
            await self.health.refresh()
            if self.health.recoveries != self._recoveries:  # the jobs left out meanwhile: list them all
                self._recoveries, self._full_due = self.health.recoveries, True
            if self.health.blocked() is not None:
                self._candidates.clear()  # stale by the time the disk has room again
                return 0
        await self._refresh(idle[0].node_pk)
        started = 0
        waiting: list[Any] = []  # jobs no idle slot can take now: a busy slot may free up
        try:
            while idle and (got := await self._acquire_next(idle, waiting, stopping)) is not None:
                held, slot, spec = got
                idle.remove(slot)
                started += 1
                launch(slot, held, spec)
        finally:
            self._candidates.extendleft(reversed(waiting))
        return started

    async def _acquire_next(self, slots: list[Slot], waiting: list[Any], stopping: Callable[[], bool]) \
            -> tuple[JobView, Slot, HandlerSpec] | None:
        """Offer the candidates in order until one of `slots` holds one; None when they run
        out. Jobs none of `slots` can take now go to `waiting`, to be put back."""
        while self._candidates and not stopping():
            picked = self._pick_slot(self._candidates.popleft(), slots, waiting)
            if picked is None:
                continue
            view, slot, spec = picked
            try:
                held = await slot.try_acquire(view)
            except TransientError:
                self._candidates.appendleft(view.raw)  # untried for all we know: kept for later
                raise  # the server is down: the caller backs off
            except (ServerError, KeyError, TypeError, ValueError) as e:
                self.log.warning("acquire failed", job_pk=view.pk, error=one_line(e))
                continue
            if held is not None:
                return held, slot, spec
            # else lost the race: the next candidate
        return None

    async def next_for(self, slot: Slot, stopping: Callable[[], bool]) -> tuple[JobView, HandlerSpec] | None:
        """A job acquired for `slot` while its current job finishes, or None.

        The slot starts it once its finish has landed (the server refuses a start while
        the node has a current job): the acquire's round trip overlaps the finish's, one
        less between two jobs. Only from the candidates of a list still fresh; nothing is
        listed here (the main loop does that when no candidate is left).
        """
        if stopping() or time.monotonic() - self._listed_at >= self.settings.poll_interval_s:
            return None
        waiting: list[Any] = []
        try:
            got = await self._acquire_next([slot], waiting, stopping)
            return None if got is None else (got[0], got[2])
        except TransientError:
            return None  # the main loop finds the server down and backs off
        finally:
            self._candidates.extendleft(reversed(waiting))

    async def _refresh(self, node_pk: int) -> None:
        """List afresh unless the candidates are fresh: a full list when candidates went stale
        (more work may wait below the highest pk) or every full_list_interval_s, else only
        the jobs above the highest pk seen."""
        now = time.monotonic()
        if self._candidates and now - self._listed_at < self.settings.poll_interval_s:
            return
        full = bool(self._candidates) or self._full_due or \
            now - self._full_at >= self.settings.full_list_interval_s
        narrow = list(self._templates)
        if full:
            await self._probe_highest(node_pk)
        else:
            narrow.append(above(self.highest_pk))
        began = time.monotonic()
        jobs = await self.client.find_work(node_id=node_pk, attempts=1, narrow=narrow)
        self.metrics.poll_latency.observe(time.monotonic() - began)
        self.lists["full" if full else "incremental"] += 1
        if full:
            self._full_at, self._full_due = began, False
        self._listed_at = began
        self._candidates = deque(jobs)
        for job in jobs:
            pk = job.get("pk") if isinstance(job, dict) else None
            if isinstance(pk, int) and pk > self.highest_pk:
                self.highest_pk = pk

    async def _probe_highest(self, node_pk: int) -> None:
        """Raise highest_pk to the highest job pk on the server, found by GETs of single jobs
        (doubling steps, then halving: 404 is "beyond"; O(log of the new jobs) calls).

        A full list returns the waiting jobs of our templates only; without this, a node
        whose templates have no waiting jobs would ask ``pk > 0`` and every incremental poll
        would make the server walk the whole backlog. A hole (a deleted job) only makes the
        search err low, which is safe: a poll then sees a few jobs more.
        """
        low, step = self.highest_pk, HIGHEST_PROBE_STEP
        try:
            high = low + step
            while step < 2**40 and await self._exists(high, node_pk):  # bounded, whatever it answers
                low, step = high, step * 2
                high = low + step
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (mid, high) if await self._exists(mid, node_pk) else (low, mid)
        except ServerError as e:  # the list says whether the server is down
            self.log.debug("search for the highest job pk failed", error=one_line(e))
        self.highest_pk = max(self.highest_pk, low)

    async def _exists(self, pk: int, node_pk: int) -> bool:
        try:
            await self.client.get_job(pk, node_pk, attempts=1)
        except NotFound:
            return False
        return True

    def _pick_slot(self, job: Any, idle: list[Slot],
                   waiting: list[Any]) -> tuple[JobView, Slot, HandlerSpec] | None:
        try:
            view = JobView.parse(job)
            if not view.template_name or view.template_version is None:
                raise ValueError("no template name or version")
        except (KeyError, TypeError, ValueError, AttributeError):
            self.log.warning("skipping a malformed job from the server", job=one_line(job, 200))
            return None
        cooling = self._cooldown.get(view.pk)
        if cooling is not None and time.monotonic() < cooling[0]:
            waiting.append(job)  # kept: the lists go on while it cools, so it is seen when it ends
            return None
        spec = self.registry.for_template(view.template_name, view.template_version)
        if spec is None:
            self._skip_once(view.pk, "no handler for this template; not acquiring",
                            template=view.template_name, version=view.template_version)
            return None
        if self.health is not None and (unhealthy := self.health.gate(spec, view)) is not None:
            for slot in idle:
                slot.not_acquired = unhealthy
            return None  # said once by the health check; the full list after it recovers sees the job
        reasons = set()
        for slot in idle:
            reason = slot.can_serve(spec, view)
            if reason is None:
                return view, slot, spec
            reasons.add(reason)
        if READING_RECORD not in reasons:  # while the image record is read, nothing is refused yet
            self._skip_once(view.pk, "no idle slot meets the handler's needs", template=view.template_name,
                            reasons=sorted(reasons))
        waiting.append(job)
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
                if await slot.reporter.release_strays():
                    self._full_due = True  # back in the pool, below highest_pk
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
        self._full_due = True  # it is back in the pool, below highest_pk

    def use_registry(self, registry: Registry) -> None:
        """control: a reload's handlers, for the jobs listed from now on (control.py)."""
        self.registry = registry
        self._templates = template_filter(registry.templates())
        self._candidates.clear()  # listed for the old templates
        self._skipped.clear()  # "no handler for this template" may not hold any more
        self._full_due = True  # jobs of a new template may wait below the highest pk

    def forget(self, pk: int, *, back_in_pool: bool = False) -> None:
        """The job ran here: no cool-down for it. `back_in_pool` (handed back for a retry,
        aborted): the next list is a full one, as its pk is below highest_pk."""
        self._cooldown.pop(pk, None)
        self._full_due = self._full_due or back_in_pool
