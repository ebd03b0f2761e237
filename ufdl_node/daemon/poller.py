"""The poller: a source of candidate jobs that the slots ask, one find-work list for many.

Each slot asks :meth:`Poller.candidate` for a job it can serve; the slot acquires it
itself (:mod:`.slot`). The jobs of a list are kept as candidates, shared by the slots,
and offered one after another until they run out, so emptying a backlog of B jobs costs
one list, not B. Lists ask only for the templates this node's handlers serve.

Between full lists a poll asks only for jobs above the highest pk seen (``compare pk >``),
so a poll costs the server O(new jobs) whatever the backlog. Candidates older than
``poll_interval_s`` are kept (acquiring one another node took costs one refused call, as
checking it would) and topped up by such an incremental list, made beside the slots'
acquires rather than in their way: while a backlog is worked through there is no full
list and no search for the highest pk. A full list comes once the candidates have run out,
and then only every ``full_list_interval_s`` or when a job went back to the pool below the
highest pk (handed back, cooled down, a stray released); the search for the highest pk
(O(log) single-job GETs, for a node whose templates have nothing waiting) follows it once
its candidates are worked through. The fleet bench (bench/bench_fleet.py) simulates
exactly these calls.

A job is offered only to a slot whose handler exists and whose hardware meets the
handler's needs; a job that could not start here cools down (backing off per job)
before it is tried again, so that other nodes get it. While the node's health says
no (:mod:`.health`: a full disk lists nothing at all, Docker down leaves container
jobs out), the jobs are left to other nodes; when it says yes again the next list is
a full one, which sees them again.

Whether the server answers is the poller's to say (:class:`Contact`): a failed list or
acquire backs every slot's polling off together, up to ``poll_backoff_max_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..api import HandlerSpec
from ..backoff import Backoff
from ..client import UfdlClient
from ..errors import NotFound, ServerError, TransientError
from ..logs import get_logger, one_line
from ..metrics import Metrics
from ..protocol import JobView
from ..registry import Registry
from ..settings import NodeSettings
from .containers import READING_RECORD
from .health import NodeHealth
from .job import Outcome

COOLDOWN_MAX_S = 600.0  # longest a job that could not start here is left to other nodes
SKIPPED_MAX = 10_000  # jobs remembered as "said once why not": bounded, at worst said again
# Above this many template names, lists are not filtered by name: a filter of thousands of
# terms can exceed the real server's limits (SQL parameters, expression depth).
TEMPLATE_FILTER_MAX = 50
HIGHEST_PROBE_STEP = 1024  # the first step of the search for the highest job pk (doubling)
FIRST_POLL_RETRY_S = 1.0  # the first wait of the polls after a failed find-work

Offer = tuple[JobView, HandlerSpec]


class Asker(Protocol):
    """What the poller needs of a slot that asks it for work."""

    node_pk: int
    not_acquired: str | None

    def can_serve(self, spec: HandlerSpec, job: JobView | None = None) -> str | None: ...


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


class Contact:
    """Whether the server answers (for /healthz, /status and the systemd STATUS line)."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.reachable = False
        self.last_error: str | None = None
        self.on_change = on_change
        self.log = get_logger("ufdl_node.supervisor")

    def up(self) -> None:
        if not self.reachable:
            self.log.info("server reachable")
        self.reachable = True

    def down(self, error: Exception) -> None:
        message = one_line(error)
        if self.reachable or self.last_error != message:
            self.log.warning("server unreachable; backing off", error=message)
        self.reachable = False
        self.last_error = message
        if self.on_change is not None:
            self.on_change()


class Poller:
    """The candidates the slots take their jobs from (see the module's docstring)."""

    def __init__(self, client: UfdlClient, registry: Registry, settings: NodeSettings,
                 metrics: Metrics, health: NodeHealth | None = None, contact: Contact | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.client = client
        self.health = health
        self.contact = contact or Contact()
        self.stopping = stopping
        self._recoveries = 0  # health.recoveries when last seen: a change calls for a full list
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.log = get_logger("ufdl_node.supervisor")
        self._skipped: set[int] = set()
        self._cooldown: dict[int, tuple[float, Backoff]] = {}  # job pk -> (retry after, its backoff)
        self._templates = template_filter(registry.templates())
        self._candidates: deque[Any] = deque()  # the jobs listed and not yet offered
        self._listing = asyncio.Lock()  # one list at a time, whichever slots ask
        self._news = asyncio.Event()  # set (and replaced) when a list brings candidates
        self._backoff = Backoff(FIRST_POLL_RETRY_S, settings.poll_backoff_max_s)
        self._quiet_until = float("-inf")  # no list before this (the server failed)
        self._listed_at = float("-inf")
        self._full_at = float("-inf")
        self._full_due = False  # a job went back to the pool below highest_pk: list it all
        self._probe_due = False  # a full list came: search for the highest pk once it is worked through
        self._topping: asyncio.Task[None] | None = None  # an incremental list beside the acquires
        self.highest_pk = 0  # incremental polls ask only for jobs above it
        self.lists = {"full": 0, "incremental": 0}  # for /status and the tests
        self.holding = 0  # jobs the slots acquired and have not ended yet
        self.last_turn = time.monotonic()  # when a slot last asked (the main loop's tick)
        self.paused: Callable[[], bool] = lambda: False  # control: set by the supervisor

    # -- what a slot asks -----------------------------------------------------------------

    async def candidate(self, slot: Asker, *, urgent: bool = False) -> Offer | None:
        """The next candidate `slot` can serve (not acquired yet), or None for now.

        Lists afresh where needed (see :meth:`_refresh`); `urgent`: the slot has just
        ended a job, so an empty list in hand is listed again at once (else at most every
        poll_interval_s). A failed list says so in :attr:`contact` and returns None.
        """
        self.last_turn = time.monotonic()
        if self.paused():  # control: a paused daemon acquires nothing new (control.py)
            return None
        if self.health is not None:
            await self.health.refresh()  # in a thread, at most every few seconds
            if self.health.recoveries != self._recoveries:  # the jobs left out meanwhile: list them all
                self._recoveries, self._full_due = self.health.recoveries, True
            if self.health.blocked() is not None:
                self._candidates.clear()  # stale by the time the disk has room again
                return None
        try:
            await self._refresh(slot.node_pk, urgent)
        except TransientError as e:
            self.failed(e)
            return None
        except ServerError as e:  # a refusal or a garbage reply: say so, try again later
            self.contact.last_error = one_line(e)
            self.log.warning("find-work failed", error=self.contact.last_error)
            return None
        return self._pick(slot)

    def _pick(self, slot: Asker) -> Offer | None:
        """Take the first candidate `slot` can serve; those it passes over and another slot
        may take (or that cool down) stay, in order."""
        passed: list[Any] = []
        try:
            while self._candidates and not self.stopping():
                job = self._candidates.popleft()
                offer = self._offer(job, slot)
                if isinstance(offer, tuple):
                    return offer
                if offer:
                    passed.append(job)
            return None
        finally:
            self._candidates.extendleft(reversed(passed))

    def put_back(self, view: JobView) -> None:
        """A candidate whose acquire could not be tried (the server is down): first again."""
        self._candidates.appendleft(view.raw)

    def failed(self, error: Exception) -> None:
        """The server did not answer a list or an acquire: every slot's polls back off."""
        self.contact.down(error)
        delay = self._backoff.next_delay() or self.settings.poll_backoff_max_s
        self._quiet_until = time.monotonic() + delay

    def took(self, pk: int) -> None:
        """A slot acquired job `pk` (from a candidate, or re-attached at start)."""
        self.holding += 1

    def ended(self, pk: int, outcome: Outcome) -> None:
        """A slot is done with job `pk`: a job that could not start here cools down (left to
        others a while); one handed back or aborted makes the next list a full one. A job
        that did not finish has the disks checked again before the next is taken (a full
        disk fails jobs)."""
        self.holding = max(self.holding - 1, 0)
        if outcome is not Outcome.FINISHED and self.health is not None:
            self.health.suspect()
        if outcome is Outcome.RELEASED:
            self._cool_down(pk)
        else:
            self._cooldown.pop(pk, None)
            if outcome in (Outcome.RETRIED, Outcome.ABORTED):
                self.back_in_pool()

    def returned(self, pk: int) -> None:
        """A job acquired just as the node stopped went back to the pool untouched."""
        self.holding = max(self.holding - 1, 0)
        self._cooldown.pop(pk, None)
        self.back_in_pool()

    def back_in_pool(self) -> None:
        """A job went back to the pool below highest_pk (say, a stray hold released)."""
        self._full_due = True

    def wait_s(self) -> float:
        """How long an idle slot waits before it asks again: the poll interval with jitter,
        or until the backoff after a failure ends."""
        quiet = self._quiet_until - time.monotonic()
        if quiet > 0:
            return quiet
        return self.settings.poll_interval_s + random.uniform(0, self.settings.poll_jitter_s)

    async def wait(self, timeout_s: float) -> None:
        """Sleep up to `timeout_s`, or until a list brings candidates, or :meth:`wake`."""
        news = self._news
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(news.wait(), timeout=max(timeout_s, 0))

    def wake(self) -> None:
        """Wake every waiting slot (new candidates, or a stop)."""
        self._news.set()
        self._news = asyncio.Event()

    # -- listing ------------------------------------------------------------------------------

    def _due(self, now: float, urgent: bool) -> bool | None:
        """Whether to list now: None not at all, False incrementally, True a full list."""
        if now < self._quiet_until:
            return None
        stale = now - self._listed_at >= self.settings.poll_interval_s
        full_time = now - self._full_at >= self.settings.full_list_interval_s
        if self._candidates:
            # A backlog is being worked through: stale candidates are topped up, and listed
            # whole only every full_list_interval_s (those no slot here takes go then).
            return None if not stale else full_time
        if not (stale or urgent):
            return None
        return self._full_due or full_time

    async def _refresh(self, node_pk: int, urgent: bool) -> None:
        """List when due (:meth:`_due`). Stale candidates in hand are topped up beside the
        slot's acquire, off its path (in a task); an empty hand waits for its list."""
        due = self._due(time.monotonic(), urgent)
        if due is None:
            return
        if due is False and self._candidates:
            if self._topping is None or self._topping.done():
                self._topping = asyncio.create_task(self._top_up(node_pk), name="poller-top-up")
            return
        async with self._listing:
            full = self._due(time.monotonic(), urgent)  # another slot may have listed meanwhile
            if full is not None:
                await self._list(node_pk, full)

    async def _top_up(self, node_pk: int) -> None:
        try:
            async with self._listing:
                if self._due(time.monotonic(), False) is False:
                    await self._list(node_pk, False)
        except TransientError as e:
            self.failed(e)
        except ServerError as e:
            self.contact.last_error = one_line(e)
            self.log.warning("find-work failed", error=self.contact.last_error)

    async def _list(self, node_pk: int, full: bool) -> None:
        """One find-work list: a full one, or only the jobs above the highest pk seen. The
        search for the highest pk comes after a full list, once its candidates ran out (not
        while a backlog is worked through: the list's own highest pk serves meanwhile)."""
        narrow = list(self._templates)
        if not full:
            floor = self.highest_pk  # not the probe's: a job it finds may be newer than any list
            if self._probe_due and not self._candidates:
                self._probe_due = False
                await self._probe_highest(node_pk)
            narrow.append(above(floor))
        began = time.monotonic()
        jobs = await self.client.find_work(node_id=node_pk, attempts=1, narrow=narrow)
        self.metrics.poll_latency.observe(time.monotonic() - began)
        self.contact.up()
        self._backoff.reset()
        self.lists["full" if full else "incremental"] += 1
        if full:
            self._full_at, self._full_due, self._probe_due = began, False, True
            self._candidates.clear()  # the full list has them all, in order
        self._listed_at = began
        self._add(jobs)

    async def close(self) -> None:
        """Stop a top-up in flight (at shutdown, before the client closes)."""
        if self._topping is not None:
            self._topping.cancel()
            await asyncio.gather(self._topping, return_exceptions=True)

    def _add(self, jobs: list[Any]) -> None:
        """New candidates: a full list's after the others were dropped, an incremental list's
        (all above the highest pk seen, so none known) after those in hand."""
        self._candidates.extend(jobs)
        for job in jobs:
            pk = job.get("pk") if isinstance(job, dict) else None
            if isinstance(pk, int) and pk > self.highest_pk:
                self.highest_pk = pk
        if jobs:
            self.wake()  # idle slots: candidates to take

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

    # -- which candidate for which slot --------------------------------------------------------

    def _offer(self, job: Any, slot: Asker) -> Offer | bool:
        """`job` for `slot`; else whether it stays a candidate (True: cooling down, or beyond
        this slot's hardware; False: malformed, no handler, or gated by the node's health)."""
        try:
            view = JobView.parse(job)
            if not view.template_name or view.template_version is None:
                raise ValueError("no template name or version")
        except (KeyError, TypeError, ValueError, AttributeError):
            self.log.warning("skipping a malformed job from the server", job=one_line(job, 200))
            return False
        cooling = self._cooldown.get(view.pk)
        if cooling is not None and time.monotonic() < cooling[0]:
            return True  # kept: the lists go on while it cools, so it is seen when it ends
        spec = self.registry.for_template(view.template_name, view.template_version)
        if spec is None:
            self._skip_once(view.pk, "no handler for this template; not acquiring",
                            template=view.template_name, version=view.template_version)
            return False
        if self.health is not None and (unhealthy := self.health.gate(spec, view)) is not None:
            slot.not_acquired = unhealthy
            return False  # said once by the health check; the full list after it recovers sees the job
        reason = slot.can_serve(spec, view)
        if reason is None:
            return view, spec
        if reason != READING_RECORD:  # while the image record is read, nothing is refused yet
            self._skip_once(view.pk, "no idle slot meets the handler's needs", template=view.template_name,
                            reason=reason)
        return True

    def _skip_once(self, pk: int, message: str, **values: Any) -> None:
        if pk not in self._skipped:
            if len(self._skipped) >= SKIPPED_MAX:
                self._skipped.clear()
            self._skipped.add(pk)
            self.log.info(message, job_pk=pk, **values)

    def _cool_down(self, pk: int) -> None:
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
