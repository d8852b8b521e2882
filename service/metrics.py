"""Prometheus metrics of one service instance, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.memo import MemoStats

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 700, 1000, 2000, 5000)


class ServiceMetrics:
    """Request, inference, unseen- and clipped-value and model metrics, exposed at `GET /metrics`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "afm_requests", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "afm_request_duration_seconds", "Time from request to response, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_duration = Histogram(
            "afm_inference_duration_seconds", "Time in onnxruntime per inference call.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_rows = Histogram(
            "afm_inference_rows", "Rows scored per inference call.",
            buckets=ROW_BUCKETS, registry=r,
        )  # fmt: skip
        self.unseen_values = Counter(
            "afm_unseen_values", "Scored rows whose value of a field was unseen in training.",
            ["field"], registry=r,
        )  # fmt: skip
        self.clipped_values = Counter(
            "afm_clipped_values",
            "Scored rows whose number in a field lay outside its training range, clipped to it.",
            ["field"], registry=r,
        )  # fmt: skip
        self.model = Info("afm_model", "The bundle being served.", registry=r)
        self.reloads = Counter(
            "afm_model_reloads", "Bundle loads by result (loaded, refused).", ["result"], registry=r
        )
        self.ready = Gauge("afm_ready", "1 once a model is loaded and warmed.", registry=r)
        self.admission = Counter(
            "afm_admission", "Inference requests by admission result (admitted, rejected, expired).",
            ["result"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "afm_requests_in_flight", "Inference requests holding a place now.", registry=r
        )
        self.queued = Gauge(
            "afm_requests_queued", "Inference requests waiting for a place now.", registry=r
        )
        self.draining = Gauge(
            "afm_draining", "1 once a SIGTERM has started the drain before shutdown.", registry=r
        )
        self._caches: _CacheCollector | None = None

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_duration.labels(route).observe(seconds)

    def observe_inference(self, rows: int, seconds: float) -> None:
        self.inference_rows.observe(rows)
        self.inference_duration.observe(seconds)

    def count_unseen(self, unseen: Mapping[str, int]) -> None:
        for field, count in unseen.items():
            if count:
                self.unseen_values.labels(field).inc(count)

    def count_clipped(self, clipped: Mapping[str, int]) -> None:
        for field, count in clipped.items():
            if count:
                self.clipped_values.labels(field).inc(count)

    def serving(self, name: str, version: int, task: str) -> None:
        self.model.info({"name": name, "version": str(version), "task": task})
        self.ready.set(1)

    def watch_caches(self, stats: Callable[[], Mapping[str, MemoStats]]) -> None:
        """Expose the runtime's caches (`stats()` read at each scrape); once per registry."""
        if self._caches is None:
            self._caches = _CacheCollector(stats)
            self.registry.register(self._caches)

    def watch_admission(self, in_flight: Callable[[], int], queued: Callable[[], int]) -> None:
        """Read the admission gate's counts at each scrape."""
        self.in_flight.set_function(in_flight)
        self.queued.set_function(queued)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CacheCollector(Collector):
    """Cache lookups by result, entries and bytes, read from the runtime when scraped."""

    def __init__(self, stats: Callable[[], Mapping[str, MemoStats]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "afm_cache_lookups", "Cache lookups by cache and result (hit, miss).",
            labels=["cache", "result"],
        )  # fmt: skip
        entries = GaugeMetricFamily("afm_cache_entries", "Entries held.", labels=["cache"])
        size = GaugeMetricFamily("afm_cache_bytes", "Bytes held, as counted.", labels=["cache"])
        for cache, stats in sorted(self.stats().items()):
            lookups.add_metric([cache, "hit"], stats.hits)
            lookups.add_metric([cache, "miss"], stats.misses)
            entries.add_metric([cache], stats.entries)
            size.add_metric([cache], stats.bytes)
        yield from (lookups, entries, size)
