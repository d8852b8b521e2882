"""Serving throughput and latency: the HTTP service against the in-process onnxruntime limit.

DESIGN.md, "Performance budget": the service should reach at least 0.75 of what onnxruntime does
in-process with one thread on the same graph, with p99 under 30 ms at 700 candidates at half of
saturation. Measured here, on one machine, with the server pinned to CPU 0 and the load generator
to CPU 1:

* the limit (peer 1): onnxruntime in this process, pinned to CPU 0, one intra-op thread, the
  service's own session options, scoring pre-encoded batches of 100 and 700 rows;
* the service's request path without HTTP (a diagnostic): parse + validate + encode + predict +
  serialise a request body in-process, to split the gap between HTTP and the rest;
* the service (ours): `python -m service` under `taskset -c 0`, AFM_INTRA_OP_THREADS=1, access log
  off, AFM_MAX_EXPECTED_WAIT_MS=0 (this measures capacity: with the admission's wait bound, wrk's
  closed loop would send each refused request again at once and measure the refusals; the
  overload benchmark, benchmarks/traffic.py, measures the bound); one worker, and two worker
  processes (`--workers 2`) sharing CPU 0, to see what the supervisor and the shared metrics
  cost and whether each worker takes a fair share of the requests (on two CPUs with the load on
  one, two workers cannot run faster than one);
* the tutorial service (peer 2): benchmarks/peers/tutorial_service.py (FastAPI, a pydantic object
  per candidate, PyTorch eager) under the same pinning and load;
* a lean hand-written FastAPI + onnxruntime service (peer 3): benchmarks/peers/lean_fastapi.py (one
  pydantic model, one session, one route);
* BentoML serving the same ONNX graph with onnxruntime (peer 4):
  benchmarks/peers/bentoml_service.py, in a virtual environment of its own installed from PyPI on
  first use (benchmarks/.envs/bentoml), one API worker.

Request sizes: 1 candidate (at --batch-connections, 64, connections: what dynamic batching is
for), 100 and 700 (at --connections, 8). After the table, this service's ratios over each other
way of serving, per server CPU-second and in requests/s at saturation.

The bundle is frappe-shaped: AFM with k=64 and t=64 trained for one epoch on 20,000 rows of the
synthetic data set (11 fields: frappe's 10 plus a numeric price). Requests rank 100 or 700
candidates: the context holds each field's most frequent training value (and the mean price),
the candidates are distinct item values.

Load: saturation throughput comes from `wrk` (closed loop, one thread, --connections; install it
with `apt-get install -y wrk`; without it a Python closed-loop generator is used and the table
says so). Latency comes from an open-loop generator in this process (asyncio, raw HTTP/1.1 on
keep-alive connections, no client library in the way), sending at a constant rate of half the
measured saturation request rate and timing each request from its scheduled send time, so a
stalled server is charged for the requests it delays (as wrk2 would; wrk2 is not packaged).

Scored rows/s = requests/s x candidates. Ratios within one run are the point; absolute numbers on
a shared two-core machine are noise (the load average is printed with each result). Because other
jobs take CPU time from the pinned server and the in-process limit unevenly, the table also gives
scored rows per CPU-second: the server's own CPU time (/proc/PID/stat, all its threads) during the
saturation run, and the thread CPU time of the in-process loops; shares computed on those are the
steadier ones on a busy machine. The limit is measured before and after the servers and the better
of the two is used.

    .venv/bin/python -m benchmarks.serving [--bundle DIR] [--duration 5] [--no-tutorial]
        [--no-lean] [--no-bentoml] [--sizes 1 100 700]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from service.process import HOST, ServerProcess, free_port, service_command
from service.process import start as start_server
from training import bundle as bundles
from training.bundle.features import CategoricalField, FeatureEncoder, HashedField

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = RESULTS / "models"
BUNDLE_NAME = "bench-afm"
TRAIN_ARGS = [
    "--dataset", "synthetic", "--model", "afm", "--embedding-dim", "64", "--attention-dim", "64",
    "--epochs", "1", "--max-rows", "20000", "--seed", "0",
]  # fmt: skip
SERVER_CPU, CLIENT_CPU = 0, 1

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("%(body)s", "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '@@{"requests": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


# -- machine -------------------------------------------------------------------------------------


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0)


@contextlib.contextmanager
def pinned(cpu: int, enabled: bool) -> Iterator[None]:
    """Run this process on one CPU for the duration of the block."""
    if not enabled:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def taskset(cpu: int, enabled: bool) -> list[str]:
    return ["taskset", "-c", str(cpu)] if enabled and shutil.which("taskset") else []


# -- bundle and requests -------------------------------------------------------------------------


def build_bundle(models_dir: Path) -> Path:
    """Train and publish the frappe-shaped AFM (one epoch, ~20 s); returns the bundle folder."""
    command = [
        sys.executable, "-m", "training", "train", *TRAIN_ARGS,
        "--out", str(models_dir), "--name", BUNDLE_NAME, "--threads", "2",
    ]  # fmt: skip
    print(f"building the bundle: {shlex.join(command)}", file=sys.stderr)
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return bundles.resolve(models_dir, BUNDLE_NAME)


def find_bundle(path: Path | None, models_dir: Path, rebuild: bool) -> Path:
    if path is not None:
        return path
    if not rebuild:
        with contextlib.suppress(bundles.BundleError):
            return bundles.resolve(models_dir, BUNDLE_NAME)
    return build_bundle(models_dir)


def ranking_request(encoder: FeatureEncoder, candidates: int) -> dict[str, Any]:
    """A realistic ranking request: the context from training vocabularies, distinct items."""
    item = "item" if "item" in encoder.names else encoder.names[-1]
    context: dict[str, Any] = {}
    for f in encoder.fields:
        if f.name == item:
            continue
        if isinstance(f, CategoricalField):
            context[f.name] = next(iter(f.vocabulary))  # the most frequent value
        elif isinstance(f, HashedField):
            context[f.name] = (f.examples(n=1) or [""])[0]  # a frequent training value
        else:
            context[f.name] = round(f.representatives()[0], 2)  # the mean or a bucket
    items = list(encoder.field(item).examples(n=candidates))
    if len(items) < candidates:
        items += [f"unseen-{i}" for i in range(candidates - len(items))]
    return {"context": context, "candidates": [{item: v} for v in items[:candidates]]}


# -- peer 1: the in-process limit ----------------------------------------------------------------


def limit_rows_per_second(
    bundle_dir: Path, requests: dict[int, dict[str, Any]], seconds: float
) -> dict[int, Rate]:
    """onnxruntime in-process, one thread, the service's session options, pre-encoded batches."""
    from service.runtime import SCORE

    bundle = bundles.read(bundle_dir)
    session = bundle.session(bundles.session_options(intra_op_threads=1))
    results = {}
    for n, request in requests.items():
        rows = [{**request["context"], **c} for c in request["candidates"]]
        encoded = bundle.encoder.encode(
            {name: [r[name] for r in rows] for name in bundle.encoder.names}
        )
        feeds = {"feature_index": encoded.index, "feature_value": encoded.value}
        results[n] = _loop_rate(lambda feeds=feeds: session.run(SCORE, feeds), seconds, n)
    return results


def request_path_rows_per_second(
    bundle_dir: Path, bodies: dict[int, bytes], seconds: float
) -> dict[int, Rate]:
    """The service's own request path without HTTP: parse, validate, encode, score, serialise."""
    from service.runtime import ModelRuntime
    from service.settings import Settings

    settings = Settings(
        models_dir=bundle_dir.parent.parent, model_name=bundle_dir.parent.name, intra_op_threads=1
    )
    model = ModelRuntime(settings).load(bundle_dir.parent.name, int(bundle_dir.name))

    def handle(body: bytes) -> bytes:
        return orjson.dumps(
            model.predict(model.schemas.parse_predict(body)), option=orjson.OPT_SERIALIZE_NUMPY
        )

    return {n: _loop_rate(lambda b=body: handle(b), seconds, n) for n, body in bodies.items()}


@dataclass
class Rate:
    """Scored rows per second of wall time and per second of CPU time, and per-call latency."""

    wall: float
    cpu: float
    p50_ms: float | None = None
    p99_ms: float | None = None


def _loop_rate(call: Any, seconds: float, rows: int) -> Rate:
    """Rows per second of `call` (each scoring `rows`), after a warm-up, over about `seconds`."""
    for _ in range(20):
        call()
    times = []
    cpu, started = time.thread_time(), time.perf_counter()
    deadline = started + seconds
    now = started
    while now < deadline:
        call()
        last, now = now, time.perf_counter()
        times.append(now - last)
    cpu = time.thread_time() - cpu
    ms = np.asarray(times) * 1e3
    wall = len(times) * rows / (now - started)
    return Rate(wall, len(times) * rows / cpu, *np.percentile(ms, [50, 99]).tolist())


# -- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    """A server to measure: its command (listening on `port`) and the environment it adds."""

    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    log: Path
    running: ServerProcess | None = None
    workers: int = 1

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 90.0) -> ServerProcess:
        self.running = start_server(
            self.command, self.port, self.log, env={**os.environ, **self.env}, cwd=ROOT,
            timeout=timeout,
        )  # fmt: skip
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop(timeout=10)


def service_server(bundle_dir: Path, pin: bool, log: Path, workers: int = 1) -> Server:
    port = free_port()
    command = [
        *taskset(SERVER_CPU, pin),
        *service_command(
            port, "--models-dir", str(bundle_dir.parent.parent),
            "--model-name", bundle_dir.parent.name, "--model-version", bundle_dir.name,
            "--log-level", "warning",
        ),
    ]  # fmt: skip
    # capacity, not overload policy: without the wait bound, as wrk's closed loop sends each
    # refused request again at once and would measure a storm of 503s
    env = {
        "AFM_INTRA_OP_THREADS": "1", "AFM_ACCESS_LOG": "false", "AFM_MAX_CANDIDATES": "1000",
        "AFM_WORKERS": str(workers), "AFM_MAX_EXPECTED_WAIT_MS": "0",
    }  # fmt: skip
    name = "service" if workers == 1 else f"service, {workers} workers"
    return Server(name, command, env, port, log, workers=workers)


def uvicorn_peer(name: str, app: str, bundle_dir: Path, pin: bool, log: Path) -> Server:
    """A peer that is an ASGI `app` (module:attribute) under plain uvicorn, on the bundle."""
    port = free_port()
    command = [
        *taskset(SERVER_CPU, pin), sys.executable, "-m", "uvicorn", app, "--host", HOST,
        "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = {"AFM_BUNDLE": str(bundle_dir), "AFM_INTRA_OP_THREADS": "1"}
    return Server(name, command, env, port, log)


def bentoml_server(bundle_dir: Path, pin: bool, log: Path) -> Server:
    from benchmarks.peers import bentoml_service

    bentoml_service.ensure_env()
    port = free_port()
    command = [*taskset(SERVER_CPU, pin), *bentoml_service.serve_command(port, HOST)]
    env = {
        "AFM_BUNDLE": str(bundle_dir), "AFM_INTRA_OP_THREADS": "1", "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_CONFIG_OPTIONS": "api_server.logging.access.enabled=false",
    }  # fmt: skip
    return Server("bentoml", command, env, port, log)


# -- load ----------------------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    seconds: float
    errors: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def wrk_saturation(
    url: str, body_file: Path, connections: int, seconds: float, pin: bool, work: Path
) -> Load:
    script = work / f"{body_file.stem}.lua"
    script.write_text(LUA % {"body": body_file})
    command = [
        *taskset(CLIENT_CPU, pin), "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
        "--timeout", "10s", "-s", str(script), f"{url}/predict",
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("@@"))
    s = json.loads(line[2:])
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    return Load(s["requests"], s["duration_us"] / 1e6, errors, s["p50_us"] / 1e3, s["p99_us"] / 1e3)


def http_request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> bool:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status == 200


async def _closed_loop(port: int, request: bytes, connections: int, seconds: float) -> Load:
    done, errors = 0, 0
    deadline = 0.0

    async def worker() -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection(HOST, port)
        while time.perf_counter() < deadline:
            ok = await _exchange(reader, writer, request)
            done, errors = done + 1, errors + (not ok)
        writer.close()

    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(worker() for _ in range(connections)))
    return Load(done, time.perf_counter() - started, errors)


async def _open_loop(port: int, request: bytes, rate: float, seconds: float) -> Load:
    """Send at a constant rate; latency from each request's scheduled time to its response."""
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    errors = 0

    async def one(due: float) -> None:
        nonlocal errors
        conn = idle.pop() if idle else await asyncio.open_connection(HOST, port)
        try:
            ok = await _exchange(*conn, request)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            # a keep-alive connection the server closed while it sat idle (uvicorn's 5 s
            # timeout_keep_alive): send again on a new one, as HTTP clients do
            conn[1].close()
            conn = await asyncio.open_connection(HOST, port)
            ok = await _exchange(*conn, request)
        latencies.append(time.perf_counter() - due)
        errors += not ok
        idle.append(conn)

    total = max(1, int(rate * seconds))
    tasks = []
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    for _, writer in idle:
        writer.close()
    ms = np.asarray(latencies) * 1e3
    return Load(
        total,
        elapsed,
        errors,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        latencies,
    )


def python_saturation(port: int, body: bytes, connections: int, seconds: float, pin: bool) -> Load:
    with pinned(CLIENT_CPU, pin):
        return _run(_closed_loop(port, http_request(port, body), connections, seconds))


def open_loop_latency(port: int, body: bytes, rate: float, seconds: float, pin: bool) -> Load:
    request = http_request(port, body)
    with pinned(CLIENT_CPU, pin):
        _run(_open_loop(port, request, rate, min(1.0, seconds)))  # warm-up, not counted
        return _run(_open_loop(port, request, rate, seconds))


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


# -- the run -------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> float:
    """CPU time of a server process and of its live descendants (the workers of `--workers N`,
    BentoML's supervisor and its API worker)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    total += server_cpu_seconds(int(child))
    return total


def answers_by_worker(url: str) -> dict[str, float]:
    """`afm_worker_requests` of each worker (by pid) from the service's `/metrics`."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.findall(r'^afm_worker_requests\{pid="(\d+)"\} (\S+)$', text, re.MULTILINE)
    return {pid: float(count) for pid, count in found}


@dataclass
class Row:
    way: str
    rates: dict[int, Rate]
    load: str = ""
    note: str = ""
    latency_kind: str = "half"


def measure_server(
    server: Server,
    bodies: dict[int, bytes],
    body_files: dict[int, Path],
    args: argparse.Namespace,
    use_wrk: bool,
    pin: bool,
    work: Path,
) -> Row:
    pid = server.start().process.pid
    try:
        rates, notes = {}, []
        for n, body in bodies.items():
            # single-row requests: many clients at once (what dynamic batching is for)
            connections = args.batch_connections if n == 1 else args.connections
            if use_wrk:
                wrk_saturation(server.url, body_files[n], connections, 1, pin, work)  # warm
                answered = answers_by_worker(server.url) if server.workers > 1 else {}
                cpu = server_cpu_seconds(pid)
                sat = wrk_saturation(
                    server.url, body_files[n], connections, args.duration, pin, work
                )
            else:
                python_saturation(server.port, body, connections, 1, pin)  # warm-up
                answered = answers_by_worker(server.url) if server.workers > 1 else {}
                cpu = server_cpu_seconds(pid)
                sat = python_saturation(server.port, body, connections, args.duration, pin)
            cpu = server_cpu_seconds(pid) - cpu
            if answered:
                after = answers_by_worker(server.url)
                each = sorted(after[w] - answered.get(w, 0) for w in after)
                shares = " / ".join(f"{x / sum(each):.0%}" for x in each)
                notes.append(f"{n}: each worker's share of the requests {shares}")
            half = open_loop_latency(server.port, body, sat.rate / 2, args.duration, pin)
            rates[n] = Rate(sat.rate * n, sat.requests * n / cpu, half.p50_ms, half.p99_ms)
            if sat.errors or half.errors:
                notes.append(f"{n}: {sat.errors + half.errors} non-200 or failed requests")
            print(
                f"  {server.name} {n}: saturation {sat.rate:,.0f} req/s = {rates[n].wall:,.0f} "
                f"rows/s, {rates[n].cpu:,.0f} rows per server CPU-second (server busy "
                f"{cpu / sat.seconds:.0%}); at {sat.rate / 2:,.0f} req/s p50 {half.p50_ms:.1f} "
                f"ms, p99 {half.p99_ms:.1f} ms; load {load_average()}",
                file=sys.stderr,
            )
        return Row(server.name, rates, load_average(), "; ".join(notes))
    finally:
        server.stop()


def markdown(
    rows: list[Row], limit: dict[int, Rate], sizes: Sequence[int], header: dict[str, str]
) -> str:
    per = " / ".join(str(n) for n in sizes)
    lines = [
        "## Serving",
        "",
        *(f"- {k}: {v}" for k, v in header.items()),
        "",
        f"| way of serving | scored rows/s at {per} candidates | share of the limit "
        f"| rows per CPU-second, {per} | share of the limit (CPU) "
        f"| p50 / p99 ms, {per} | load average after |",
        "|---|---|---|---|---|---|---|",
    ]

    def each(rates: dict[int, Rate], cell: Any) -> str:
        return " / ".join(cell(rates[n], limit[n]) for n in sizes)

    for row in rows:
        r = row.rates
        latency = (
            " ; ".join(f"{r[n].p50_ms:.1f} / {r[n].p99_ms:.1f}" for n in sizes)
            if all(r[n].p50_ms is not None for n in sizes)
            else "-"
        )
        if row.latency_kind == "call":
            latency += " (per call, no queueing)"
        way = row.way + (f" ({row.note})" if row.note else "")
        lines.append(
            f"| {way} | {each(r, lambda x, _: f'{x.wall / 1e3:,.1f}k')} "
            f"| {each(r, lambda x, top: f'{x.wall / top.wall:.2f}')} "
            f"| {each(r, lambda x, _: f'{x.cpu / 1e3:,.1f}k')} "
            f"| {each(r, lambda x, top: f'{x.cpu / top.cpu:.2f}')} "
            f"| {latency} | {row.load} |"
        )
    return "\n".join(lines) + "\n"


def ratios(served: list[Row], sizes: Sequence[int]) -> str:
    """This service (one worker) against each peer: rows per server CPU-second and requests/s at
    saturation, per request size."""
    ours = next((row for row in served if row.way.startswith("this service:")), None)
    if ours is None:
        return ""
    per = " / ".join(str(n) for n in sizes)
    lines = [
        "",
        f"This service (one worker) over each other way, at {per} candidates:",
        "",
        f"| over | per server CPU-second, {per} | requests/s at saturation, {per} |",
        "|---|---|---|",
    ]
    for row in served:
        if row is ours:
            continue
        cpu = " / ".join(f"{ours.rates[n].cpu / row.rates[n].cpu:.2f}" for n in sizes)
        wall = " / ".join(f"{ours.rates[n].wall / row.rates[n].wall:.2f}" for n in sizes)
        lines.append(f"| {row.way} | {cpu} | {wall} |")
    return "\n".join(lines) + "\n"


def best(a: Rate, b: Rate) -> Rate:
    """The better of two measurements of the limit: other jobs only ever slow it down."""
    faster = a if a.wall >= b.wall else b
    return Rate(max(a.wall, b.wall), max(a.cpu, b.cpu), faster.p50_ms, faster.p99_ms)


def report(name: str, rates: dict[int, Rate]) -> None:
    each = ", ".join(f"{n}: {r.wall:,.0f} rows/s, {r.cpu:,.0f} per CPU-s" for n, r in rates.items())
    print(f"  {name}: {each}; load {load_average()}", file=sys.stderr)


def batching_scenario(
    bundle_dir: Path,
    encoder: FeatureEncoder,
    args: argparse.Namespace,
    given: list[str],
    use_wrk: bool,
    pin: bool,
    work: Path,
) -> str:
    """Single-row `instances` requests on many connections: the service with dynamic batching
    off, then on, in turns; saturation throughput, server CPU, and latency at half of each one's
    own saturation. Returns the markdown section."""
    request = ranking_request(encoder, 1)
    body = orjson.dumps({"instances": [{**request["context"], **request["candidates"][0]}]})
    body_file = work / "single-row.json"
    body_file.write_bytes(body)
    load = argparse.Namespace(**{**vars(args), "connections": args.batch_connections})
    started = dt.datetime.now(dt.UTC)
    load_before = load_average()
    turns: list[tuple[Row, Row]] = []
    for turn in range(args.batch_rounds):
        measured = []
        for batching in ("false", "true"):
            server = service_server(bundle_dir, pin, work / f"batching-{batching}-{turn}.log")
            server.name = f"batching {'on' if batching == 'true' else 'off'}"
            server.env.update(
                {
                    "AFM_WORKERS": "1",
                    "AFM_BATCHING": batching,
                    "AFM_BATCH_WAIT_MS": f"{args.batch_wait_ms:g}",
                }
            )
            measured.append(
                measure_server(server, {1: body}, {1: body_file}, load, use_wrk, pin, work)
            )
        turns.append((measured[0], measured[1]))
    saturation = (
        f"wrk -t1 -c{args.batch_connections} -d{args.duration:g}s (closed loop)"
        if use_wrk
        else f"Python closed loop, {args.batch_connections} connections, {args.duration:g} s"
    )
    lines = [
        "## Dynamic batching, single-row requests",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "- command: `" + shlex.join([".venv/bin/python", "-m", "benchmarks.serving", *given]) + "`",
        f'- request: `{{"instances": [one row]}}`, {len(body)} bytes; server on CPU '
        f"{SERVER_CPU} and the load on CPU {CLIENT_CPU}" + ("" if pin else " (not pinned)"),
        f"- saturation: {saturation}; latency: open loop at half of each one's saturation",
        f"- batching on: AFM_BATCH_WAIT_MS={args.batch_wait_ms:g}, AFM_BATCH_MAX_ROWS default",
        f"- load average: {load_before} before, {load_average()} after",
        "",
        "| turn | off: req/s | on: req/s | on / off | off: req per server CPU-s "
        "| on: req per server CPU-s | on / off (CPU) | p50 / p99 ms off | p50 / p99 ms on |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios, cpu_ratios = [], []
    for turn, (off, on) in enumerate(turns, 1):
        a, b = off.rates[1], on.rates[1]
        ratios.append(b.wall / a.wall)
        cpu_ratios.append(b.cpu / a.cpu)
        lines.append(
            f"| {turn} | {a.wall:,.0f} | {b.wall:,.0f} | {ratios[-1]:.2f} | {a.cpu:,.0f} "
            f"| {b.cpu:,.0f} | {cpu_ratios[-1]:.2f} | {a.p50_ms:.1f} / {a.p99_ms:.1f} "
            f"| {b.p50_ms:.1f} / {b.p99_ms:.1f} |"
        )
    lines += [
        "",
        f"Median on / off: {float(np.median(ratios)):.2f} (requests/s), "
        f"{float(np.median(cpu_ratios)):.2f} (requests per server CPU-second).",
    ]
    return "\n".join(lines) + "\n"


def add_bundle_options(parser: argparse.ArgumentParser) -> None:
    """--bundle and --models-dir, which `find_bundle` takes (this benchmark and the traffic one)."""
    parser.add_argument(
        "--bundle", type=Path, help="a bundle folder to use instead of building one"
    )
    parser.add_argument(
        "--models-dir", type=Path, default=MODELS,
        help=f"where the bundle is built and looked for (default {MODELS.relative_to(ROOT)})",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bundle_options(parser)
    parser.add_argument(
        "--rebuild", action="store_true", help="train the bundle even if one is there"
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1, 100, 700],
        help="candidates per request (1: at --batch-connections connections)",
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per load measurement (default 5)"
    )
    parser.add_argument(
        "--connections", type=int, default=8,
        help="connections of the saturating (closed-loop) load (default 8)",
    )  # fmt: skip
    parser.add_argument(
        "--generator", choices=["auto", "wrk", "python"], default="auto",
        help="saturation load: wrk if installed (auto), or the Python closed-loop generator",
    )  # fmt: skip
    parser.add_argument(
        "--no-tutorial", action="store_true", help="skip peer 2, the tutorial service"
    )
    parser.add_argument(
        "--no-lean", action="store_true", help="skip peer 3, the lean FastAPI service"
    )
    parser.add_argument(
        "--no-bentoml", action="store_true",
        help="skip peer 4, BentoML (installed into benchmarks/.envs/bentoml on first use)",
    )  # fmt: skip
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the server and the load to CPUs"
    )
    parser.add_argument(
        "--workers", type=int, default=2,
        help="also measure the service with this many worker processes on the server CPU "
        "(default 2; 1: skip)",
    )  # fmt: skip
    parser.add_argument(
        "--batching", action="store_true",
        help="instead of the budget table: single-row requests at --batch-connections, the "
        "service with dynamic batching off and on, in turns (--batch-rounds each)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-connections", type=int, default=64,
        help="connections of the batching scenario's saturating load (default 64)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-rounds", type=int, default=3,
        help="turns of batching off then on in the batching scenario (default 3)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-wait-ms", type=float, default=0.0,
        help="AFM_BATCH_WAIT_MS of the batching scenario's server (default 0)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    """Run the serving benchmark; prints the markdown table and returns it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = list(argv) if argv is not None else sys.argv[1:]
    pin = not args.no_pin and can_pin()
    have_wrk = shutil.which("wrk") is not None
    if args.generator == "wrk" and not have_wrk:
        parser.error("wrk is not installed (apt-get install -y wrk)")
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and have_wrk)
    if args.generator == "auto" and not have_wrk:
        print("wrk not found (apt-get install -y wrk): using the Python generator", file=sys.stderr)

    bundle_dir = find_bundle(args.bundle, args.models_dir, args.rebuild).resolve()
    encoder = bundles.read(bundle_dir).encoder
    requests = {n: ranking_request(encoder, n) for n in args.sizes}
    bodies = {n: orjson.dumps(r) for n, r in requests.items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="serving-", dir=RESULTS))
    if args.batching:
        table = batching_scenario(bundle_dir, encoder, args, given, use_wrk, pin, work)
        print(table)
        shutil.rmtree(work, ignore_errors=True)
        return table
    body_files = {}
    for n, body in bodies.items():
        body_files[n] = work / f"body{n}.json"
        body_files[n].write_bytes(body)

    started = dt.datetime.now(dt.UTC)
    load_before = load_average()
    print(f"serving benchmark on {bundle_dir}, load {load_before}", file=sys.stderr)
    seconds = min(args.duration, 3.0)
    with pinned(SERVER_CPU, pin):
        limit_before = limit_rows_per_second(bundle_dir, requests, seconds)
        path = request_path_rows_per_second(bundle_dir, bodies, seconds)
        path_load = load_average()
    report("limit, before the servers", limit_before)
    report("request path, no HTTP", path)
    servers = [service_server(bundle_dir, pin, work / "service.log")]
    if args.workers > 1:
        servers.append(
            service_server(bundle_dir, pin, work / "service-workers.log", workers=args.workers)
        )
    if not args.no_lean:
        servers.append(
            uvicorn_peer(
                "lean", "benchmarks.peers.lean_fastapi:app", bundle_dir, pin, work / "lean.log"
            )
        )
    if not args.no_bentoml:
        servers.append(bentoml_server(bundle_dir, pin, work / "bentoml.log"))
    if not args.no_tutorial:
        servers.append(
            uvicorn_peer(
                "tutorial",
                "benchmarks.peers.tutorial_service:app",
                bundle_dir,
                pin,
                work / "tutorial.log",
            )
        )
    labels = {
        "service": "this service: FastAPI + onnxruntime (`python -m service`)",
        f"service, {args.workers} workers": (
            f"this service, `--workers {args.workers}` on the one server CPU (all workers' CPU)"
        ),
        "tutorial": "tutorial: FastAPI + pydantic per candidate + PyTorch eager",
        "lean": "lean: hand-written FastAPI + onnxruntime (benchmarks/peers/lean_fastapi.py)",
        "bentoml": "BentoML 1.4.40 + onnxruntime (benchmarks/peers/bentoml_service.py)",
    }
    served = []
    for server in servers:
        row = measure_server(server, bodies, body_files, args, use_wrk, pin, work)
        row.way = labels[server.name]
        served.append(row)
    with pinned(SERVER_CPU, pin):
        limit_after = limit_rows_per_second(bundle_dir, requests, seconds)
        limit_load = load_average()
    report("limit, after the servers", limit_after)
    limit = {n: best(limit_before[n], limit_after[n]) for n in args.sizes}
    rows = [
        Row(
            "onnxruntime in-process, 1 thread, pre-encoded batches (the limit)",
            limit, limit_load, latency_kind="call",
        ),
        Row(
            "diagnostic: the service's request path in-process, no HTTP "
            "(parse + validate + encode + score + orjson)",
            path, path_load, latency_kind="call",
        ),
        *served,
    ]  # fmt: skip

    relative = bundle_dir.relative_to(ROOT) if bundle_dir.is_relative_to(ROOT) else bundle_dir
    saturation = (
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s (closed loop)"
        if use_wrk
        else f"Python closed loop (asyncio), {args.connections} connections, {args.duration:g} s"
    )
    header = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "`" + shlex.join([".venv/bin/python", "-m", "benchmarks.serving", *given]) + "`",
        "bundle": (
            f"{relative}: AFM k=64, t=64, {len(encoder.fields)} fields (the synthetic data "
            "set: frappe's 10 plus a numeric price), 1 epoch on 20,000 rows"
        ),
        "pinning": (
            f"server on CPU {SERVER_CPU}, load generator on CPU {CLIENT_CPU}"
            if pin
            else "none (CPUs 0 and 1 not both usable, or --no-pin)"
        ),
        "saturation": f"{saturation}; rows/s = requests/s x candidates",
        "latency": (
            f"open loop, {args.duration:g} s at half the saturation request rate (asyncio, raw "
            "HTTP/1.1, keep-alive), timed from each request's scheduled send"
        ),
        "CPU-second shares": (
            "scored rows per second of the server process's CPU time (/proc) at saturation, "
            "against rows per CPU-second of the in-process limit: steadier than wall-clock "
            "rates when other jobs share the CPU"
        ),
        "limit": (
            "the better of two measurements, before and after the servers (rows/s "
            + "; ".join(
                f"{n}: {limit_before[n].wall:,.0f} then {limit_after[n].wall:,.0f}"
                for n in args.sizes
            )
            + ")"
        ),
        "load average": f"{load_before} before, {load_average()} after (1, 5, 15 min)",
    }
    table = markdown(rows, limit, args.sizes, header) + ratios(served, args.sizes)
    print(table)
    shutil.rmtree(work, ignore_errors=True)
    return table


if __name__ == "__main__":
    main()
