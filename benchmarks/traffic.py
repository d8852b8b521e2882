"""Serving under abuse: memory, overload and a soak against a real `python -m service` process.

Issue 21's acceptance points, each scenario against a fresh server (pinned to CPU 0, the load to
CPU 1, as in benchmarks/serving.py) serving the serving benchmark's frappe-shaped bundle, with the
admission limits the service ships with unless `--server-env` says otherwise:

1. memory: a warm-up of repeated requests, then 50,000 requests whose context values (every
   categorical context field) are distinct strings of about 1 KB; the server's RSS after the run
   and its peak sampled during it, each minus the RSS after warm-up, must stay within 64 MB. The
   value cache's entries and bytes come from `/metrics`.
2. overload: saturation is the closed-loop maximum of 200s at 700 candidates (wrk, or the Python
   closed loop); then open-loop arrivals at 0.5x and at 4x that rate, 20 s each. At 4x the p99 of the
   admitted (200) requests must stay within 2x of their p99 at 0.5x, with none refused at 0.5x,
   the p99 of the 503s must be under 10 ms, and a `/healthz` prober (every 100 ms, its own
   keep-alive connection, 1 s timeout) must see every probe answered within 100 ms.
3. soak: 5 minutes of requests of 1, 10, 100 or 700 candidates drawn at random, open loop at half
   of that mix's closed-loop saturation; RSS sampled every 5 s, the mean of the first minute
   against the mean of the last within 5 %, and no answer other than 200.

The closed loops (the saturation runs and the memory run) run against a server of the same
settings but without the admission's wait bound (AFM_MAX_EXPECTED_WAIT_MS=0): a closed loop sends
each refused request again at once and would measure the refusals, not the capacity; the
open-loop phases run against a fresh server with the bound as configured.

Load is open loop: arrival times are fixed in advance and each latency is measured from the
request's scheduled send, so a stalled server is charged for the requests it delays. The client
is asyncio with raw HTTP/1.1 on keep-alive connections (uvloop when installed), not httpx: for
3,000 `GET /healthz` on 16 connections it spent 150 to 170 us of CPU a request against 3.0 to
3.5 ms for `httpx.AsyncClient` (2026-12-02, the shared dev machine), and on its one core the
generator must keep its schedule at 4x saturation. How far behind it fell is reported (send
lag) and flagged over 50 ms.

    .venv/bin/python -m benchmarks.traffic [--quick] [--bundle DIR] [--server-env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from benchmarks.serving import (
    CLIENT_CPU,
    RESULTS,
    ROOT,
    Server,
    _run,
    add_bundle_options,
    can_pin,
    cpu_model,
    find_bundle,
    load_average,
    pinned,
    python_saturation,
    ranking_request,
    service_server,
    wrk_saturation,
)
from service.process import HOST
from training import bundle as bundles
from training.bundle.features import CategoricalField, FeatureEncoder

LONG_VALUE_CHARS = 1000  # under the service's default AFM_MAX_VALUE_LENGTH of 1024
FILLER = "abcdefghijklmnopqrstuvwxyz0123456789" * (LONG_VALUE_CHARS // 36 + 1)
MEMORY_LIMIT_MB = 64.0
P99_RATIO_LIMIT = 2.0
REFUSAL_P99_LIMIT_MS = 10.0
PROBE_LIMIT_MS = 100.0
SOAK_DRIFT_LIMIT = 0.05
SOAK_SIZES = (1, 10, 100, 700)
SEND_LAG_LIMIT_MS = 50.0  # beyond it the generator, not the server, sets the latencies
IDLE_REUSE_SECONDS = 4.0  # the service closes keep-alive connections idle for 5 s


# -- the server process --------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of a process: psutil when installed, else VmRSS from /proc."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {pid}") from None
    return int(psutil.Process(pid).memory_info().rss)


class RssSampler:
    """Samples a process's RSS every `interval` seconds on a thread, between start and stop."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        started = time.perf_counter()
        while True:
            self.samples.append((time.perf_counter() - started, rss_bytes(self.pid)))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


METRIC_LINE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


def scrape(url: str) -> dict[str, float]:
    """`/metrics` as `name{labels}` -> value, for the few series the report quotes."""
    text = httpx.get(f"{url}/metrics", timeout=120).text  # a server may still be catching up
    values = {}
    for line in text.splitlines():
        if (match := METRIC_LINE.match(line)) is not None:
            name, labels, value = match.groups()
            values[f"{name}{{{labels}}}" if labels else name] = float(value)
    return values


WAIT_BOUND = "AFM_MAX_EXPECTED_WAIT_MS"
CAPACITY = {WAIT_BOUND: "0"}
"""For closed loops (saturation, the memory run): without the admission's wait bound, which
would refuse most of 8 connections' requests of 700 candidates, each sent again at once, so that
the loop measured refusals."""


@contextlib.contextmanager
def serving(
    bundle_dir: Path, pin: bool, log: Path, overrides: dict[str, str]
) -> Iterator[tuple[Server, int]]:
    """A fresh `python -m service` (the serving benchmark's settings but the service's own wait
    bound, one worker process, plus `overrides`), its pid."""
    server = service_server(bundle_dir, pin, log)
    del server.env[WAIT_BOUND]
    server.env.update({"AFM_WORKERS": "1", **overrides})
    pid = server.start().process.pid
    try:
        yield server, pid
    finally:
        server.stop()


# -- requests ------------------------------------------------------------------------------------


def post(port: int, body: bytes) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def get(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()


def long_context_body(encoder: FeatureEncoder, template: dict[str, Any], serial: int) -> bytes:
    """`template` (a ranking request) with every categorical context value replaced by a string
    of LONG_VALUE_CHARS that no other serial gives."""
    context = dict(template["context"])
    for f in encoder.fields:
        if f.name in context and isinstance(f, CategoricalField):
            prefix = f"{serial:09d}-{f.name}-"
            context[f.name] = prefix + FILLER[: LONG_VALUE_CHARS - len(prefix)]
    return orjson.dumps({**template, "context": context})


# -- the load generator --------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request: its status (0 when the connection failed or it timed out), the seconds from
    its scheduled send to the end of its answer, how late it was written (connecting included),
    and what went wrong when there is no answer."""

    status: int
    latency: float
    lag: float = 0.0
    error: str = ""
    due: float = 0.0


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def exchange(connection: Connection, request: bytes) -> tuple[int, bool]:
    """Send one request and read its answer; its status, and whether the connection stays open."""
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, keep = 0, True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    await reader.readexactly(length)
    return status, keep


class Pool:
    """Keep-alive connections to the server, reused most recent first, none idle past
    IDLE_REUSE_SECONDS (the server would have closed it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[float, Connection]] = []

    async def take(self) -> Connection:
        now = time.monotonic()
        while self.idle:
            last_used, connection = self.idle.pop()
            if now - last_used < IDLE_REUSE_SECONDS:
                return connection
            connection[1].close()
        return await asyncio.open_connection(HOST, self.port)

    async def fill(self, connections: int) -> None:
        """Open connections ahead of the load, so that connecting does not delay its start."""
        opened = await asyncio.gather(
            *(asyncio.open_connection(HOST, self.port) for _ in range(connections))
        )
        self.idle += [(time.monotonic(), connection) for connection in opened]

    def give(self, connection: Connection) -> None:
        self.idle.append((time.monotonic(), connection))

    def close(self) -> None:
        for _, (_, writer) in self.idle:
            writer.close()
        self.idle.clear()


async def timed(pool: Pool, request: bytes, due: float, timeout: float) -> Outcome:
    """One request on a pooled connection, timed from `due` (a perf_counter instant); its lag is
    from `due` to the moment it is written, connecting included."""
    lag = 0.0
    connection: Connection | None = None
    error = ""
    try:
        connection = await pool.take()
        lag = time.perf_counter() - due
        status, keep = await asyncio.wait_for(exchange(connection, request), timeout)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        status, keep, error = 0, False, type(e).__name__
    outcome = Outcome(status, time.perf_counter() - due, lag, error, due)
    if connection is not None:
        if keep:
            pool.give(connection)
        else:
            connection[1].close()
    return outcome


async def open_loop(
    port: int,
    body: Callable[[int], bytes],
    rate: float,
    seconds: float,
    timeout: float = 10.0,
    connections: int = 0,
) -> list[Outcome]:
    """Requests `body(0)`, `body(1)`, ... sent at a constant `rate` for `seconds`, each on a free
    keep-alive connection (`connections` opened ahead, a new one when none is free); latency from
    the scheduled send."""
    pool = Pool(port)
    await pool.fill(connections)
    total = max(1, int(rate * seconds))
    tasks = []
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(timed(pool, post(port, body(i)), due, timeout)))
    outcomes = list(await asyncio.gather(*tasks))
    pool.close()
    return outcomes


async def closed_loop(
    port: int,
    body: Callable[[int], bytes],
    connections: int,
    *,
    count: int | None = None,
    seconds: float | None = None,
    timeout: float = 10.0,
) -> tuple[list[Outcome], float]:
    """`connections` workers, each sending its next request when its last is answered, until
    `count` requests are sent or `seconds` have passed; the outcomes and the elapsed seconds."""
    outcomes: list[Outcome] = []
    serial = 0
    started = time.perf_counter()
    deadline = started + seconds if seconds is not None else float("inf")

    async def worker() -> None:
        nonlocal serial
        pool = Pool(port)
        while time.perf_counter() < deadline and (count is None or serial < count):
            request = post(port, body(serial))
            serial += 1
            outcomes.append(await timed(pool, request, time.perf_counter(), timeout))
        pool.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return outcomes, time.perf_counter() - started


async def probe(port: int, path: str, every: float, until: threading.Event) -> list[Outcome]:
    """GET `path` every `every` seconds on one keep-alive connection (a new one after a failure)
    until `until` is set; each timed from its scheduled send, 1 s timeout."""
    pool = Pool(port)
    outcomes = []
    started = time.perf_counter()
    i = 0
    while not until.is_set():
        due = started + i * every
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        outcomes.append(await timed(pool, get(port, path), due, 1.0))
        i += 1
    pool.close()
    return outcomes


class Prober:
    """`probe` on a thread with an event loop of its own, so that a busy load generator does not
    delay the probes; its outcomes once the block ends."""

    def __init__(self, port: int, path: str, every: float) -> None:
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(port, path, every), daemon=True)

    def _run(self, port: int, path: str, every: float) -> None:
        self.outcomes = asyncio.run(probe(port, path, every, self._stop))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- statistics ----------------------------------------------------------------------------------


def most_outstanding(outcomes: Sequence[Outcome]) -> int:
    """The most requests at once between their scheduled send and their answer."""
    events = sorted(
        [(o.due, 1) for o in outcomes] + [(o.due + o.latency, -1) for o in outcomes],
        key=lambda e: (e[0], e[1]),
    )
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def percentile_ms(latencies: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(latencies) * 1e3, q)) if latencies else None


@dataclass
class Phase:
    """An open-loop phase: the rate asked, the statuses, latencies of 200s and of 503s (ms)."""

    rate: float
    seconds: float
    statuses: dict[int, int]
    ok_p50_ms: float | None
    ok_p99_ms: float | None
    refused_p50_ms: float | None
    refused_p99_ms: float | None
    refused_max_ms: float | None
    send_lag_p99_ms: float | None
    errors: dict[str, int]
    most_outstanding: int

    @classmethod
    def of(cls, rate: float, seconds: float, outcomes: Sequence[Outcome]) -> Phase:
        ok = [o.latency for o in outcomes if o.status == 200]
        refused = [o.latency for o in outcomes if o.status == 503]
        return cls(
            rate,
            seconds,
            dict(sorted(Counter(o.status for o in outcomes).items())),
            percentile_ms(ok, 50),
            percentile_ms(ok, 99),
            percentile_ms(refused, 50),
            percentile_ms(refused, 99),
            max(refused) * 1e3 if refused else None,
            percentile_ms([o.lag for o in outcomes], 99),
            dict(Counter(o.error for o in outcomes if o.error)),
            most_outstanding(outcomes),
        )

    def count(self, *statuses: int) -> int:
        return sum(self.statuses.get(s, 0) for s in statuses)

    @property
    def failed(self) -> int:
        """Answers that are neither a 200 nor a 503 refusal, and requests with no answer."""
        return sum(n for s, n in self.statuses.items() if s not in (200, 503))


# -- the scenarios -------------------------------------------------------------------------------


MB = 1 << 20


@dataclass
class MemoryResult:
    requests: int
    candidates: int
    warmup_requests: int
    statuses: dict[int, int]
    rate: float
    warm_rss_mb: float
    after_rss_mb: float
    peak_rss_mb: float
    value_cache_entries: float
    value_cache_mb: float
    value_cache_max_mb: float
    load: str

    @property
    def growth_mb(self) -> float:
        return self.after_rss_mb - self.warm_rss_mb

    @property
    def peak_growth_mb(self) -> float:
        return self.peak_rss_mb - self.warm_rss_mb

    @property
    def met(self) -> bool:
        return max(self.growth_mb, self.peak_growth_mb) <= MEMORY_LIMIT_MB


def memory_scenario(
    bundle_dir: Path, encoder: FeatureEncoder, args: argparse.Namespace, pin: bool, work: Path
) -> MemoryResult:
    template = ranking_request(encoder, args.memory_candidates)
    repeated = long_context_body(encoder, template, 0)
    overrides = {**args.server_env, **CAPACITY}
    with serving(bundle_dir, pin, work / "memory.log", overrides) as (server, pid):
        with pinned(CLIENT_CPU, pin):
            _run(closed_loop(server.port, lambda _: repeated, 8, count=args.warmup_requests))
            time.sleep(1.0)
            warm = rss_bytes(pid)
            with RssSampler(pid, 0.25) as sampler:
                outcomes, elapsed = _run(
                    closed_loop(
                        server.port,
                        lambda i: long_context_body(encoder, template, i + 1),
                        8,
                        count=args.memory_requests,
                    )
                )
            time.sleep(1.0)
            after = rss_bytes(pid)
        metrics = scrape(server.url)
    peak = max([after, *(rss for _, rss in sampler.samples)])
    settings_max = float(args.server_env.get("AFM_VALUE_CACHE_BYTES", 32 << 20))
    return MemoryResult(
        requests=len(outcomes),
        candidates=args.memory_candidates,
        warmup_requests=args.warmup_requests,
        statuses=dict(sorted(Counter(o.status for o in outcomes).items())),
        rate=len(outcomes) / elapsed,
        warm_rss_mb=warm / MB,
        after_rss_mb=after / MB,
        peak_rss_mb=peak / MB,
        value_cache_entries=metrics.get('afm_cache_entries{cache="values"}', float("nan")),
        value_cache_mb=metrics.get('afm_cache_bytes{cache="values"}', float("nan")) / MB,
        value_cache_max_mb=settings_max / MB,
        load=load_average(),
    )


@dataclass
class OverloadResult:
    candidates: int
    saturation_rate: float
    saturation_generator: str
    half: Phase
    over: Phase
    probes: int
    probe_failures: int
    probe_max_ms: float | None
    probe_p99_ms: float | None
    admission: dict[str, float]
    load: str

    @property
    def p99_ratio(self) -> float | None:
        if self.half.ok_p99_ms is None or self.over.ok_p99_ms is None:
            return None
        return self.over.ok_p99_ms / self.half.ok_p99_ms

    @property
    def generator_kept_up(self) -> bool:
        """Whether the load generator sent on schedule; when not, it measured itself too."""
        lags = (self.half.send_lag_p99_ms, self.over.send_lag_p99_ms)
        return all(lag is not None and lag < SEND_LAG_LIMIT_MS for lag in lags)

    @property
    def latency_met(self) -> bool:
        """The ratio within its limit, with nothing refused at half saturation (refusing there
        would buy the ratio with requests the server had the capacity for)."""
        return (
            self.p99_ratio is not None
            and self.p99_ratio <= P99_RATIO_LIMIT
            and self.half.count(503) == 0
        )

    @property
    def refusals_met(self) -> bool:
        p99 = self.over.refused_p99_ms
        return p99 is not None and p99 < REFUSAL_P99_LIMIT_MS

    @property
    def probes_met(self) -> bool:
        return (
            self.probes > 0
            and self.probe_failures == 0
            and self.probe_max_ms is not None
            and self.probe_max_ms < PROBE_LIMIT_MS
        )


def saturation_rate(
    server: Server, body: bytes, args: argparse.Namespace, pin: bool, work: Path
) -> tuple[float, str]:
    """The closed-loop maximum of 200s per second (wrk when installed, else the Python loop);
    refusals are not counted, since a server that refuses quickly would seem faster."""
    seconds = args.saturation_seconds
    if shutil.which("wrk") is not None and not args.python_saturation:
        body_file = work / "overload.json"
        body_file.write_bytes(body)
        wrk_saturation(server.url, body_file, args.connections, 1, pin, work)  # warm-up
        load = wrk_saturation(server.url, body_file, args.connections, seconds, pin, work)
        generator = f"wrk -t1 -c{args.connections} -d{seconds:g}s"
    else:
        python_saturation(server.port, body, args.connections, 1, pin)  # warm-up
        load = python_saturation(server.port, body, args.connections, seconds, pin)
        generator = f"Python closed loop, {args.connections} connections, {seconds:g} s"
    if load.errors:
        generator += f", {load.errors:,} of {load.requests:,} answers not 200 and not counted"
    return (load.requests - load.errors) / load.seconds, generator


def overloaded(
    port: int, body: bytes, rate: float, seconds: float, connections: int
) -> tuple[list[Outcome], list[Outcome]]:
    """Open loop at `rate` (`connections` opened ahead) with a `/healthz` prober every 100 ms
    beside it; the outcomes of both."""
    with Prober(port, "/healthz", 0.1) as prober:
        outcomes = _run(open_loop(port, lambda _: body, rate, seconds, connections=connections))
    return outcomes, prober.outcomes


def overload_scenario(
    bundle_dir: Path, encoder: FeatureEncoder, args: argparse.Namespace, pin: bool, work: Path
) -> OverloadResult:
    body = orjson.dumps(ranking_request(encoder, args.overload_candidates))
    capacity = {**args.server_env, **CAPACITY}
    with serving(bundle_dir, pin, work / "overload-capacity.log", capacity) as (server, _):
        rate, generator = saturation_rate(server, body, args, pin, work)
    with serving(bundle_dir, pin, work / "overload.log", args.server_env) as (server, _):
        seconds = args.phase_seconds
        with pinned(CLIENT_CPU, pin):
            # one request at a time, so that nothing waits and none is refused: the caches and
            # the measured time per request warm up as on the saturation server
            warm_up = min(2.0, args.saturation_seconds)
            _run(closed_loop(server.port, lambda _: body, 1, seconds=warm_up))
            half = _run(open_loop(server.port, lambda _: body, rate / 2, seconds, connections=16))
            over, probes = overloaded(server.port, body, rate * 4, seconds, args.open_connections)
            print(f"  4x: {_phase(Phase.of(rate * 4, seconds, over))}", file=sys.stderr)
        metrics = scrape(server.url)
    probe_ok = [o.latency for o in probes if o.status == 200]
    return OverloadResult(
        candidates=args.overload_candidates,
        saturation_rate=rate,
        saturation_generator=generator,
        half=Phase.of(rate / 2, seconds, half),
        over=Phase.of(rate * 4, seconds, over),
        probes=len(probes),
        probe_failures=sum(o.status != 200 for o in probes),
        probe_max_ms=max(o.latency for o in probes) * 1e3 if probes else None,
        probe_p99_ms=percentile_ms(probe_ok, 99),
        admission={
            result: metrics.get(f'afm_admission_total{{result="{result}"}}', 0.0)
            for result in ("admitted", "rejected", "expired")
        },
        load=load_average(),
    )


@dataclass
class SoakResult:
    seconds: float
    saturation_rate: float
    phase: Phase
    rss_samples_mb: list[tuple[float, float]]
    window_seconds: float
    first_mean_mb: float
    last_mean_mb: float
    load: str

    @property
    def drift(self) -> float:
        return self.last_mean_mb / self.first_mean_mb - 1

    @property
    def errors(self) -> int:
        return self.phase.count(*(s for s in self.phase.statuses if s != 200))

    @property
    def met(self) -> bool:
        return abs(self.drift) <= SOAK_DRIFT_LIMIT and self.errors == 0


def soak_scenario(
    bundle_dir: Path, encoder: FeatureEncoder, args: argparse.Namespace, pin: bool, work: Path
) -> SoakResult:
    bodies = {n: orjson.dumps(ranking_request(encoder, n)) for n in SOAK_SIZES}
    draw = random.Random(0)
    sizes = [draw.choice(SOAK_SIZES) for _ in range(1 << 16)]

    def mixed(i: int) -> bytes:
        return bodies[sizes[i % len(sizes)]]

    seconds = args.soak_seconds
    log = work / "soak.log"
    warm_up = min(1.0, args.saturation_seconds)
    capacity = {**args.server_env, **CAPACITY}
    capacity_log = work / "soak-capacity.log"
    with serving(bundle_dir, pin, capacity_log, capacity) as (server, _), pinned(CLIENT_CPU, pin):
        _run(closed_loop(server.port, mixed, args.connections, seconds=warm_up))
        outcomes, elapsed = _run(
            closed_loop(server.port, mixed, args.connections, seconds=args.saturation_seconds)
        )
    saturation = sum(o.status == 200 for o in outcomes) / elapsed
    with serving(bundle_dir, pin, log, args.server_env) as (server, pid), pinned(CLIENT_CPU, pin):
        _run(closed_loop(server.port, mixed, args.connections, seconds=warm_up))
        with RssSampler(pid, args.rss_interval) as sampler:
            soaked = _run(open_loop(server.port, mixed, saturation / 2, seconds, connections=16))
    samples = [(t, rss / MB) for t, rss in sampler.samples]
    window = min(60.0, seconds / 5)
    first = [rss for t, rss in samples if t <= window]
    last = [rss for t, rss in samples if t >= samples[-1][0] - window]
    return SoakResult(
        seconds=seconds,
        saturation_rate=saturation,
        phase=Phase.of(saturation / 2, seconds, soaked),
        rss_samples_mb=samples,
        window_seconds=window,
        first_mean_mb=float(np.mean(first)),
        last_mean_mb=float(np.mean(last)),
        load=load_average(),
    )


# -- the report ----------------------------------------------------------------------------------


@dataclass
class TrafficReport:
    """The scenarios run (None for one left out) and the run's header."""

    header: dict[str, str]
    memory: MemoryResult | None
    overload: OverloadResult | None
    soak: SoakResult | None

    def met(self) -> dict[str, bool]:
        met = {}
        if self.memory is not None:
            met["memory"] = self.memory.met
        if self.overload is not None:
            met["admitted_p99"] = self.overload.latency_met
            met["refusals_p99"] = self.overload.refusals_met
            met["healthz"] = self.overload.probes_met
        if self.soak is not None:
            met["soak"] = self.soak.met
        return met

    def as_json(self) -> dict[str, Any]:
        derived: dict[str, Any] = {"met": self.met()}
        if self.memory is not None:
            derived["memory_growth_mb"] = self.memory.growth_mb
            derived["memory_peak_growth_mb"] = self.memory.peak_growth_mb
        if self.overload is not None:
            derived["overload_p99_ratio"] = self.overload.p99_ratio
            derived["overload_generator_kept_up"] = self.overload.generator_kept_up
        if self.soak is not None:
            derived["soak_drift"] = self.soak.drift
            derived["soak_errors"] = self.soak.errors
        return {**asdict(self), "derived": derived}

    def markdown(self) -> str:
        met = {k: "met" if v else "**not met**" for k, v in self.met().items()}
        rows: list[tuple[str, str, str, str]] = []
        notes: list[str] = []
        if (m := self.memory) is not None:
            rows.append(
                (
                    f"RSS after {m.requests:,} requests of distinct ~1 KB context values, minus "
                    "warm-up",
                    f"+{m.growth_mb:.1f} MB after, +{m.peak_growth_mb:.1f} MB peak (warm "
                    f"{m.warm_rss_mb:.0f} MB); value cache {m.value_cache_entries:,.0f} entries, "
                    f"{m.value_cache_mb:.1f} of {m.value_cache_max_mb:.0f} MB",
                    f"≤ +{MEMORY_LIMIT_MB:.0f} MB",
                    met["memory"],
                )
            )
            notes.append(
                f"- memory: {m.requests:,} requests of {m.candidates} candidates at "
                f"{m.rate:,.0f}/s (closed loop, 8 connections), statuses {m.statuses}, after "
                f"{m.warmup_requests:,} warm-up requests; load {m.load}"
            )
        if (o := self.overload) is not None:
            ratio = "-" if o.p99_ratio is None else f"{o.p99_ratio:.2f}x"
            rows += [
                (
                    "p99 of admitted requests at 4x saturation over p99 at 0.5x; requests "
                    "refused at 0.5x",
                    f"{ratio} ({_ms(o.over.ok_p99_ms)} / {_ms(o.half.ok_p99_ms)}); "
                    f"{o.half.count(503):,} of {sum(o.half.statuses.values()):,}",
                    f"≤ {P99_RATIO_LIMIT:g}x; 0",
                    met["admitted_p99"],
                ),
                (
                    "p99 of the 503s at 4x saturation",
                    f"{_ms(o.over.refused_p99_ms)} ({o.over.count(503):,} refused, max "
                    f"{_ms(o.over.refused_max_ms)})",
                    f"< {REFUSAL_P99_LIMIT_MS:g} ms",
                    met["refusals_p99"],
                ),
                (
                    "`/healthz` every 100 ms during 4x saturation",
                    f"max {_ms(o.probe_max_ms)}, {o.probe_failures} of {o.probes} failed",
                    f"all < {PROBE_LIMIT_MS:g} ms",
                    met["healthz"],
                ),
            ]
            if not o.generator_kept_up:
                notes.append(
                    f"- overload: **the load generator fell behind its schedule** (send lag p99 "
                    f"over {SEND_LAG_LIMIT_MS:g} ms), so its latencies are partly its own"
                )
            notes.append(
                f"- overload, {o.candidates} candidates: saturation {o.saturation_rate:,.0f} "
                f"req/s ({o.saturation_generator}); 0.5x: {_phase(o.half)}; 4x: "
                f"{_phase(o.over)}; server admission counts {_counts(o.admission)}; "
                f"`/healthz` p99 {_ms(o.probe_p99_ms)}; load {o.load}"
            )
        if (s := self.soak) is not None:
            rss = [r for _, r in s.rss_samples_mb]
            rows.append(
                (
                    f"soak, {s.seconds:g} s of 1/10/100/700 candidates at half saturation: RSS, "
                    f"mean of the last {s.window_seconds:g} s over the first {s.window_seconds:g} s",
                    f"{s.drift:+.1%} ({s.first_mean_mb:.1f} → {s.last_mean_mb:.1f} MB), "
                    f"{s.errors} errors of {sum(s.phase.statuses.values()):,} requests",
                    f"±{SOAK_DRIFT_LIMIT:.0%}, 0 errors",
                    met["soak"],
                )
            )
            notes.append(
                f"- soak: closed-loop saturation of the mix {s.saturation_rate:,.0f} req/s; "
                f"{_phase(s.phase)}; RSS {min(rss):.1f} to {max(rss):.1f} MB over {len(rss)} "
                f"samples; load {s.load}"
            )
        lines = [
            "## Serving under abuse",
            "",
            *(f"- {k}: {v}" for k, v in self.header.items()),
            "",
            "| target | measured | limit | |",
            "|---|---|---|---|",
            *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
            "",
            *notes,
        ]
        return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _phase(p: Phase) -> str:
    return (
        f"{p.rate:,.0f} req/s for {p.seconds:g} s, statuses {p.statuses}, 200s p50 "
        f"{_ms(p.ok_p50_ms)} p99 {_ms(p.ok_p99_ms)}, 503s p50 {_ms(p.refused_p50_ms)} p99 "
        f"{_ms(p.refused_p99_ms)}, send lag p99 {_ms(p.send_lag_p99_ms)}"
        + f", at most {p.most_outstanding} outstanding"
        + (f", no answer: {p.errors}" if p.errors else "")
    )


def _counts(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.0f}" for k, v in counts.items())


# -- the command ---------------------------------------------------------------------------------


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("AFM_"):
        raise argparse.ArgumentTypeError(f"expected AFM_NAME=VALUE, got {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.traffic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bundle_options(parser)
    parser.add_argument(
        "--quick", action="store_true",
        help="a smoke run of a few seconds a scenario (300 requests, 2 s phases, 4 s soak)",
    )  # fmt: skip
    parser.add_argument(
        "--only", choices=["memory", "overload", "soak"], nargs="+",
        default=["memory", "overload", "soak"], help="scenarios to run (default all)",
    )  # fmt: skip
    parser.add_argument(
        "--server-env", type=_setting, action="append", default=[], metavar="AFM_NAME=VALUE",
        help="a setting for the servers beyond the serving benchmark's (repeatable)",
    )  # fmt: skip
    parser.add_argument("--memory-requests", type=int, default=50_000)
    parser.add_argument("--warmup-requests", type=int, default=2_000)
    parser.add_argument("--memory-candidates", type=int, default=10)
    parser.add_argument(
        "--overload-candidates", type=int, default=700,
        help="candidates per overload request (default 700: at 4x saturation with 100, over "
        "1,000 requests/s, the Python generator falls behind on a shared core)",
    )  # fmt: skip
    parser.add_argument(
        "--phase-seconds", type=float, default=20.0, help="each open-loop phase (default 20)"
    )
    parser.add_argument(
        "--saturation-seconds", type=float, default=5.0, help="closed-loop saturation run"
    )
    parser.add_argument(
        "--connections", type=int, default=8,
        help="connections of the closed-loop saturation runs (default 8)",
    )  # fmt: skip
    parser.add_argument(
        "--open-connections", type=int, default=256,
        help="connections opened ahead of the 4x phase (more are opened when all are busy)",
    )  # fmt: skip
    parser.add_argument(
        "--python-saturation", action="store_true", help="the Python closed loop even with wrk"
    )
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--rss-interval", type=float, default=5.0, help="soak RSS sampling (s)")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the server and the load to CPUs"
    )
    return parser


QUICK = {
    "memory_requests": 300,
    "warmup_requests": 50,
    "phase_seconds": 2.0,
    "saturation_seconds": 1.0,
    "soak_seconds": 4.0,
    "rss_interval": 0.5,
}


def main(argv: Sequence[str] | None = None) -> TrafficReport:
    """Run the scenarios; prints the markdown report, writes it and its JSON to
    benchmarks/results/, and returns it."""
    parser = build_parser()
    given = list(argv) if argv is not None else sys.argv[1:]
    args = parser.parse_args(given)
    if args.quick:
        defaults = parser.parse_args([])
        for name, value in QUICK.items():
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
    args.server_env = dict(args.server_env)
    pin = not args.no_pin and can_pin()
    bundle_dir = find_bundle(args.bundle, args.models_dir, rebuild=False).resolve()
    encoder = bundles.read(bundle_dir).encoder
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="traffic-", dir=RESULTS))
    started = dt.datetime.now(dt.UTC)
    load_before = load_average()
    print(f"traffic benchmark on {bundle_dir}, load {load_before}", file=sys.stderr)

    memory: MemoryResult | None = None
    overload: OverloadResult | None = None
    soak: SoakResult | None = None
    if "memory" in args.only:
        memory = memory_scenario(bundle_dir, encoder, args, pin, work)
        print(f"  memory: {memory}", file=sys.stderr)
    if "overload" in args.only:
        overload = overload_scenario(bundle_dir, encoder, args, pin, work)
        print(f"  overload: {overload}", file=sys.stderr)
    if "soak" in args.only:
        soak = soak_scenario(bundle_dir, encoder, args, pin, work)
        print(f"  soak: {soak.phase}, drift {soak.drift:+.2%}", file=sys.stderr)

    relative = bundle_dir.relative_to(ROOT) if bundle_dir.is_relative_to(ROOT) else bundle_dir
    header = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "`" + shlex.join([".venv/bin/python", "-m", "benchmarks.traffic", *given]) + "`",
        "bundle": f"{relative}, {len(encoder.fields)} fields",
        "server": (
            "a fresh `python -m service` per scenario, AFM_WORKERS=1, AFM_INTRA_OP_THREADS=1, "
            "access log off, admission settings "
            + (
                ", ".join(f"{k}={v}" for k, v in args.server_env.items())
                if args.server_env
                else "the defaults"
            )
        ),
        "pinning": "server on CPU 0, load on CPU 1" if pin else "none",
        "load average": f"{load_before} before, {load_average()} after (1, 5, 15 min)",
    }
    report = TrafficReport(header, memory, overload, soak)
    text = report.markdown()
    print(text)
    (RESULTS / "traffic.md").write_text(text)
    (RESULTS / "traffic.json").write_text(json.dumps(report.as_json(), indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return report


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
