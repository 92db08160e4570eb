"""``GET /metrics``: what the service did, in the Prometheus text format (prometheus-client).

Ingest requests are counted as they are answered; everything about delivery is read at
scrape time from the consumers' ledgers (the same counts a run's report shows), so the
delivery path does no metrics work per item.

=========================================== ============================================
metric                                      labels
=========================================== ============================================
moerules_ingest_requests_total              bundle, partner (the source), status
moerules_ingest_request_seconds             bundle (histogram: time to acknowledge)
moerules_records_total                      bundle, outcome (delivered, dropped,
                                            dead_lettered), reason (item kind for delivered)
moerules_dead_letters_total                 bundle, reason
moerules_delivery_requests_total            bundle, status (partner answers, tries)
moerules_delivery_retries_total             bundle
moerules_delivery_throttled_total           bundle (partner 429s)
moerules_rate_limit_waits_total             bundle (requests the client-side limits held)
moerules_rate_limit_wait_seconds_total      bundle
moerules_spool_depth                        bundle (messages not yet acknowledged)
moerules_spool_bytes                        bundle
moerules_spool_oldest_age_seconds           bundle
moerules_spool_acked_total                  bundle (messages done and removed)
moerules_reloads_total                      bundle, result (applied, rejected)
moerules_delivery_up                        bundle (0 while waiting after a fatal answer)
moerules_ready                              (1 when /readyz says ready)
=========================================== ============================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace

from moerules.engine.service.consumer import BundleConsumer, DeliveryTotals
from moerules.engine.service.spool import Spool
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# the *_created series (when each counter was made) only add noise to every scrape
disable_created_metrics()  # type: ignore[no-untyped-call]
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """The registry of one service: counters updated by the app, the rest collected."""

    def __init__(
        self, consumers: Mapping[str, BundleConsumer], spool: Spool, ready: Callable[[], bool]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "moerules_ingest_requests",
            "Ingest requests answered",
            ["bundle", "partner", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "moerules_ingest_request_seconds",
            "Time from a request's arrival to its answer",
            ["bundle"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.reloads = Counter(
            "moerules_reloads", "Bundle reloads", ["bundle", "result"], registry=self.registry
        )
        self.registry.register(_Delivery(consumers, spool, ready))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Delivery(Collector):
    """Reads the consumers' totals, their live ledgers and the spool at scrape time."""

    def __init__(
        self, consumers: Mapping[str, BundleConsumer], spool: Spool, ready: Callable[[], bool]
    ) -> None:
        self.consumers = consumers
        self.spool = spool
        self.ready = ready

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        records = CounterMetricFamily(
            "moerules_records", "Items by outcome", labels=["bundle", "outcome", "reason"]
        )
        dead = CounterMetricFamily(
            "moerules_dead_letters", "Dead letters written", labels=["bundle", "reason"]
        )
        statuses = CounterMetricFamily(
            "moerules_delivery_requests",
            "Requests sent to partners, by answer",
            labels=["bundle", "status"],
        )
        retries = CounterMetricFamily(
            "moerules_delivery_retries", "Requests tried again", labels=["bundle"]
        )
        throttled = CounterMetricFamily(
            "moerules_delivery_throttled",
            "Answers saying the partner's rate limit refused",
            labels=["bundle"],
        )
        waits = CounterMetricFamily(
            "moerules_rate_limit_waits",
            "Requests the client-side rate limits held back",
            labels=["bundle"],
        )
        wait_seconds = CounterMetricFamily(
            "moerules_rate_limit_wait_seconds",
            "Time requests waited for the rate limits",
            labels=["bundle"],
        )
        acked = CounterMetricFamily(
            "moerules_spool_acked", "Spooled messages done", labels=["bundle"]
        )
        depth = GaugeMetricFamily(
            "moerules_spool_depth", "Messages not yet acknowledged", labels=["bundle"]
        )
        size = GaugeMetricFamily(
            "moerules_spool_bytes", "Bytes of those messages", labels=["bundle"]
        )
        age = GaugeMetricFamily(
            "moerules_spool_oldest_age_seconds",
            "Age of the oldest message not yet acknowledged",
            labels=["bundle"],
        )
        up = GaugeMetricFamily(
            "moerules_delivery_up",
            "1 while delivering; 0 while waiting after a fatal answer",
            labels=["bundle"],
        )
        for name, consumer in sorted(self.consumers.items()):
            totals = _current(consumer)
            for kind, n in sorted(totals.delivered.items()):
                records.add_metric([name, "delivered", kind], n)
            for reason, n in sorted(totals.dropped.items()):
                records.add_metric([name, "dropped", reason], n)
            for reason, n in sorted(totals.dead.items()):
                records.add_metric([name, "dead_lettered", reason], n)
                dead.add_metric([name, reason], n)
            for status, n in sorted(totals.statuses.items()):
                statuses.add_metric([name, status], n)
            retries.add_metric([name], totals.retries)
            throttled.add_metric([name], totals.throttled)
            waits.add_metric([name], totals.limiter_waits)
            wait_seconds.add_metric([name], totals.limiter_wait_seconds)
            acked.add_metric([name], totals.messages_acked)
            depth.add_metric([name], self.spool.depth(name))
            size.add_metric([name], self.spool.size_bytes(name))
            age.add_metric([name], self.spool.oldest_age(name) or 0.0)
            up.add_metric([name], 1 if consumer.up else 0)
        ready = GaugeMetricFamily(
            "moerules_ready", "1 when the service is ready", value=1 if self.ready() else 0
        )
        yield from (
            records,
            dead,
            statuses,
            retries,
            throttled,
            waits,
            wait_seconds,
            acked,
            depth,
            size,
            age,
            up,
            ready,
        )


def _current(consumer: BundleConsumer) -> DeliveryTotals:
    """The consumer's totals with its live pass's counts added (copies: scraping changes
    nothing)."""
    kept = consumer.totals
    totals = replace(
        kept,
        delivered=dict(kept.delivered),
        dropped=dict(kept.dropped),
        dead=dict(kept.dead),
        statuses=dict(kept.statuses),
    )
    report = consumer.report
    if report is not None:
        totals.add(report)
    return totals
