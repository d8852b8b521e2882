"""Prometheus metrics of one service instance, in a registry of its own.

With several worker processes (`--workers N`), the supervisor sets `PROMETHEUS_MULTIPROC_DIR` to a
folder of its run directory before the workers start: every worker then writes its counters,
histograms and gauges to files there (prometheus_client's multiprocess mode), and `/metrics`,
whichever worker answers it, sums them over the workers. What a worker holds in memory (its
caches, its admission counts, the model it serves) is written there at the end of each of its
requests and at each scrape.
"""

from __future__ import annotations

import os
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
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.memo import MemoStats

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 700, 1000, 2000, 5000)
PROTOCOL_ROUTE = "(protocol)"
"""The route label of answers the HTTP protocol sends before any route runs (400, 408, 431)."""
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def shared_directory() -> str | None:
    """The folder the worker processes share their metrics in, or None for a single process."""
    return os.environ.get(MULTIPROCESS_DIR)


class ServiceMetrics:
    """Request, inference, unseen- and clipped-value and model metrics, exposed at `GET /metrics`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.shared = shared_directory()
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
        self.reloads = Counter(
            "afm_model_reloads", "Bundle loads by result (loaded, refused).", ["result"], registry=r
        )
        self.ready = Gauge(
            "afm_ready", "1 once a model is loaded and warmed (in every worker).",
            registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.admission = Counter(
            "afm_admission", "Inference requests by admission result (admitted, rejected, expired).",
            ["result"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "afm_requests_in_flight", "Inference requests holding a place now.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.queued = Gauge(
            "afm_requests_queued", "Inference requests waiting for a place now.",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.draining = Gauge(
            "afm_draining", "1 once a SIGTERM has started the drain before shutdown.",
            registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.model: Info | None = None
        self.model_by_worker: Gauge | None = None
        self.worker_requests: Gauge | None = None
        self._serving: tuple[str, str, str] | None = None
        if self.shared is None:
            self.model = Info("afm_model", "The bundle being served.", registry=r)
        else:
            self.model_by_worker = Gauge(
                "afm_model_info", "1 for a bundle some worker serves, 0 for one none serves now.",
                ["name", "task", "version"], registry=r, multiprocess_mode="livemax",
            )  # fmt: skip
            self.worker_requests = Gauge(
                "afm_worker_requests", "HTTP requests answered by each live worker (label pid).",
                registry=r, multiprocess_mode="liveall",
            )  # fmt: skip
        self._caches: _CacheCollector | None = None
        self._shared_caches: _SharedCaches | None = None
        self._admission: tuple[Callable[[], int], Callable[[], int]] | None = None
        self._admission_written = (0, 0)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_duration.labels(route).observe(seconds)
        if self.worker_requests is not None:
            self.worker_requests.inc()
            self.publish()

    def count_refused(self, status: int) -> None:
        """An answer the HTTP protocol sent before any route ran (the request was not valid
        HTTP/1.1, its headers too large or too slow)."""
        self.requests.labels(PROTOCOL_ROUTE, "-", str(status)).inc()

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
        if self.model is not None:
            self.model.info({"name": name, "version": str(version), "task": task})
        if self.model_by_worker is not None:
            if self._serving is not None:
                self.model_by_worker.labels(*self._serving).set(0)
            self._serving = (name, task, str(version))
            self.model_by_worker.labels(*self._serving).set(1)
        self.ready.set(1)

    def watch_caches(self, stats: Callable[[], Mapping[str, MemoStats]]) -> None:
        """Expose the runtime's caches (`stats()` read at each scrape, or with several workers
        written at the end of each request); once per registry."""
        if self.shared is not None:
            self._shared_caches = self._shared_caches or _SharedCaches(stats, self.registry)
        elif self._caches is None:
            self._caches = _CacheCollector(stats)
            self.registry.register(self._caches)

    def watch_admission(self, in_flight: Callable[[], int], queued: Callable[[], int]) -> None:
        """Read the admission gate's counts at each scrape (with several workers, also at the end
        of each request)."""
        if self.shared is not None:
            self._admission = (in_flight, queued)
        else:
            self.in_flight.set_function(in_flight)
            self.queued.set_function(queued)

    def publish(self) -> None:
        """Write what this worker holds in memory to the shared metric files."""
        if self._admission is not None:
            now = (self._admission[0](), self._admission[1]())
            if now != self._admission_written:
                self.in_flight.set(now[0])
                self.queued.set(now[1])
                self._admission_written = now
        if self._shared_caches is not None:
            self._shared_caches.publish()

    def render(self) -> bytes:
        if self.shared is None:
            return generate_latest(self.registry)
        self.publish()
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, self.shared)  # type: ignore[no-untyped-call]
        return generate_latest(every_worker)


def _cache_families() -> tuple[CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    lookups = CounterMetricFamily(
        "afm_cache_lookups", "Cache lookups by cache and result (hit, miss).",
        labels=["cache", "result"],
    )  # fmt: skip
    entries = GaugeMetricFamily("afm_cache_entries", "Entries held.", labels=["cache"])
    size = GaugeMetricFamily("afm_cache_bytes", "Bytes held, as counted.", labels=["cache"])
    return lookups, entries, size


class _CacheCollector(Collector):
    """Cache lookups by result, entries and bytes, read from the runtime when scraped."""

    def __init__(self, stats: Callable[[], Mapping[str, MemoStats]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        lookups, entries, size = _cache_families()
        for cache, stats in sorted(self.stats().items()):
            lookups.add_metric([cache, "hit"], stats.hits)
            lookups.add_metric([cache, "miss"], stats.misses)
            entries.add_metric([cache], stats.entries)
            size.add_metric([cache], stats.bytes)
        yield from (lookups, entries, size)


class _SharedCaches:
    """The same cache metrics as `_CacheCollector`, written by each worker to the shared files:
    lookups as counters (increased by what is new since the last write), entries and bytes as
    gauges summed over the live workers. Only what changed is written (each write to the files
    costs about a microsecond, and this runs at the end of every request)."""

    def __init__(self, stats: Callable[[], Mapping[str, MemoStats]], registry: CollectorRegistry):
        self.stats = stats
        lookups, entries, size = _cache_families()
        self.lookups = Counter(
            lookups.name, lookups.documentation, ["cache", "result"], registry=registry
        )
        self.entries = Gauge(
            entries.name, entries.documentation, ["cache"],
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.bytes = Gauge(
            size.name, size.documentation, ["cache"],
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.written: dict[str, MemoStats] = {}

    def publish(self) -> None:
        for cache, stats in self.stats().items():
            before = self.written.get(cache)
            if before == stats:
                continue
            if before is None:  # creating a series writes it, at 0
                before = MemoStats()
                for result in ("hit", "miss"):
                    self.lookups.labels(cache, result)
                self.entries.labels(cache)
                self.bytes.labels(cache)
            if stats.hits > before.hits:
                self.lookups.labels(cache, "hit").inc(stats.hits - before.hits)
            if stats.misses > before.misses:
                self.lookups.labels(cache, "miss").inc(stats.misses - before.misses)
            if stats.entries != before.entries or stats.bytes != before.bytes:
                self.entries.labels(cache).set(stats.entries)
                self.bytes.labels(cache).set(stats.bytes)
            self.written[cache] = stats
