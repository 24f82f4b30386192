"""Every Prometheus metric of the service, created against a registry the caller passes in.

Label values are drawn from small fixed sets (channels, outcomes, failure types, stages,
reasons): never contact ids, emails or tenants' free text.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MillisecondHistogram(Collector):
    """A histogram in seconds of whole-millisecond durations, observed a batch at a time.

    The same exposition as a ``prometheus_client.Histogram`` without labels (``_bucket`` per
    ``le``, ``_count``, ``_sum``); :meth:`observe_since` takes a batch's start times at once
    (equal ones counted together), where ``Histogram.observe`` locks and searches the buckets
    once per value.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        bounds = [float(b) for b in buckets]
        self._bounds_ms = [b * 1000 for b in bounds]
        # the ``le`` labels as the client library writes them ("0.0025", "10.0", "+Inf")
        self._labels = [floatToGoString(b) for b in [*bounds, float("inf")]]  # type: ignore[no-untyped-call]
        self._counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self._sum_ms = 0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_since(self, now_ms: int, started_ms: Iterable[int]) -> None:
        """One observation of ``now_ms - t`` (0 if negative) for each ``t`` in ``started_ms``."""
        tally = Tally(started_ms)
        if not tally:
            return
        bounds = self._bounds_ms
        with self._lock:
            counts = self._counts
            total = 0
            for started, n in tally.items():
                elapsed = now_ms - started
                if elapsed < 0:
                    elapsed = 0
                counts[bisect_left(bounds, elapsed)] += n
                total += elapsed * n
            self._sum_ms += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            counts = list(self._counts)
            total_ms = self._sum_ms
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for label, count in zip(self._labels, counts, strict=True):
            cumulative += count
            buckets.append((label, cumulative))
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], buckets, total_ms / 1000)
        yield family


class Metrics:
    """The service's metrics bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "engagement_events_consumed_total",
            "Inbound records consumed, by channel and outcome.",
            # outcome: scored | duplicate | dead_lettered | rekeyed | forwarded
            ["channel", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "engagement_dead_letters_total",
            "Records sent to the dead-letter topic, by failure type.",
            ["failure_type"],
            registry=r,
        )
        self.transitions = Counter(
            "engagement_transitions_total",
            "Stage transitions emitted, by lifecycle, stage pair and reason.",
            ["lifecycle", "from_stage", "to_stage", "reason"],
            registry=r,
        )
        self.score_snapshots = Counter(
            "engagement_score_snapshots_total", "Score snapshots published.", registry=r
        )
        self.processing_latency = MillisecondHistogram(
            "engagement_processing_latency_seconds",
            "From an inbound record's timestamp to its state and outputs being written.",
            LATENCY_BUCKETS,
            r,
        )
        self.event_time_lag = Gauge(
            "engagement_event_time_lag_seconds",
            "Wall clock minus the event timestamp of the newest scored event, by channel.",
            ["channel"],
            registry=r,
        )
        self.contacts_per_stage = Gauge(
            "engagement_contacts",
            "Contacts owned by this worker, by lifecycle and stage.",
            ["lifecycle", "stage"],
            registry=r,
        )
        self.due_index_size = Gauge(
            "engagement_due_index_entries",
            "Contacts with a pending decay transition in this worker's due-time index.",
            registry=r,
        )
        self.decay_ticks = Counter(
            "engagement_decay_ticks_total", "Decay wake-ups sent by the timer.", registry=r
        )
        self.decay_ticks_deferred = Counter(
            "engagement_decay_ticks_deferred_total",
            "Decay wake-ups not applied when scored, because their partition's event sources "
            "were not read to the end then (sent again by the timer).",
            registry=r,
        )
        self.decay_held_partitions = Gauge(
            "engagement_decay_held_partitions",
            "Partitions whose decay wake-ups wait until their event sources are read to the end.",
            registry=r,
        )
        self.partition_forwards = Counter(
            "engagement_partition_forwards_total",
            "Inbound records that arrived on another partition than their contact's and were "
            "forwarded to it through the re-key topic, by channel.",
            ["channel"],
            registry=r,
        )
        self.batch_failures = Counter(
            "engagement_batch_failures_total",
            "Batches that failed and were retried, by the step that failed.",
            ["step"],  # outputs | changelog | score
            registry=r,
        )
        self.orphaned_states = Gauge(
            "engagement_orphaned_states",
            "Contact states found at recovery on another partition than their key's canonical "
            "one (left by an earlier release; see docs/topology.md).",
            registry=r,
        )
        self.model_migrations = Counter(
            "engagement_model_migrations_total",
            "Contacts found at recovery with a state of another model (migrated at their next "
            "event or wake-up; woken at once if their stage changes).",
            registry=r,
        )
        self.recovery_remaining = Gauge(
            "engagement_recovery_remaining_records",
            "Changelog records still to apply before this worker is ready.",
            registry=r,
        )
        self.recovery_contacts = Counter(
            "engagement_recovery_contacts_total",
            "Contacts re-indexed from local state after an assignment.",
            registry=r,
        )
        self.ready = Gauge(
            "engagement_worker_ready", "1 when partitions are assigned and recovered.", registry=r
        )
        self.batch_size = Histogram(
            "engagement_batch_records",
            "Records per processed batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.errors = Counter(
            "engagement_worker_errors_total",
            "Unexpected errors caught in the agent loop, by stage of processing.",
            ["where"],
            registry=r,
        )
        self.api_auth_failures = Counter(
            "engagement_api_auth_failures_total",
            "Query API requests refused with 401 (missing or invalid bearer token).",
            registry=r,
        )
        self.erasures = Counter(
            "engagement_erasures_total",
            "Erasure commands applied, by outcome.",
            ["outcome"],  # erased | not_found | invalid
            registry=r,
        )
        self.account_updates = Counter(
            "engagement_account_updates_total",
            "Account updates (member states, departures, licences) by kind and outcome.",
            ["kind", "outcome"],  # join | leave | licences | tick; applied | unchanged | invalid
            registry=r,
        )
        self.account_transitions = Counter(
            "engagement_account_transitions_total",
            "Account stage changes, by lifecycle, target stage and reason.",
            ["lifecycle", "to_stage", "reason"],
            registry=r,
        )
        self.account_due_index_size = Gauge(
            "engagement_account_due_index_entries",
            "Accounts with a pending time-driven change in this worker's due-time index.",
            registry=r,
        )
        self.identity_links = Counter(
            "engagement_identity_links_total",
            "Identity links (identify/alias) by step and outcome (docs/streaming.md).",
            ["step", "outcome"],  # step: link | absorb | merge; outcome: fixed set
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition of this registry."""
        return generate_latest(self.registry)


class CollectorMetrics:
    """The HTTP collector's metrics (``engagement-index collector``), bound to one registry.

    Labels: ``route`` is the route template (``/v1/batch``, ``/webhooks/sendgrid/{tenant}``),
    ``source`` one of segment/pixel/sendgrid/mailgun, ``channel`` an inbound channel or
    ``identity``, ``reason`` a fixed rejection reason. Never ids, addresses or tenants.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "engagement_collector_requests_total",
            "HTTP requests answered, by route template and status code.",
            ["route", "status"],
            registry=r,
        )
        self.events_published = Counter(
            "engagement_collector_events_published_total",
            "Records published to Kafka, by source and channel (identity = identities topic).",
            ["source", "channel"],
            registry=r,
        )
        self.events_ignored = Counter(
            "engagement_collector_events_ignored_total",
            "Provider events acknowledged but not mapped (e.g. SendGrid deferred), by source.",
            ["source"],
            registry=r,
        )
        self.rejected = Counter(
            "engagement_collector_rejected_total",
            "Requests refused (nothing published), by source and reason.",
            ["source", "reason"],
            registry=r,
        )
        self.pixel_invalid = Counter(
            "engagement_collector_pixel_invalid_signatures_total",
            "Pixel requests served a GIF but not published, by reason.",
            ["reason"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "engagement_collector_publish_latency_seconds",
            "From handing a request's records to the producer to the broker's last ack.",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "engagement_collector_dead_letters_total",
            "Batch items refused and put on the dead-letter topic (the good items beside them "
            "were published), by source and failure type.",
            ["source", "failure_type"],  # failure_type: schema_violation | oversized
            registry=r,
        )
        self.machine_opens = Counter(
            "engagement_collector_machine_opens_total",
            "Opens that look machine-made (published as email.machine_open; signal=head: a "
            "pixel HEAD request, not published), by source and signal.",
            ["source", "signal"],
            registry=r,
        )
        self.producer_ready = Gauge(
            "engagement_collector_producer_ready",
            "1 when the collector is ready: the broker answered its producer (an ack or a "
            "metadata request) within ready_max_age_seconds.",
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition of this registry."""
        return generate_latest(self.registry)
