"""Prometheus metrics of the daemon, on a registry of its own.

A registry per process (not the global default one) keeps test runs that start
several daemons in one process from colliding, and keeps library metrics out.
``Metrics()`` makes a fresh set; the daemon creates one and hands it to the
client, the slots and the status endpoint.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 48 * 3600)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every metric the daemon exports. Names follow Prometheus conventions (units, _total)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.jobs = Counter("ufdl_node_jobs", "Jobs ended, by outcome "
                            "(finished, errored, cancelled, released, retried)", ["outcome"], registry=r)
        self.job_duration = Histogram("ufdl_node_job_duration_seconds", "Wall time from start to end "
                                      "of a job", ["outcome"], buckets=_DURATION_BUCKETS, registry=r)
        self.upload_bytes = Counter("ufdl_node_upload_bytes", "Bytes of outputs uploaded", registry=r)
        self.upload_duration = Histogram("ufdl_node_upload_duration_seconds", "Time per output upload",
                                         buckets=(*_LATENCY_BUCKETS, 60, 300, 1800), registry=r)
        self.api_calls = Counter("ufdl_node_api_calls", "Calls to the job server, by action and HTTP "
                                 "status ('error' when no reply came)", ["action", "status"], registry=r)
        self.api_errors = Counter("ufdl_node_api_errors", "Failed calls to the job server, by action "
                                  "and kind", ["action", "kind"], registry=r)
        self.api_retries = Counter("ufdl_node_api_retries", "Retries of calls to the job server",
                                   ["action"], registry=r)
        self.poll_latency = Histogram("ufdl_node_poll_latency_seconds", "Time of one find-work list "
                                      "call", buckets=_LATENCY_BUCKETS, registry=r)
        self.slot_busy = Counter("ufdl_node_slot_busy_seconds", "Seconds each slot spent on a job",
                                 ["slot"], registry=r)
        self.slots_busy = Gauge("ufdl_node_slots_busy", "Slots running a job now", registry=r)
        self.slots = Gauge("ufdl_node_slots", "Slots of this daemon", registry=r)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
