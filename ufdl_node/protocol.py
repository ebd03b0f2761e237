"""The job protocol's rules in one place (UFDL-API.md sections 3 and 5): pure, no I/O.

The phase of a job is derived from its fields, never stored; :func:`phase` is the
only place that derives it, for the client, the daemon, the embedded server, the
local tools and the tests alike. :class:`JobView` is a job as the daemon reads it,
parsed once from a server reply (the real server nests some relations, the
embedded one sends pks: :func:`pk_of` reads both).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CANCELLED_REASON", "JobView", "Phase", "display_phase", "find_work_spec", "phase", "phase_of", "pk_of",
]

CANCELLED_REASON = "Cancelled"  # the error_reason the server writes when it cancels a job


class Phase(str, enum.Enum):
    """A job's lifecycle phase (UFDL-API.md section 3)."""

    CREATED = "CREATED"
    STARTED = "STARTED"
    FINISHED = "FINISHED"
    ERRORED = "ERRORED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def phase_of(start_time: object, end_time: object, error_reason: object) -> Phase:
    """The phase from the three fields that decide it (section 3's table)."""
    if start_time is None:
        return Phase.CREATED
    if end_time is None:
        return Phase.STARTED if error_reason is None else Phase.CANCELLED
    return Phase.FINISHED if error_reason is None else Phase.ERRORED


def phase(job: Mapping[str, Any]) -> Phase:
    """The phase of a job as the server sends it."""
    return phase_of(job.get("start_time"), job.get("end_time"), job.get("error_reason"))


def pk_of(value: Any) -> Any:
    """A relation's pk: the real server nests some relations; the embedded one sends pks."""
    return value.get("pk") if isinstance(value, dict) else value


def find_work_spec() -> dict[str, Any]:
    """The filter that finds jobs waiting for a worker, oldest first (UFDL-API.md section 5)."""
    return {
        "expressions": [
            {"type": "isnull", "field": "start_time"},
            {"type": "isnull", "field": "error_reason"},
            {"type": "isnull", "field": "node"},
            {"type": "isnull", "field": "template.workabletemplate", "invert": True},
        ],
        "order_by": [{"field": "pk", "ascending": True}],
    }


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class JobView:
    """A job as the daemon reads it, parsed once from a server reply.

    :meth:`parse` raises KeyError, TypeError or ValueError for a reply without a
    usable pk; `raw` keeps the reply for the
    handler's ``ctx.job``, which is public API.
    """

    pk: int
    template_pk: int | None
    template_name: str
    template_version: int | None
    holder: int | None  # the node that holds the job
    phase: Phase
    cancelled: bool
    error_reason: str | None
    outputs: frozenset[tuple[str, str]] = frozenset()  # NAME/TYPE the server already has
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, job: Mapping[str, Any]) -> JobView:
        """Read the fields the daemon decides on from a job reply."""
        template = job.get("template")
        if not isinstance(template, Mapping):  # a bare pk (or none): the template's name is unknown
            template = {"pk": template}
        reason = job.get("error_reason")
        outputs = frozenset((str(o.get("name")), str(o.get("type")))
                            for o in job.get("outputs") or [] if isinstance(o, Mapping))
        return cls(pk=int(job["pk"]), template_pk=_optional_int(template.get("pk")),
                   template_name=str(template.get("name", "")),
                   template_version=_optional_int(template.get("version")),
                   holder=_optional_int(pk_of(job.get("node"))), phase=phase(job),
                   cancelled=bool(job.get("is_cancelled")),
                   error_reason=None if reason is None else str(reason), outputs=outputs, raw=job)

    def held_by(self, node: int) -> bool:
        """True when `node` holds the job."""
        return self.holder == node

    @property
    def startable(self) -> bool:
        """CREATED, not cancelled, no error: a start may be made (by its holder)."""
        return self.phase is Phase.CREATED and self.error_reason is None and not self.cancelled

    @property
    def cancelled_by_server(self) -> bool:
        """The server cancelled the job (flagged, or its reason says so)."""
        return self.cancelled or self.error_reason == CANCELLED_REASON



def display_phase(job: Mapping[str, Any]) -> Phase:
    """The phase as a person reads it: a job cancelled before it started (CREATED with
    error_reason "Cancelled" on the server) reads CANCELLED."""
    current = phase(job)
    if current is Phase.CREATED and job.get("error_reason") == CANCELLED_REASON:
        return Phase.CANCELLED
    return current
