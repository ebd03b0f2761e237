"""Jobs' progress for a person: one view and one way of following a job, for `watch`, `dry-run` and
the demo alike.

:class:`JobProgress` is a rich progress bar per job, fed by each job's web socket where the server
accepts one and by polling the job for its phase either way; it rides out a server restart of up to
``WATCH_OUTAGE_LIMIT_S``. On a terminal the bars are live (``terminal.live_view``); to a pipe or a
file it prints one line when a job's state or its tenth of progress changes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ..client import UfdlClient
from ..errors import ServerError, TransientError, WebSocketRefused
from ..logs import one_line
from ..protocol import Phase, display_phase

FINAL = (Phase.FINISHED, Phase.ERRORED, Phase.CANCELLED)
WATCH_POLL_S = 1.0
WATCH_OUTAGE_LIMIT_S = 300.0  # a job is followed through a server restart this long, then given up


def phase_text(job: dict[str, Any]) -> str:
    """The job's phase as a person reads it (a job cancelled before it started reads CANCELLED)."""
    return str(display_phase(job))


def final_line(job: dict[str, Any]) -> str:
    """`job N: PHASE[: reason]`, whole (a piped console does not cut it)."""
    reason = job.get("error_reason")
    return f"job {job['pk']}: {phase_text(job)}" + (f": {one_line(reason, 2000)}" if reason else "")


def describe_message(msg: dict[str, Any]) -> str:
    """A job's web-socket message as the bar's info text (rich markup, its values escaped)."""
    transition = str(msg.get("transition", ""))
    if transition == "progress":
        data = msg.get("transition_data") or {}
        shown = ", ".join(f"{k}={_short(v)}" for k, v in list(data.items())[:4]) if isinstance(data, dict) \
            else ""
        return escape(shown) or "running"
    if transition == "error":
        return f"[red]error: {escape(one_line(msg.get('error') or '', 60))}"
    if transition == "finish":
        return "[green]finished"
    if transition == "cancel":
        return "[yellow]cancelled"
    return escape(transition)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else one_line(value, 20)


def reason_text(e: ServerError) -> str:
    text = one_line(e, 300)
    prefix = f"{e.action}: "
    return text[len(prefix):] if text.startswith(prefix) else text


class JobProgress:
    """A progress bar per job, and the following that feeds it."""

    def __init__(self, client: UfdlClient, console: Console) -> None:
        self.client = client
        self.console = console
        self.progress = Progress(TextColumn("[bold]{task.fields[label]}"), BarColumn(),
                                 TextColumn("{task.percentage:>5.1f}%"), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), console=console)
        self._tasks: dict[int, TaskID] = {}
        self._shown: dict[int, tuple[str, int]] = {}  # what a piped console printed last, per job
        self._followers: list[asyncio.Task[Any]] = []

    def add(self, job: dict[str, Any], info: str = "") -> None:
        """A bar for `job` (not followed: :meth:`follow` or :meth:`follow_in_background` does)."""
        template = job.get("template")
        name = template.get("name") if isinstance(template, dict) else template
        label = escape(f"job {job['pk']} {name}")
        self._tasks[int(job["pk"])] = self.progress.add_task(label, total=1.0, label=label, info=info)

    def show(self, pk: int, *, amount: float | None = None, info: str | None = None,
             kind: str | None = None) -> None:
        """Update job `pk`'s bar; when piped, print a line when the kind of info (a phase, a transition,
        an outage: `kind`, by default the info itself) or the tenth of progress changes."""
        fields: dict[str, Any] = {}
        if info is not None:
            fields["info"] = info
        if amount is not None:
            fields["completed"] = max(0.0, min(1.0, float(amount)))
        self.progress.update(self._tasks[pk], **fields)
        if self.console.is_terminal:
            return
        task = self.progress._tasks[self._tasks[pk]]
        shown = (kind or str(task.fields.get("info", "")), int(task.completed * 10))
        if self._shown.get(pk) != shown:
            self._shown[pk] = shown
            self.console.print(f"{task.fields.get('label')}: {task.completed * 100:.0f}% "
                               f"{task.fields.get('info', '')}")

    def follow_in_background(self, job: dict[str, Any]) -> None:
        """Add `job` and follow it until it ends or :meth:`close`."""
        self.add(job, info="waiting")
        self._followers.append(asyncio.create_task(self.follow(job)))

    async def follow(self, job: dict[str, Any]) -> dict[str, Any]:
        """Until the job ends: its last state. Waits out a server outage of WATCH_OUTAGE_LIMIT_S."""
        pk = int(job["pk"])
        if pk not in self._tasks:
            self.add(job)
        socket = _Socket(self, pk)
        outage_since: float | None = None
        try:
            while display_phase(job) not in FINAL:
                if not socket.open():
                    # Without a socket, a job record that carries progress (the embedded server's) shows it.
                    amount = job.get("progress") if isinstance(job.get("progress"), (int, float)) else None
                    self.show(pk, info=phase_text(job).lower(), amount=amount, kind=phase_text(job))
                await asyncio.sleep(WATCH_POLL_S)
                try:
                    job = await self.client.get_job(pk, attempts=1)
                except TransientError as e:
                    outage_since = outage_since or time.monotonic()
                    if time.monotonic() - outage_since > WATCH_OUTAGE_LIMIT_S:
                        raise
                    self.show(pk, info=f"server unreachable, retrying ({escape(reason_text(e)[:60])})",
                              kind="outage")
                    continue
                if outage_since is not None:
                    outage_since = None
                    self.show(pk, info="server back")
        finally:
            await socket.close()
        if display_phase(job) is Phase.FINISHED:
            self.show(pk, amount=1.0, info="[green]finished", kind="finish")
        return job

    async def close(self) -> None:
        """Stop following the jobs of :meth:`follow_in_background`."""
        for task in self._followers:
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)


class _Socket:
    """One job's web socket, feeding its bar; reopened after a restart closed it, not after a refusal."""

    def __init__(self, view: JobProgress, pk: int) -> None:
        self.view = view
        self.pk = pk
        self.refused = False
        self._task: asyncio.Task[None] | None = None

    def open(self) -> bool:
        """Whether a socket feeds the bar (opening one where none does and the server may accept it)."""
        if self._task is not None and not self._task.done():
            return True
        if not self.refused:
            self._task = asyncio.create_task(self._read())
        return False

    async def _read(self) -> None:
        try:
            async for msg in self.view.client.watch_job(self.pk):
                kind = str(msg.get("transition"))
                # a finished job's progress is done, whatever was last reported (the node
                # sends no final progress call before the finish)
                amount = 1.0 if kind == "finish" else msg.get("progress")
                self.view.show(self.pk, amount=amount, info=describe_message(msg), kind=kind)
        except WebSocketRefused:
            self.refused = True  # the server will not: polling tells the phase
        except (ServerError, OSError):
            pass  # a restart closed it: the next poll reopens it

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
